// router.h — MoE routing: scores, group-limited top-k and gate weights (spec/model.md §4.2, §4.3).
// V3 "noaux_tc": sigmoid, bias for selection only, groups ranked by the sum of their top-2 biased
// scores. V2: softmax, "greedy" or "group_limited_greedy" (groups ranked by their max). Gate weights
// are the unbiased scores of the chosen experts, renormalised when norm_topk_prob, times
// routed_scaling_factor. Dropped groups are excluded outright (DeepSeek's −inf, not HF's 0.0).
#pragma once

#include <vector>

#include "core/stream.h"
#include "core/tensor.h"
#include "io/model_config.h"

namespace dseek::ops {

struct RouterParams {
  ScoringFunc scoring = ScoringFunc::Sigmoid;
  TopkMethod method = TopkMethod::NoauxTc;
  int64_t n_group = 1, topk_group = 1, top_k = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  static RouterParams from(const ModelConfig& c) {
    return {.scoring = c.scoring_func,
            .method = c.topk_method,
            .n_group = c.n_group,
            .topk_group = c.topk_group,
            .top_k = c.num_experts_per_tok,
            .norm_topk_prob = c.norm_topk_prob,
            .routed_scaling_factor = c.routed_scaling_factor};
  }
};

// topk_idx: [N, K] I32, ascending expert order; topk_w: [N, K] f32/f64 (activation dtype);
// scores: [N, E] of that dtype, the unbiased affinities (saved for the backward), or undefined.
// logits: [N, E]; bias: [E] f32 or undefined.
void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p, Stream s = {});

// Backward through the gate weights of the chosen experts (selection is discrete; the bias gets no
// gradient): dlogits[N, E] (written) from dtopk_w[N, K], the forward's topk_idx and scores.
void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p, Stream s = {});

// DeepSeek-V3's complementary sequence-wise balance loss (spec/model.md §4.4), summed over the
// sequences given by `seq_len` (rows [b·seq_len, (b+1)·seq_len)) and divided by their number:
//   L = α/B Σ_b Σ_i f_i P_i,  f_i = E/(K·T) Σ_t 1[i ∈ topk(t)],  P_i = 1/T Σ_t s_{i,t} / Σ_j s_{j,t}.
// Returns L; when dlogits is defined, adds ∂L/∂logits into it (f_i is a constant).
double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p, Stream s = {});

// The auxiliary-loss-free balancing step (spec/model.md §4.4): bias[e] += γ · sign(mean load − load[e]),
// bias f32 [E] on its device (updated there: only the E counts travel, no copy back), load the host's
// token counts per expert.
void router_bias_update(Tensor bias, const std::vector<int64_t>& load, double gamma, Stream s = {});

}  // namespace dseek::ops
