// sampler.cpp — greedy / temperature / top-k / top-p sampling.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dseek::infer {

void SamplingParams::validate() const {
  if (greedy) return;
  DSEEK_CHECK(std::isfinite(temperature) && temperature >= 0, "--temperature must be ≥ 0 (got ", temperature,
              ")");
  DSEEK_CHECK(top_k >= 0, "--top-k must be ≥ 0 (got ", top_k, ")");
  DSEEK_CHECK(top_p > 0 && top_p <= 1, "--top-p must be in (0, 1] (got ", top_p, ")");
}

int64_t Sampler::sample(const float* logits, int64_t V) {
  auto argmax = [&] { return int64_t(std::max_element(logits, logits + V) - logits); };
  for (int64_t i = 0; i < V; ++i)
    DSEEK_CHECK(!std::isnan(logits[i]), "sampler: logits contain NaN (token ", i, ")");
  if (p_.greedy || p_.temperature <= 0) return argmax();
  // Candidates sorted by logit (ties: lower id first), cut to top_k.
  std::vector<int64_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = (p_.top_k > 0 && p_.top_k < V) ? p_.top_k : V;
  auto better = [&](int64_t a, int64_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(size_t(k));
  std::vector<double> prob(ids.size());
  const double mx = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    sum += prob[i] = std::exp((double(logits[ids[i]]) - mx) / p_.temperature);
  // top_p: the smallest prefix whose mass reaches p.
  size_t keep = ids.size();
  if (p_.top_p < 1.0) {
    double cum = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      cum += prob[i] / sum;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += prob[i];
  double u = rng_.uniform() * mass;
  for (size_t i = 0; i < keep; ++i) {
    u -= prob[i];
    if (u <= 0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace dseek::infer
