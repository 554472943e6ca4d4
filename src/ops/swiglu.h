// swiglu.h — h = silu(gate) ⊙ up, the SwiGLU activation of every DeepSeek MLP (spec/model.md §2.1).
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// out, gate, up: [N, F], f32 or f64.
void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up, Stream s = {});

// Backward: dgate, dup written from dout and the forward inputs.
void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                Stream s = {});

}  // namespace dseek::ops
