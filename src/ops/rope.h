// rope.h — rotary embedding on interleaved pairs (x[2i], x[2i+1]), the official DeepSeek layout, which
// gives the same attention scores as transformers' rope_interleave form (spec/model.md §2.4, §3).
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// In place on x: [N, H, W] (f32/f64), the R = 2·inv_freq.size() columns starting at `col`, token n
// at position positions[n] (I64 [N]); angle θ = pos · inv_freq[i] in f32 as transformers computes it,
// cos/sin scaled by attention_factor.
void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col, double attention_factor,
              Stream s = {});

// Backward, in place on the gradient dx (same layout): the transposed rotation.
void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor, Stream s = {});

}  // namespace dseek::ops
