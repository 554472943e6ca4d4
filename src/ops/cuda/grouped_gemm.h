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

// Training forms (tile tables from the plan's host offsets; every expert with rows; bf16 operands, 16-byte
// aligned, inner dims multiples of 8):
// out[rows of e] = x·w[e]ᵀ + x2·w2[e]ᵀ (x [M, K1], x2 [M, K2], w[e] [O, K1], w2[e] [O, K2]; out f32 or bf16):
// the experts' gate and up input gradients dg·W_g + du·W_u as one product along K1 + K2.
bool grouped_gemm2_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w, const Tensor& x2,
                           const std::vector<Tensor>& w2);
void grouped_gemm2(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const Tensor& x2,
                   const std::vector<Tensor>& w2, const std::vector<int64_t>& offsets);
// h = silu(x·wg[e]ᵀ) ⊙ (x·wu[e]ᵀ) (h f32 or bf16 [M, F]); g, u bf16 [M, F] the two products (each may be
// undefined: not written). x bf16 [M, D], wg[e], wu[e] bf16 [F, D], F even.
bool grouped_swiglu_applies(const Tensor& x, const std::vector<Tensor>& wg, const std::vector<Tensor>& wu);
void grouped_swiglu(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                    const std::vector<Tensor>& wu, const std::vector<int64_t>& offsets);
// dg, du bf16 [M, F]: SwiGLU's backward at the forward's g, u (bf16 [M, F]) of dh = dy · wt[e]ᵀ, which never
// reaches memory (dy bf16 [M, D], wt[e] bf16 [F, D]: the down matrix transposed).
void grouped_swiglu_bwd(Tensor dg, Tensor du, const Tensor& dy, const std::vector<Tensor>& wt,
                        const Tensor& g, const Tensor& u, const std::vector<int64_t>& offsets);

}  // namespace dseek::ops::cuda
