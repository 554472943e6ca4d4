// linear.cpp — checks and device dispatch for linear / matmul_nn (ops/linear.h).
#include "ops/linear.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

namespace {
void check_weight_dtype(const char* op, const Tensor& x, const Tensor& w) {
  check_act(op, "x", x);
  if (x.dtype() == DType::F64) {
    check_dtype(op, "w", w, {DType::F64});
  } else if (w.dtype() == DType::F8E4M3) {
    DSEEK_CHECK(w.device() == Device::CUDA && w.block_scale(), op,
                ": fp8 weights need their block scales and run on CUDA (the CPU dequantizes at load)");
  } else {
    check_dtype(op, "w", w, {DType::F32, DType::BF16});
  }
}
}  // namespace

void linear(Tensor out, const Tensor& x, const Tensor& w, Stream) {
  check_ndim("linear", "x", x, 2);
  check_ndim("linear", "w", w, 2);
  if (x.device() == Device::CUDA && x.dtype() == DType::F16) {  // an fp16 product (the flash kernel's inputs)
    DSEEK_CHECK(w.dtype() == DType::F16 && out.dtype() == DType::F16 && !w.block_scale(),
                "linear: an f16 x takes f16 weights and output (got w ", dtype_name(w.dtype()), ", out ",
                dtype_name(out.dtype()), ")");
    DSEEK_CHECK(x.size(1) == w.size(1), "linear: x ", x.str(), " and w ", w.str(),
                " disagree on the input dim");
    check_shape("linear", "out", out, {x.size(0), w.size(0)});
    check_same_device("linear", {&out, &x, &w});
    return cuda::linear(out, x, w);
  }
  check_weight_dtype("linear", x, w);
  DSEEK_CHECK(x.size(1) == w.size(1), "linear: x ", x.str(), " and w ", w.str(),
              " disagree on the input dim");
  check_shape("linear", "out", out, {x.size(0), w.size(0)});
  DSEEK_CHECK(out.dtype() == x.dtype() || (x.device() == Device::CUDA && out.dtype() == DType::F32),
              "linear: out dtype differs from x");
  check_same_device("linear", {&out, &x, &w});
  switch (x.device()) {
    case Device::CPU:
      return cpu::linear(out, x, w);
    case Device::CUDA:
      return cuda::linear(out, x, w);
    default:
      fail("linear: no implementation for ", device_name(x.device()));
  }
}

Tensor product_input(const Tensor& x, std::initializer_list<const Tensor*> ws) {
  if (x.device() != Device::CUDA || x.dtype() != DType::F32 || x.ndim() != 2 || x.size(0) <= 8) return x;
  for (const Tensor* w : ws)
    if (w->dtype() != DType::BF16 || w->block_scale()) return x;
  return x.to(DType::BF16);
}

void matmul_nn(Tensor out, const Tensor& x, const Tensor& w, Stream) {
  check_ndim("matmul_nn", "x", x, 2);
  check_ndim("matmul_nn", "w", w, 2);
  check_weight_dtype("matmul_nn", x, w);
  DSEEK_CHECK(x.size(1) == w.size(0), "matmul_nn: x ", x.str(), " and w ", w.str(),
              " disagree on the inner dim");
  check_shape("matmul_nn", "out", out, {x.size(0), w.size(1)});
  DSEEK_CHECK(out.dtype() == x.dtype() || (x.device() == Device::CUDA && out.dtype() == DType::F32),
              "matmul_nn: out dtype differs from x");
  check_same_device("matmul_nn", {&out, &x, &w});
  switch (x.device()) {
    case Device::CPU:
      return cpu::matmul_nn(out, x, w);
    case Device::CUDA:
      return cuda::matmul_nn(out, x, w);
    default:
      fail("matmul_nn: no implementation for ", device_name(x.device()));
  }
}

void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w, Stream) {
  check_ndim("linear_bwd", "x", x, 2);
  check_ndim("linear_bwd", "w", w, 2);
  check_weight_dtype("linear_bwd", x, w);
  check_shape("linear_bwd", "dy", dy, {x.size(0), w.size(0)});
  // On the GPU, x and dy may each be the bf16 operand of f32 activations (kept from the forward, or
  // written in bf16 by the op before; bf16 weights); the gradients dx and dw are then f32.
  const bool gpu = x.device() == Device::CUDA;
  auto operand_ok = [&](const Tensor& t) {
    return t.dtype() == x.dtype() ||
           (gpu && (t.dtype() == DType::F32 || (t.dtype() == DType::BF16 && w.dtype() == DType::BF16)));
  };
  DSEEK_CHECK(operand_ok(dy), "linear_bwd: dy is ", dtype_name(dy.dtype()), ", x ", dtype_name(x.dtype()));
  DSEEK_CHECK(!gpu || x.dtype() != DType::BF16 || w.dtype() == DType::BF16,
              "linear_bwd: a bf16 x takes bf16 weights");
  if (dx.defined()) {
    check_shape("linear_bwd", "dx", dx, x.shape());
    DSEEK_CHECK(dx.dtype() == x.dtype() || (gpu && dx.dtype() == DType::F32),
                "linear_bwd: dx dtype differs from x");
  }
  if (dw.defined()) {
    check_shape("linear_bwd", "dw", dw, w.shape());
    DSEEK_CHECK(dw.dtype() == x.dtype() || (gpu && dw.dtype() == DType::F32),
                "linear_bwd: dw must have the activation dtype");
  }
  check_same_device("linear_bwd", {&dx, &dw, &dy, &x, &w});
  switch (x.device()) {
    case Device::CPU:
      return cpu::linear_bwd(dx, dw, dy, x, w);
    case Device::CUDA:
      return cuda::linear_bwd(dx, dw, dy, x, w);
    default:
      fail("linear_bwd: no implementation for ", device_name(x.device()));
  }
}

}  // namespace dseek::ops
