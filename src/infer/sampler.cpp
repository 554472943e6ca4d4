// sampler.cpp — greedy / temperature / top-k / top-p sampling.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>

namespace dseek::infer {

void SamplingParams::validate() const {
  if (greedy) return;
  DSEEK_CHECK(std::isfinite(temperature) && temperature >= 0, "--temperature must be ≥ 0 (got ", temperature,
              ")");
  DSEEK_CHECK(top_k >= 0, "--top-k must be ≥ 0 (got ", top_k, ")");
  DSEEK_CHECK(top_p > 0 && top_p <= 1, "--top-p must be in (0, 1] (got ", top_p, ")");
}

int64_t Sampler::sample(const float* logits, int64_t V) {
  for (int64_t i = 0; i < V; ++i)
    DSEEK_CHECK(!std::isnan(logits[i]), "sampler: logits contain NaN (token ", i, ")");
  if (greedy()) return int64_t(std::max_element(logits, logits + V) - logits);
  return ops::sample_row(logits, V, rule(), draw());
}

}  // namespace dseek::infer
