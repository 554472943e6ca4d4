// grouped_gemm.h — one-launch grouped expert product on the GPU (grouped_gemm.cu), used by
// cuda::grouped_linear when the operands suit it and by the device-planned MoE (moe_grouped.cu).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek::ops::cuda {

// Rows per tile of the grouped kernel: an expert with n rows takes ceil(n / 128) tiles.
inline constexpr int64_t kGroupedRowTile = 128;

// One work item: expert e, its rows [r0, r0 + 128) (counted from the expert's first permuted row).
struct GroupedTile {
  int32_t e, r0;
};

// x bf16 [M, I] with I % 8 == 0, every w[e] bf16 [O, I] (no block scales), out f32 or bf16 [M, O] with O
// even, 16-byte aligned operands.
bool grouped_gemm_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w);
// out[rows of e] = x[rows of e] · w[e]ᵀ for each expert e with at least min_rows rows (rows [offsets[e],
// offsets[e + 1])); other experts' rows are left untouched.
void grouped_gemm(Tensor out, const Tensor& x, const std::vector<Tensor>& w,
                  const std::vector<int64_t>& offsets, int64_t min_rows);

// The same product over device-resident tables (nothing read back to the host): w, w2: [E] device
// pointers to bf16 [O, I] matrices; offsets [E + 1]; tiles [max_tiles], of which the first *n_tiles (a
// device int; nullptr: all) have work. x: bf16 [M, I] device pointer, out [M, O] of out_dt (f32 or bf16).
// With w2 (the experts' up matrices beside their gate matrices in w) it writes silu(x·wᵀ) ⊙ (x·w2ᵀ).
void grouped_gemm_device(void* out, DType out_dt, const void* x, const void* const* w, const void* const* w2,
                         const int64_t* offsets, const GroupedTile* tiles, const int* n_tiles,
                         int64_t max_tiles, int64_t I, int64_t O);

}  // namespace dseek::ops::cuda
