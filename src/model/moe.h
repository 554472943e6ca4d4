// moe.h — the feed-forward blocks: dense SwiGLU MLP, and DeepSeekMoE (router + routed experts +
// shared experts) (spec/model.md §2.1, §4).
#pragma once

#include "core/tensor.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace dseek {

// out[N, D] = down(silu(gate · x) ⊙ (up · x)).
void mlp_fwd(Tensor out, const Tensor& x, const MlpWeights& w);

// What the router chose (for tests, statistics and the backward).
struct RouterTrace {
  Tensor topk_idx;  // [N, K] I32, ascending
  Tensor topk_w;    // [N, K] gate weights
};

// out[N, D] = Σ_k w_k · expert_{idx_k}(x) + shared(x); tokens grouped by expert so each expert runs
// one product over its tokens.
void moe_fwd(Tensor out, const Tensor& x, const MoeWeights& w, const ModelConfig& cfg,
             RouterTrace* trace = nullptr);

}  // namespace dseek
