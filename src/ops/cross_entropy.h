// cross_entropy.h — the LM head fused with the cross-entropy loss and its gradient (DESIGN.md: "LM
// head + fused cross-entropy"): tokens are processed in chunks, so the full [T, V] logits never exist.
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

struct CrossEntropyResult {
  double loss_sum = 0;  // Σ over counted tokens of −log p(target)
  int64_t count = 0;    // tokens with a target (target ≥ 0)
};

// h: [N, D] final-normed hidden; w: [V, D] LM head (h's dtype, or bf16 with an f32 h on CUDA: bf16
// products, f32 accumulation); targets: [N] I64, −1 = no target. dh and dw have h's dtype.
// When dh is defined: dh[N, D] = scale · ∂loss_sum/∂h (written) and dw[V, D] += scale · ∂loss_sum/∂w.
CrossEntropyResult lm_head_cross_entropy(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                         const Tensor& targets, double scale, Stream s = {});

}  // namespace dseek::ops
