// rmsnorm.cpp — checks and device dispatch for RMSNorm (ops/rmsnorm.h).
#include "ops/rmsnorm.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/elementwise.h"

namespace dseek::ops {

namespace {

void check_fwd(const char* op, const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w) {
  check_ndim(op, "x", x, 2);
  check_act(op, "x", x);
  check_shape(op, "out", out, x.shape());
  check_shape(op, "w", w, {x.size(1)});
  check_dtype(op, "w", w, {DType::F32, x.dtype()});
  DSEEK_CHECK(out.dtype() == x.dtype(), op, ": out dtype differs from x");
  if (rstd.defined()) check_shape(op, "rstd", rstd, {x.size(0)});
  if (rstd.defined()) DSEEK_CHECK(rstd.dtype() == x.dtype(), op, ": rstd dtype differs from x");
  check_same_device(op, {&out, &rstd, &x, &w});
}

}  // namespace

void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps, Stream) {
  check_fwd("rmsnorm_fwd", out, rstd, x, w);
  switch (x.device()) {
    case Device::CPU:
      return cpu::rmsnorm_fwd(out, rstd, x, w, eps);
    case Device::CUDA:
      return cuda::rmsnorm_fwd(out, rstd, x, w, eps);
    default:
      fail("rmsnorm_fwd: no implementation for ", device_name(x.device()));
  }
}

void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps,
                     Stream) {
  const char* op = "add_rmsnorm_fwd";
  check_fwd(op, out, rstd, h, w);
  check_shape(op, "y", y, h.shape());
  DSEEK_CHECK(y.dtype() == h.dtype(), op, ": y dtype differs from h");
  check_same_device(op, {&h, &y});
  switch (h.device()) {
    case Device::CPU:
      return cpu::add_rmsnorm_fwd(h, out, rstd, y, w, eps);
    case Device::CUDA:
      return cuda::add_rmsnorm_fwd(h, out, rstd, y, w, eps);
    default:
      fail(op, ": no implementation for ", device_name(h.device()));
  }
}

namespace {
// rmsnorm_bwd's argument checks (rmsnorm_bwd_add shares them).
void check_bwd(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
               const Tensor& rstd) {
  check_ndim("rmsnorm_bwd", "x", x, 2);
  check_act("rmsnorm_bwd", "x", x);
  check_shape("rmsnorm_bwd", "dy", dy, x.shape());
  check_shape("rmsnorm_bwd", "w", w, {x.size(1)});
  check_shape("rmsnorm_bwd", "rstd", rstd, {x.size(0)});
  if (dx.defined()) check_shape("rmsnorm_bwd", "dx", dx, x.shape());
  if (dw.defined()) check_shape("rmsnorm_bwd", "dw", dw, w.shape());
  for (const Tensor* t : {&dy, &rstd, &dx})
    if (t->defined()) DSEEK_CHECK(t->dtype() == x.dtype(), "rmsnorm_bwd: mixed dtypes");
  if (dw.defined()) DSEEK_CHECK(dw.dtype() == w.dtype(), "rmsnorm_bwd: dw dtype differs from w");
  check_same_device("rmsnorm_bwd", {&dx, &dw, &dy, &x, &w, &rstd});
}
}  // namespace

void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                 Stream) {
  check_bwd(dx, dw, dy, x, w, rstd);
  switch (x.device()) {
    case Device::CPU:
      return cpu::rmsnorm_bwd(dx, dw, dy, x, w, rstd);
    case Device::CUDA:
      return cuda::rmsnorm_bwd(dx, dw, dy, x, w, rstd);
    default:
      fail("rmsnorm_bwd: no implementation for ", device_name(x.device()));
  }
}

void rmsnorm_bwd_add(Tensor dh, Tensor dh_op, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                     const Tensor& rstd, Stream s) {
  check_shape("rmsnorm_bwd_add", "dh", dh, x.shape());
  DSEEK_CHECK(dh.dtype() == x.dtype(), "rmsnorm_bwd_add: dh dtype differs from x");
  if (dh_op.defined()) {
    check_shape("rmsnorm_bwd_add", "dh_op", dh_op, x.shape());
    DSEEK_CHECK(dh_op.device() == Device::CUDA && dh_op.dtype() == DType::BF16 && x.dtype() == DType::F32,
                "rmsnorm_bwd_add: dh_op is the bf16 operand of f32 activations on the GPU");
  }
  check_same_device("rmsnorm_bwd_add", {&dh, &dh_op, &x});
  if (x.device() == Device::CUDA && x.dtype() == DType::F32 && w.dtype() == DType::F32) {
    check_bwd(dh, dw, dy, x, w, rstd);
    return cuda::rmsnorm_bwd_add(dh, dh_op, dw, dy, x, w, rstd);
  }
  Tensor tmp = Tensor::empty(x.shape(), x.dtype(), x.device());  // tmp: [N, D] the norm's input gradient
  rmsnorm_bwd(tmp, dw, dy, x, w, rstd, s);
  axpy_(dh, tmp, 1.0, s);
  if (dh_op.defined()) dh_op.copy_from(dh);
}

}  // namespace dseek::ops
