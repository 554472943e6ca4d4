// sampler.h — next-token choice from logits: greedy, or temperature / top-k / top-p sampling with a
// seeded counter-based RNG, so a (seed, prompt) pair always gives the same tokens. The rule itself is
// ops::sample_row (ops/sample.h), which the GPU's sample_rows follows too: a sequence drawing its uniform
// here gets the same token whichever device samples.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"
#include "ops/sample.h"

namespace dseek::infer {

struct SamplingParams {
  bool greedy = true;
  double temperature = 1.0;  // ≤ 0 means greedy
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit
  uint64_t seed = 0;
  void validate() const;  // throws on out-of-range values, naming the flag
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { p_.validate(); }
  // logits: [V] f32 (a row). Returns the chosen token id.
  int64_t sample(const float* logits, int64_t V);
  bool greedy() const { return p_.greedy || p_.temperature <= 0; }
  // For sampling elsewhere (the GPU): the next uniform of this sequence's stream, and the rule's numbers.
  double draw() { return rng_.uniform(); }
  ops::SampleParams rule() const { return {p_.temperature, p_.top_k, p_.top_p}; }

 private:
  SamplingParams p_;
  Rng rng_;
};

}  // namespace dseek::infer
