// rmsnorm.cpp — checks and device dispatch for RMSNorm (ops/rmsnorm.h).
#include "ops/rmsnorm.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps, Stream) {
  check_ndim("rmsnorm_fwd", "x", x, 2);
  check_act("rmsnorm_fwd", "x", x);
  check_shape("rmsnorm_fwd", "out", out, x.shape());
  check_shape("rmsnorm_fwd", "w", w, {x.size(1)});
  check_dtype("rmsnorm_fwd", "w", w, {DType::F32, x.dtype()});
  DSEEK_CHECK(out.dtype() == x.dtype(), "rmsnorm_fwd: out dtype differs from x");
  if (rstd.defined()) check_shape("rmsnorm_fwd", "rstd", rstd, {x.size(0)});
  if (rstd.defined()) DSEEK_CHECK(rstd.dtype() == x.dtype(), "rmsnorm_fwd: rstd dtype differs from x");
  check_same_device("rmsnorm_fwd", {&out, &rstd, &x, &w});
  switch (x.device()) {
    case Device::CPU:
      return cpu::rmsnorm_fwd(out, rstd, x, w, eps);
    case Device::CUDA:
      return cuda::rmsnorm_fwd(out, rstd, x, w, eps);
    default:
      fail("rmsnorm_fwd: no implementation for ", device_name(x.device()));
  }
}

void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                 Stream) {
  check_ndim("rmsnorm_bwd", "x", x, 2);
  check_act("rmsnorm_bwd", "x", x);
  check_shape("rmsnorm_bwd", "dy", dy, x.shape());
  check_shape("rmsnorm_bwd", "w", w, {x.size(1)});
  check_shape("rmsnorm_bwd", "rstd", rstd, {x.size(0)});
  if (dx.defined()) check_shape("rmsnorm_bwd", "dx", dx, x.shape());
  if (dw.defined()) check_shape("rmsnorm_bwd", "dw", dw, w.shape());
  for (const Tensor* t : {&dy, &rstd, const_cast<const Tensor*>(&dx)})
    if (t->defined()) DSEEK_CHECK(t->dtype() == x.dtype(), "rmsnorm_bwd: mixed dtypes");
  if (dw.defined()) DSEEK_CHECK(dw.dtype() == w.dtype(), "rmsnorm_bwd: dw dtype differs from w");
  check_same_device("rmsnorm_bwd", {&dx, &dw, &dy, &x, &w, &rstd});
  switch (x.device()) {
    case Device::CPU:
      return cpu::rmsnorm_bwd(dx, dw, dy, x, w, rstd);
    default:
      fail("rmsnorm_bwd: no implementation for ", device_name(x.device()));
  }
}

}  // namespace dseek::ops
