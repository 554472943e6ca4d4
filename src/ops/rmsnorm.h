// rmsnorm.h — y = w ⊙ x / sqrt(mean(x²) + eps) over the last dim, alone or after the residual add
// (spec/model.md §2.1).
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// out, x: [N, D] f32 or f64 (same dtype); w: [D] f32 or the activation dtype. rstd: [N] of the
// activation dtype (saved for the backward) or undefined.
void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps, Stream s = {});

// The residual add fused with the next RMSNorm (spec/model.md §2.1 pre-norm blocks): h += y, then
// out = rmsnorm(h) · w with rstd as rmsnorm_fwd. h, y, out: [N, D] of one dtype; one pass on the GPU.
void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps,
                     Stream s = {});

// Backward: dx written, dw accumulated (when defined), from the forward's x, w and rstd [N].
void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                 Stream s = {});
// The pre-norm residual's backward: dh += the norm's input gradient (the same sum as rmsnorm_bwd into a
// temporary, then add_), dw accumulated (when defined); dh_op (when defined: bf16 on the GPU) gets the new
// dh rounded to bf16, the next products' operand, in the same pass.
void rmsnorm_bwd_add(Tensor dh, Tensor dh_op, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                     const Tensor& rstd, Stream s = {});

}  // namespace dseek::ops
