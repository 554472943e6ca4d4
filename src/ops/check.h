// check.h — argument checks shared by the op dispatchers: shapes, dtypes, devices, named in errors.
#pragma once

#include <initializer_list>

#include "core/tensor.h"

namespace dseek::ops {

inline void check_shape(const char* op, const char* arg, const Tensor& t, const Shape& want) {
  DSEEK_CHECK(t.defined(), op, ": ", arg, " is undefined");
  DSEEK_CHECK(t.shape() == want, op, ": ", arg, " has shape ", shape_str(t.shape()), ", expected ",
              shape_str(want));
}
inline void check_dtype(const char* op, const char* arg, const Tensor& t, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (t.dtype() == d) return;
  fail(op, ": ", arg, " has unsupported dtype ", dtype_name(t.dtype()));
}
inline void check_ndim(const char* op, const char* arg, const Tensor& t, int nd) {
  DSEEK_CHECK(t.defined(), op, ": ", arg, " is undefined");
  DSEEK_CHECK(t.ndim() == nd, op, ": ", arg, " ", t.str(), " must have ", nd, " dims");
}
// The defined tensors among ts on one device (undefined ones are skipped).
inline void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (auto* t : ts)
    if (t->defined()) {
      if (!first) first = t;
      DSEEK_CHECK(t->device() == first->device(), op, ": tensors on different devices");
    }
}
// On the GPU an f32 activation may stand beside the bf16 copy a product takes as its operand (written in
// bf16 by the op before the product, or kept from the forward): f32_side f32 on CUDA, bf16_side bf16.
inline bool gpu_bf16_operand(const Tensor& f32_side, const Tensor& bf16_side) {
  return f32_side.device() == Device::CUDA && f32_side.dtype() == DType::F32 &&
         bf16_side.dtype() == DType::BF16;
}
// Activation dtype: f32 or f64 on the CPU; f32 or bf16 on CUDA.
inline void check_act(const char* op, const char* arg, const Tensor& t) {
  if (t.device() == Device::CUDA) {
    check_dtype(op, arg, t, {DType::F32, DType::BF16});
  } else {
    check_dtype(op, arg, t, {DType::F32, DType::F64});
  }
}

}  // namespace dseek::ops
