// cuda_nocuda.cpp — the CUDA op entry points of a build without CUDA: each says so.
#include "ops/cuda/cuda_ops.h"
#include "ops/dep_trace.h"

namespace dseek::ops::cuda {

namespace {
[[noreturn]] void none(const char* op) {
  fail(op, ": this dseek was built without CUDA");
}
}  // namespace

void linear(Tensor, const Tensor&, const Tensor&) {
  none("linear");
}
void matmul_nn(Tensor, const Tensor&, const Tensor&) {
  none("matmul_nn");
}
void rmsnorm_fwd(Tensor, Tensor, const Tensor&, const Tensor&, double) {
  none("rmsnorm_fwd");
}
void add_rmsnorm_fwd(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, double) {
  none("add_rmsnorm_fwd");
}
void rope_fwd(Tensor, const Tensor&, const Tensor&, int64_t, double) {
  none("rope_fwd");
}
void attention_fwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, double, int64_t) {
  none("attention_fwd");
}
void attention_fwd_varlen(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&,
                          const std::vector<int64_t>&, double) {
  none("attention_fwd_varlen");
}
void mla_absorbed_fwd(Tensor, const Tensor&, const Tensor&, double, int64_t) {
  none("mla_absorbed_fwd");
}
void swiglu_fwd(Tensor, const Tensor&, const Tensor&) {
  none("swiglu_fwd");
}
void embedding_fwd(Tensor, const Tensor&, const Tensor&) {
  none("embedding_fwd");
}
void router_fwd(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, const RouterParams&) {
  none("router_fwd");
}
void axpy_(Tensor, const Tensor&, double) {
  none("axpy_");
}
void copy_cols(Tensor, int64_t, const Tensor&, int64_t, int64_t) {
  none("copy_cols");
}
void moe_permute(Tensor, const Tensor&, const MoePlan&) {
  none("moe_permute");
}
void router_bias_update(Tensor, const std::vector<int64_t>&, double, double) {
  none("router_bias_update");
}
bool grouped_linear_wgrad(const std::vector<Tensor>&, const Tensor&, const Tensor&, const MoePlan&) {
  none("grouped_linear_wgrad");
  return false;
}
bool grouped_linear_dgrad(Tensor, const Tensor&, const std::vector<Tensor>&, const MoePlan&, int64_t) {
  none("grouped_linear_dgrad");
  return false;
}
bool grouped_pair_dgrad(Tensor, const Tensor&, const Tensor&, const std::vector<Tensor>&,
                        const std::vector<Tensor>&, const MoePlan&, int64_t) {
  none("grouped_pair_dgrad");
  return false;
}
bool grouped_swiglu_dgrad(Tensor, Tensor, const Tensor&, const std::vector<Tensor>&, const Tensor&,
                          const Tensor&, const MoePlan&, int64_t) {
  none("grouped_swiglu_dgrad");
  return false;
}
bool grouped_swiglu_fwd(Tensor, Tensor, Tensor, const Tensor&, const std::vector<Tensor>&,
                        const std::vector<Tensor>&, const MoePlan&) {
  none("grouped_swiglu_fwd");
  return false;
}
void grouped_linear(Tensor, const Tensor&, const std::vector<Tensor>&, const MoePlan&) {
  none("grouped_linear");
}
void moe_unpermute(Tensor, const Tensor&, const Tensor&, const MoePlan&) {
  none("moe_unpermute");
}
bool moe_experts_grouped_applies(const Tensor&, const std::vector<Tensor>&) {
  return false;
}
void moe_experts_grouped(Tensor, const Tensor&, const Tensor&, const Tensor&, const std::vector<Tensor>&,
                         const std::vector<Tensor>&, const std::vector<Tensor>&, const SharedExpert&) {
  none("moe_experts_grouped");
}

void sample_rows(Tensor, Tensor, const Tensor&, const Tensor&, const SampleParams&) {
  none("sample_rows");
}

void mla_flash_fwd(Tensor, const Tensor&, const Tensor&, const Tensor&, const std::vector<int64_t>&,
                   const std::vector<int64_t>&, double, bool) {
  none("mla_flash_fwd");
}
void mla_flash_train_fwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&,
                         const std::vector<int64_t>&, double) {
  none("mla_flash_train_fwd");
}
void mla_flash_bwd(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                   const Tensor&, const Tensor&, const std::vector<int64_t>&, double) {
  none("mla_flash_bwd");
}
bool mla_flash_train_dims(int64_t, int64_t, int64_t) {
  return false;  // no GPU kernels in this build
}

void linear_bwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&) {
  none("linear_bwd");
}
void rmsnorm_bwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  none("rmsnorm_bwd");
}
void rmsnorm_bwd_add(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  none("rmsnorm_bwd_add");
}
void swiglu_bwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&) {
  none("swiglu_bwd");
}
void rope_bwd(Tensor, const Tensor&, const Tensor&, int64_t, double) {
  none("rope_bwd");
}
void adamw_step(Tensor, const Tensor&, Tensor, Tensor, const AdamWParams&) {
  none("adamw_step");
}
std::vector<double> sum_squares_many(const std::vector<const Tensor*>&) {
  none("sum_squares");
  return {};
}
void adamw_step_many(const std::vector<Tensor*>&, const std::vector<const Tensor*>&,
                     const std::vector<Tensor*>&, const std::vector<Tensor*>&, const std::vector<double>&,
                     const AdamWParams&, const std::vector<Tensor*>&) {
  none("adamw_step");
}
void cast_many(const std::vector<Tensor*>&, const std::vector<const Tensor*>&) {
  none("cast_many");
}
double sum_squares(const Tensor&) {
  none("sum_squares");
  return 0;
}
double lm_head_cross_entropy_sum(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, double) {
  none("lm_head_cross_entropy");
  return 0;
}
void moe_permute_bwd(Tensor, const Tensor&, const MoePlan&) {
  none("moe_permute_bwd");
}
void moe_permute_bwd_add(Tensor, const Tensor&, const Tensor&, const MoePlan&) {
  none("moe_permute_bwd_add");
}
void moe_plan_build(MoePlan&, const Tensor&) {
  none("moe_plan_build");
}
const int64_t* plan_slots(const MoePlan&, Tensor&) {
  none("plan_slots");
}
const int64_t* plan_rows(const MoePlan&, Tensor&) {
  none("plan_rows");
}
void moe_unpermute_bwd(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const MoePlan&) {
  none("moe_unpermute_bwd");
}
void router_bwd(Tensor, const Tensor&, const Tensor&, const Tensor&, const RouterParams&) {
  none("router_bwd");
}
double router_balance_loss(Tensor, const Tensor&, const Tensor&, int64_t, double, const RouterParams&) {
  none("router_balance_loss");
  return 0;
}
void embedding_bwd(Tensor, const Tensor&, const Tensor&) {
  none("embedding_bwd");
}
void attention_bwd(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                   const Tensor&, double, int64_t) {
  none("attention_bwd");
}
void attention_bwd_varlen(Tensor, Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const std::vector<int64_t>&, double) {
  none("attention_bwd_varlen");
}

}  // namespace dseek::ops::cuda

namespace dseek::ops {

bool dep_trace_available() {
  return false;
}
void dep_trace_begin(int64_t) {
  fail("dep_trace: this dseek was built without CUDA");
}
DepTrace dep_trace_end() {
  fail("dep_trace: this dseek was built without CUDA");
}

}  // namespace dseek::ops
