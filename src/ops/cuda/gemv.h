// gemv.h — the decode-sized product kernel (f32 activations × bf16 weights, N ≤ 8 rows), used by the
// CUDA linear when it applies.
#pragma once

#include "core/tensor.h"

namespace dseek::ops::cuda {

bool gemv_applies(const Tensor& out, const Tensor& x, const Tensor& w);
void gemv_bf16(Tensor out, const Tensor& x, const Tensor& w);  // out[N, O] = x[N, I] · w[O, I]ᵀ

}  // namespace dseek::ops::cuda
