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
  // On the GPU an f32 SwiGLU may write bf16: the operand of the bf16 product that follows (training).
  DSEEK_CHECK(up.dtype() == gate.dtype() && (out.dtype() == gate.dtype() || gpu_bf16_operand(gate, out)),
              "swiglu_fwd: mixed dtypes");
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
  // On the GPU, under an f32 dout, gate/up may be the bf16 the experts wrote and the gradients may be
  // written in bf16 (they only feed bf16 products); elsewhere one dtype throughout.
  const bool gpu_f32 = gate.device() == Device::CUDA && dout.dtype() == DType::F32;
  for (const Tensor* t : {&up, &dout, const_cast<const Tensor*>(&dgate), const_cast<const Tensor*>(&dup)})
    check_shape("swiglu_bwd", "argument", *t, gate.shape());
  auto act = [](DType d) { return d == DType::F32 || d == DType::BF16; };
  DSEEK_CHECK(up.dtype() == gate.dtype() && dgate.dtype() == dup.dtype() &&
                  (gpu_f32 ? act(gate.dtype()) && act(dgate.dtype())
                           : dout.dtype() == gate.dtype() && dgate.dtype() == gate.dtype()),
              "swiglu_bwd: mixed dtypes (gate ", dtype_name(gate.dtype()), ", dout ",
              dtype_name(dout.dtype()), ", dgate ", dtype_name(dgate.dtype()), ")");
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
