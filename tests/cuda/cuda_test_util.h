// cuda_test_util.h — helpers shared by the CUDA test binaries (tests/cuda/): outputs poisoned with NaN on
// the device, device results brought back as f32, and the comparison against the CPU twin with the
// project's bounds (bf16 ‖Δ‖/‖ref‖ ≤ 1e-2, f32 ≤ 1e-5).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/tensor.h"
#include "test_util.h"

namespace dseek::cudatest {

inline Tensor poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt, Device::CUDA);
  t.fill(NAN);
  return t;
}
inline Tensor down(const Tensor& t) {
  return t.to(Device::CPU).to(DType::F32);
}
inline double tol(DType dt) {
  return dt == DType::BF16 ? 1e-2 : 1e-5;
}
inline void expect_close(const std::string& what, const Tensor& gpu, const Tensor& cpu, DType dt) {
  test::Diff d = test::diff(down(gpu), cpu);
  EXPECT_FALSE(d.nan) << what << ": NaN (unwritten output?)";
  EXPECT_LE(d.rel, tol(dt)) << what << " " << dtype_name(dt) << ": " << test::str(d);
}

}  // namespace dseek::cudatest
