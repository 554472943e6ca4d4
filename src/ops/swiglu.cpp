// swiglu.cpp — checks and device dispatch for SwiGLU (ops/swiglu.h).
#include "ops/swiglu.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up, Stream) {
  check_act("swiglu_fwd", "gate", gate);
  check_shape("swiglu_fwd", "up", up, gate.shape());
  check_shape("swiglu_fwd", "out", out, gate.shape());
  DSEEK_CHECK(up.dtype() == gate.dtype() && out.dtype() == gate.dtype(), "swiglu_fwd: mixed dtypes");
  check_same_device("swiglu_fwd", {&out, &gate, &up});
  switch (gate.device()) {
    case Device::CPU:
      return cpu::swiglu_fwd(out, gate, up);
    case Device::CUDA:
      return cuda::swiglu_fwd(out, gate, up);
    default:
      fail("swiglu_fwd: no implementation for ", device_name(gate.device()));
  }
}

void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream) {
  check_act("swiglu_bwd", "gate", gate);
  for (const Tensor* t : {&up, &dout, const_cast<const Tensor*>(&dgate), const_cast<const Tensor*>(&dup)}) {
    check_shape("swiglu_bwd", "argument", *t, gate.shape());
    DSEEK_CHECK(t->dtype() == gate.dtype(), "swiglu_bwd: mixed dtypes");
  }
  check_same_device("swiglu_bwd", {&dgate, &dup, &dout, &gate, &up});
  switch (gate.device()) {
    case Device::CPU:
      return cpu::swiglu_bwd(dgate, dup, dout, gate, up);
    case Device::CUDA:
      return cuda::swiglu_bwd(dgate, dup, dout, gate, up);
    default:
      fail("swiglu_bwd: no implementation for ", device_name(gate.device()));
  }
}

}  // namespace dseek::ops
