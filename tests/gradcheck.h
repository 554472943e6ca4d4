// gradcheck.h — finite-difference gradient checks in f64: the analytic gradient of a scalar function
// at a tensor against central differences at sampled entries.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>

#include "core/tensor.h"

namespace dseek::test {

// Fills an f64 tensor with N(0, std²) values from `rng`.
inline void randn(Tensor& t, std::mt19937& rng, double std = 1.0) {
  std::normal_distribution<double> nd(0, std);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = nd(rng);
}
inline Tensor randn(const Shape& s, std::mt19937& rng, double std = 1.0) {
  Tensor t = Tensor::empty(s, DType::F64);
  randn(t, rng, std);
  return t;
}
// Σ r ⊙ y: the scalar whose gradient w.r.t. y is r.
inline double dot(const Tensor& r, const Tensor& y) {
  double s = 0;
  for (int64_t i = 0; i < r.numel(); ++i) s += r.data<double>()[i] * y.data<double>()[i];
  return s;
}

// Checks ana = ∂f/∂x at `samples` random entries of x (modified and restored in place). The error is
// ‖num − ana‖ / max(‖num‖, tiny) over the sampled entries.
inline void expect_grad(const std::string& what, Tensor x, const Tensor& ana,
                        const std::function<double()>& f, int samples = 24, double eps = 1e-5,
                        double tol = 1e-6, uint32_t seed = 7) {
  ASSERT_EQ(x.dtype(), DType::F64) << what;
  ASSERT_EQ(ana.numel(), x.numel()) << what;
  std::mt19937 rng(seed);
  double num2 = 0, err2 = 0;
  const int64_t n = x.numel();
  double* p = x.data<double>();
  const double* a = ana.data<double>();
  for (int s = 0; s < samples && s < n; ++s) {
    const int64_t i = samples >= n ? s : int64_t(rng() % uint64_t(n));
    const double keep = p[i];
    p[i] = keep + eps;
    const double fp = f();
    p[i] = keep - eps;
    const double fm = f();
    p[i] = keep;
    const double num = (fp - fm) / (2 * eps);
    num2 += num * num;
    err2 += (num - a[i]) * (num - a[i]);
  }
  const double rel = std::sqrt(err2) / std::max(std::sqrt(num2), 1e-12);
  EXPECT_LE(rel, tol) << what << ": finite differences disagree, relative error " << rel;
  EXPECT_GT(num2, 0.0) << what << ": the sampled gradient is zero (a check that cannot fail)";
}

}  // namespace dseek::test
