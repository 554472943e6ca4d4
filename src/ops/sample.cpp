// sample.cpp — the CPU sampling rule (ops/sample.h) and the checks / device dispatch of sample_rows.
#include "ops/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ops/check.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

int64_t sample_row(const float* logits, int64_t V, const SampleParams& p, double u) {
  for (int64_t i = 0; i < V; ++i)
    DSEEK_CHECK(!std::isnan(logits[i]), "sampler: logits contain NaN (token ", i, ")");
  // Candidates sorted by logit (ties: lower id first), cut to top_k.
  std::vector<int64_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  auto better = [&](int64_t a, int64_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(size_t(k));
  std::vector<double> prob(ids.size());
  const double mx = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    sum += prob[i] = std::exp((double(logits[ids[i]]) - mx) / p.temperature);
  // top_p: the smallest prefix whose mass reaches p.
  size_t keep = ids.size();
  if (p.top_p < 1.0) {
    double cum = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      cum += prob[i] / sum;
      if (cum >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += prob[i];
  double t = u * mass;
  for (size_t i = 0; i < keep; ++i) {
    t -= prob[i];
    if (t <= 0) return ids[i];
  }
  return ids[keep - 1];
}

void sample_rows(Tensor ids, Tensor fallback, const Tensor& logits, const Tensor& u, const SampleParams& p) {
  const char* op = "sample_rows";
  check_ndim(op, "logits", logits, 2);
  check_dtype(op, "logits", logits, {DType::F32});
  const int64_t B = logits.size(0), V = logits.size(1);
  DSEEK_CHECK(V > 0, op, ": logits have no columns");
  check_shape(op, "ids", ids, {B});
  check_dtype(op, "ids", ids, {DType::I64});
  check_shape(op, "fallback", fallback, {B});
  check_dtype(op, "fallback", fallback, {DType::I32});
  check_shape(op, "u", u, {B});
  check_dtype(op, "u", u, {DType::F64});
  check_same_device(op, {&ids, &fallback, &logits, &u});
  DSEEK_CHECK(std::isfinite(p.temperature) && p.temperature > 0, op, ": temperature must be > 0 (got ",
              p.temperature, ")");
  DSEEK_CHECK(p.top_k >= 0, op, ": top_k must be ≥ 0 (got ", p.top_k, ")");
  DSEEK_CHECK(p.top_p > 0 && p.top_p <= 1, op, ": top_p must be in (0, 1] (got ", p.top_p, ")");
  if (B == 0) return;
  if (logits.device() == Device::CUDA) return cuda::sample_rows(ids, fallback, logits, u, p);
  for (int64_t b = 0; b < B; ++b) {
    ids.data<int64_t>()[b] = sample_row(logits.data<float>() + b * V, V, p, u.data<double>()[b]);
    fallback.data<int32_t>()[b] = 0;
  }
}

}  // namespace dseek::ops
