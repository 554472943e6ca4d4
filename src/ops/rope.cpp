// rope.cpp — checks and device dispatch for RoPE (ops/rope.h).
#include "ops/rope.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col, double attention_factor,
              Stream) {
  check_ndim("rope_fwd", "x", x, 3);
  check_act("rope_fwd", "x", x);
  check_shape("rope_fwd", "positions", positions, {x.size(0)});
  check_dtype("rope_fwd", "positions", positions, {DType::I64});
  check_ndim("rope_fwd", "inv_freq", inv_freq, 1);
  check_dtype("rope_fwd", "inv_freq", inv_freq, {DType::F32});
  DSEEK_CHECK(col >= 0 && col + 2 * inv_freq.size(0) <= x.size(2), "rope_fwd: columns [", col, ", ",
              col + 2 * inv_freq.size(0), ") outside x ", x.str());
  check_same_device("rope_fwd", {&x, &positions, &inv_freq});
  switch (x.device()) {
    case Device::CPU:
      return cpu::rope_fwd(x, positions, inv_freq, col, attention_factor);
    case Device::CUDA:
      return cuda::rope_fwd(x, positions, inv_freq, col, attention_factor);
    default:
      fail("rope_fwd: no implementation for ", device_name(x.device()));
  }
}

void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor, Stream) {
  check_ndim("rope_bwd", "dx", dx, 3);
  check_act("rope_bwd", "dx", dx);
  check_shape("rope_bwd", "positions", positions, {dx.size(0)});
  check_dtype("rope_bwd", "positions", positions, {DType::I64});
  check_dtype("rope_bwd", "inv_freq", inv_freq, {DType::F32});
  DSEEK_CHECK(col >= 0 && col + 2 * inv_freq.size(0) <= dx.size(2), "rope_bwd: columns outside dx ",
              dx.str());
  check_same_device("rope_bwd", {&dx, &positions, &inv_freq});
  switch (dx.device()) {
    case Device::CPU:
      return cpu::rope_bwd(dx, positions, inv_freq, col, attention_factor);
    case Device::CUDA:
      return cuda::rope_bwd(dx, positions, inv_freq, col, attention_factor);
    default:
      fail("rope_bwd: no implementation for ", device_name(dx.device()));
  }
}

}  // namespace dseek::ops
