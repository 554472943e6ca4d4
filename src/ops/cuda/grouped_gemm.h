// grouped_gemm.h — one-launch grouped expert product on the GPU (grouped_gemm.cu), used by
// cuda::grouped_linear when the operands suit it.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace dseek::ops::cuda {

// x bf16 [M, I] with I % 8 == 0, every w[e] bf16 [O, I] (no block scales), out f32 or bf16 [M, O] with O
// even, 16-byte aligned operands.
bool grouped_gemm_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w);
// out[rows of e] = x[rows of e] · w[e]ᵀ for each expert e with at least min_rows rows (rows [offsets[e],
// offsets[e + 1])); other experts' rows are left untouched.
void grouped_gemm(Tensor out, const Tensor& x, const std::vector<Tensor>& w,
                  const std::vector<int64_t>& offsets, int64_t min_rows);

}  // namespace dseek::ops::cuda
