// sample.h — next-token sampling from logits rows, on the CPU (the reference, which infer::Sampler uses)
// and on the GPU (spec/serving.md sampling; vLLM/llama.cpp semantics: temperature, top-k, top-p). Both
// follow one rule, so the same uniform number gives the same token on either device:
//   candidates = the tokens ordered by logit (ties: lower id first), cut to the top_k (0: all);
//   p_i = exp((logit_i − max) / temperature) over the candidates (unnormalised, in f64);
//   top_p < 1 keeps the shortest prefix whose share Σ p_i / Σ_all p reaches top_p;
//   the choice is the first candidate at which u · (mass of the kept prefix) − Σ_{j ≤ i} p_j ≤ 0.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace dseek::ops {

struct SampleParams {
  double temperature = 1.0;  // > 0 (greedy is argmax_rows)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // (0, 1]
};

// The token the rule above picks from one row of V logits with uniform u in (0, 1) (the CPU reference).
// Throws on a NaN logit.
int64_t sample_row(const float* logits, int64_t V, const SampleParams& p, double u);

// On the GPU candidates beyond the 1024 most likely tokens are not gathered; a row whose choice lies past
// them (or that holds a NaN) is flagged instead of decided.
inline constexpr int64_t kDeviceSampleCandidates = 1024;

// Every row b of logits [B, V] (f32) with uniform u[b] ([B] f64, same device): ids[b] ([B] I64) = the
// chosen token, fallback[b] ([B] I32) = 0; on the GPU, ids[b] = −1 and fallback[b] = 1 for a row it could
// not decide, which the caller samples with sample_row and the same u (nothing is lost: the result is what
// the CPU gives). On the CPU fallback is always 0.
void sample_rows(Tensor ids, Tensor fallback, const Tensor& logits, const Tensor& u, const SampleParams& p);

}  // namespace dseek::ops
