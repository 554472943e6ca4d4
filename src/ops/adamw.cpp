// adamw.cpp — checks and device dispatch for AdamW and the sum of squares (ops/adamw.h).
#include "ops/adamw.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p, Stream) {
  check_dtype("adamw_step", "param", param, {DType::F32});
  check_shape("adamw_step", "grad", grad, param.shape());
  check_dtype("adamw_step", "grad", grad, {DType::F32});
  check_shape("adamw_step", "m", m, param.shape());
  check_shape("adamw_step", "v", v, param.shape());
  check_dtype("adamw_step", "m", m, {DType::F32, DType::BF16});
  DSEEK_CHECK(v.dtype() == m.dtype(), "adamw_step: m and v dtypes differ");
  DSEEK_CHECK(p.step >= 1, "adamw_step: step must be ≥ 1");
  check_same_device("adamw_step", {&param, &grad, &m, &v});
  switch (param.device()) {
    case Device::CPU:
      return cpu::adamw_step(param, grad, m, v, p);
    case Device::CUDA:
      return cuda::adamw_step(param, grad, m, v, p);
    default:
      fail("adamw_step: no implementation for ", device_name(param.device()));
  }
}

double sum_squares(const Tensor& t, Stream) {
  check_act("sum_squares", "t", t);
  switch (t.device()) {
    case Device::CPU:
      return cpu::sum_squares(t);
    case Device::CUDA:
      return cuda::sum_squares(t);
    default:
      fail("sum_squares: no implementation for ", device_name(t.device()));
  }
}

}  // namespace dseek::ops
