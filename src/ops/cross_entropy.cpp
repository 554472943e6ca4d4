// cross_entropy.cpp — checks and device dispatch for the fused LM head + cross-entropy (ops/cross_entropy.h).
#include "ops/cross_entropy.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

CrossEntropyResult lm_head_cross_entropy(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                         const Tensor& targets, double scale, Stream) {
  check_ndim("lm_head_cross_entropy", "h", h, 2);
  check_act("lm_head_cross_entropy", "h", h);
  check_ndim("lm_head_cross_entropy", "w", w, 2);
  DSEEK_CHECK(w.size(1) == h.size(1), "lm_head_cross_entropy: w ", w.str(), " and h ", h.str(),
              " differ in width");
  DSEEK_CHECK(w.dtype() == h.dtype() ||
                  (h.device() == Device::CUDA && h.dtype() == DType::F32 && w.dtype() == DType::BF16),
              "lm_head_cross_entropy: w must have the activation dtype (or be bf16 with f32 h on CUDA), not ",
              dtype_name(w.dtype()));
  if (dw.defined()) check_dtype("lm_head_cross_entropy", "dw", dw, {h.dtype()});
  check_shape("lm_head_cross_entropy", "targets", targets, {h.size(0)});
  check_dtype("lm_head_cross_entropy", "targets", targets, {DType::I64});
  // Every target −1 or a token (read back from the GPU for the check); the count of real ones.
  int64_t count = 0;
  {
    const Tensor ht = targets.device() == Device::CPU ? targets : targets.to(Device::CPU);
    const int64_t* t = ht.data<int64_t>();
    for (int64_t i = 0; i < ht.numel(); ++i) {
      DSEEK_CHECK(t[i] < w.size(0) && t[i] >= -1, "lm_head_cross_entropy: target ", t[i],
                  " outside the vocabulary (", w.size(0), ")");
      count += t[i] >= 0;
    }
  }
  if (dh.defined()) check_shape("lm_head_cross_entropy", "dh", dh, h.shape());
  if (dw.defined()) check_shape("lm_head_cross_entropy", "dw", dw, w.shape());
  check_same_device("lm_head_cross_entropy", {&dh, &dw, &h, &w, &targets});
  switch (h.device()) {
    case Device::CPU:
      return cpu::lm_head_cross_entropy(dh, dw, h, w, targets, scale);
    case Device::CUDA:
      return {cuda::lm_head_cross_entropy_sum(dh, dw, h, w, targets, scale), count};
    default:
      fail("lm_head_cross_entropy: no implementation for ", device_name(h.device()));
  }
}

}  // namespace dseek::ops
