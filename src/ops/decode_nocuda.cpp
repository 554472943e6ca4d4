// decode_nocuda.cpp — the CUDA decode ops (ops/decode_impl.h) of a build without CUDA: each says so.
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {
[[noreturn]] void none(const char* op) {
  fail(op, ": this dseek was built without CUDA");
}
}  // namespace

void paged_cache_write(Tensor, const Tensor&, const Tensor&) {
  none("paged_cache_write");
}
void mla_absorb_q(Tensor, const Tensor&, const Tensor&, int64_t, int64_t, const RopeAt*) {
  none("mla_absorb_q");
}
void mla_decode_latent(const LatentStep&) {
  none("mla_decode_latent");
}
void gemv_pair(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&) {
  none("linear_pair");
}
void gemv_swiglu(Tensor, const Tensor&, const Tensor&, const Tensor&) {
  none("linear_swiglu");
}
bool router_small_applies(int64_t, int64_t, const RouterParams&) {
  return false;
}
void router_decode(Tensor, Tensor, const Tensor&, const Tensor&, const Tensor&, const RouterParams&) {
  none("router_decode");
}
void mla_absorb_o(Tensor, const Tensor&, const Tensor&, int64_t, int64_t) {
  none("mla_absorb_o");
}
void mla_decode_paged(Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, int64_t) {
  none("mla_decode_paged");
}
void argmax_rows(Tensor, const Tensor&) {
  none("argmax_rows");
}
void moe_experts_small(Tensor, const Tensor&, const Tensor&, const Tensor&, const std::vector<Tensor>&,
                       const std::vector<Tensor>&, const std::vector<Tensor>&, const SharedExpert*) {
  none("moe_experts_small");
}

void mla_decode_latent_q(Tensor, const LatentStep&, const Tensor&) {
  none("mla_decode_latent_q");
}
void gemv_pair_normed(Tensor, Tensor, const NormedInput&, const Tensor&, const Tensor&) {
  none("linear_pair");
}
void router_decode_normed(Tensor, Tensor, const NormedInput&, const Tensor&, const Tensor&,
                          const RouterParams&) {
  none("router_decode");
}
void mla_decode_paged_o(Tensor, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, int64_t,
                        const Tensor&, int64_t, int64_t) {
  none("mla_decode_paged_o");
}
void moe_experts_slots(Tensor, const Tensor&, const Tensor&, const std::vector<Tensor>&,
                       const std::vector<Tensor>&, const std::vector<Tensor>&, const SharedExpert*) {
  none("moe_experts_slots");
}
void moe_combine_slots(Tensor, const Tensor&, const Tensor&, int64_t, int64_t) {
  none("moe_combine_slots");
}
void normed_input(Tensor, const NormedInput&) {
  none("normed_input");
}

}  // namespace dseek::ops::cuda
