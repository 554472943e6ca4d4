// router.h — MoE routing: scores, group-limited top-k and gate weights (spec/model.md §4.2, §4.3).
// V3 "noaux_tc": sigmoid, bias for selection only, groups ranked by the sum of their top-2 biased
// scores. V2: softmax, "greedy" or "group_limited_greedy" (groups ranked by their max). Gate weights
// are the unbiased scores of the chosen experts, renormalised when norm_topk_prob, times
// routed_scaling_factor. Dropped groups are excluded outright (DeepSeek's −inf, not HF's 0.0).
#pragma once

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

}  // namespace dseek::ops
