// adamw.h — the AdamW update with decoupled weight decay on fp32 master weights; moments in f32 or
// bf16 (spec/rl.md and the training issue; Loshchilov & Hutter's AdamW with bias correction).
#pragma once

#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

struct AdamWParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // multiplies the gradient first (clipping, accumulation)
};

// param -= lr · (m̂ / (sqrt(v̂) + eps) + wd · param), with m, v updated in place. param, grad: f32;
// m, v: f32 or bf16 (rounded to nearest even after each update).
void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p, Stream s = {});

// Σ grad² over the tensor (f64 accumulation), for global-norm clipping.
double sum_squares(const Tensor& t, Stream s = {});

// The same over many tensors of one device: one launch and one copy back on the GPU (the trainer's
// thousands of gradient tensors), each tensor's sum in a fixed order. Returns one sum per tensor (f32).
std::vector<double> sum_squares_many(const std::vector<const Tensor*>& ts);

// adamw_step over many tensors of one device with the same hyperparameters except weight decay
// (decay[i]: tensor i's weight_decay): one launch on the GPU. Every param / grad f32; m, v of one dtype.
// copies (empty, or one entry per param, each null or a bf16 tensor of its shape; GPU only): rewritten
// with the updated params rounded to bf16 (the compute copies of bf16 training), in the same pass.
void adamw_step_many(const std::vector<Tensor*>& params, const std::vector<const Tensor*>& grads,
                     const std::vector<Tensor*>& m, const std::vector<Tensor*>& v,
                     const std::vector<double>& decay, const AdamWParams& p,
                     const std::vector<Tensor*>& copies = {});

}  // namespace dseek::ops
