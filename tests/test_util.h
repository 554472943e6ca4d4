// test_util.h — shared helpers for the tests: fixture paths, tensor comparison metrics.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "core/tensor.h"

namespace dseek::test {

inline std::string data(const std::string& rel) {
  return std::string(DSEEK_TEST_DATA) + "/" + rel;
}

struct Diff {
  double max_abs = 0, rel = 0;  // max |a - b| and ‖a − b‖ / ‖b‖
  bool nan = false;
};

// Compares any float tensors of equal element count (b is the reference).
inline Diff diff(const Tensor& a, const Tensor& b) {
  Tensor x = a.to(DType::F64), y = b.to(DType::F64);
  EXPECT_EQ(x.numel(), y.numel());
  Diff d;
  double num = 0, den = 0;
  const double* p = x.data<double>();
  const double* q = y.data<double>();
  for (int64_t i = 0; i < std::min(x.numel(), y.numel()); ++i) {
    if (std::isnan(p[i]) || std::isnan(q[i])) d.nan = true;
    const double e = p[i] - q[i];
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    num += e * e;
    den += q[i] * q[i];
  }
  d.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

inline std::string str(const Diff& d) {
  return "max|Δ| = " + std::to_string(d.max_abs) + ", ‖Δ‖/‖ref‖ = " + std::to_string(d.rel);
}

}  // namespace dseek::test
