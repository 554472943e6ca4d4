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
void mla_absorb_q(Tensor, const Tensor&, const Tensor&, int64_t, int64_t) {
  none("mla_absorb_q");
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
                       const std::vector<Tensor>&, const std::vector<Tensor>&) {
  none("moe_experts_small");
}

}  // namespace dseek::ops::cuda
