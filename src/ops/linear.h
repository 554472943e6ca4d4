// linear.h — matrix products of activations with weights (DESIGN.md ops/; spec/model.md §2).
// CPU: OpenBLAS for large products, AVX2/AVX-512 bf16 GEMV kernels for decoding; fp32 accumulation.
#pragma once

#include <initializer_list>

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// out[N, O] = x[N, I] · w[O, I]ᵀ (an nn.Linear without bias). x, out: f32 or f64; w: same dtype as x,
// or bf16 / f32 with an f32 x.
void linear(Tensor out, const Tensor& x, const Tensor& w, Stream s = {});

// x as the products with all of `ws` take it: on the GPU, an f32 x of more than 8 rows (a product, not a
// decode GEMV) with bf16 weights is cast to bf16 here once, instead of once inside every product; else x.
Tensor product_input(const Tensor& x, std::initializer_list<const Tensor*> ws);

// out[N, O] = x[N, I] · w[I, O] (w row-major, not transposed), same dtypes as linear.
void matmul_nn(Tensor out, const Tensor& x, const Tensor& w, Stream s = {});

// Backward of linear: dx[N, I] = dy[N, O] · w[O, I] (written, when dx is defined) and
// dw[O, I] += dy[N, O]ᵀ · x[N, I] (accumulated, when dw is defined). dw has the activation dtype.
void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w, Stream s = {});

}  // namespace dseek::ops
