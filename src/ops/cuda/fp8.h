// fp8.h — fp8 block-scaled weights on the GPU: the decode GEMV and on-the-fly dequantization.
#pragma once

#include "core/tensor.h"

namespace dseek::ops::cuda {

// out[N, O] = x[N, I] (f32, N ≤ 8) · dequant(w)[O, I]ᵀ, w fp8 with a block scale.
void gemv_fp8(Tensor out, const Tensor& x, const Tensor& w);
// Rows [r0, r0 + n) of a block-scaled fp8 matrix as f32 on the device.
Tensor dequantize_rows(const Tensor& w, int64_t r0, int64_t n);

}  // namespace dseek::ops::cuda
