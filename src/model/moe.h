// moe.h — the feed-forward blocks, forward and backward: dense SwiGLU MLP, and DeepSeekMoE (router +
// routed experts + shared experts) (spec/model.md §2.1, §4). The router's gradient reaches the gate
// through the weights of the chosen experts (and through the optional sequence-wise balance loss).
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "model/weights.h"
#include "ops/decode.h"
#include "ops/moe.h"

namespace dseek {

struct MlpSaved {
  // input [N, D]; gate, up, silu(gate)·up [N, F]; x and h as the products took them (bf16 operands of
  // f32 activations on the GPU's bf16 step)
  Tensor x, g, u, h;
};

// out[N, D] = down(silu(gate · x) ⊙ (up · x)).
void mlp_fwd(Tensor out, const Tensor& x, const MlpWeights& w, MlpSaved* saved = nullptr);
// dx written, parameter gradients accumulated into g. dy_op (optional): dy's bf16 operand when the caller
// already has it (the down projection's backward takes it, no cast).
void mlp_bwd(Tensor dx, MlpWeights& g, const Tensor& dy, const MlpWeights& w, const MlpSaved& s,
             const Tensor& dy_op = {});

// What the router chose (for tests, statistics and the backward).
struct RouterTrace {
  Tensor topk_idx;            // [N, K] I32, ascending
  Tensor topk_w;              // [N, K] gate weights
  double balance_loss = 0;    // the sequence-wise balance loss (when MoeOptions asks for it)
  std::vector<int64_t> load;  // [E] tokens per expert when the layer grouped them on the host, else empty
};

struct MoeSaved {
  Tensor x;       // [N, D]
  Tensor scores;  // [N, E] unbiased affinities
  RouterTrace route;
  ops::MoePlan plan;       // tokens grouped by expert
  Tensor xp, g, u, h, yp;  // permuted rows [M = N·K, ·]: input, gate, up, silu(gate)·up, expert output
                           // (with recompute xp, g, u, h are not kept: rebuilt in the backward from x)
  bool recompute = false;
  MlpSaved shared;
  double balance_loss = 0;  // the sequence-wise balance loss of this layer (0 if α = 0)
};

struct MoeOptions {
  double balance_alpha = 0;  // α of the sequence-wise balance loss (training)
  int64_t seq_len = 0;       // rows per sequence, for that loss
};

// out[N, D] = Σ_k w_k · expert_{idx_k}(x) + shared(x); tokens grouped by expert so each expert runs
// one product over its tokens.
void moe_fwd(Tensor out, const Tensor& x, const MoeWeights& w, const ModelConfig& cfg,
             RouterTrace* trace = nullptr, MoeSaved* saved = nullptr, const MoeOptions& opt = {});
// The FFN output of a decode step, not yet added to the residual: y [N, D] itself (K = 0, KS = 1), or the
// MoE's per-slot expert outputs y [N·KS, D] with their gate weights w [N, K] (ops::moe_experts_slots), to
// be combined inside the next norm's launch (ops::NormedInput).
struct FfnOut {
  Tensor y, w;
  int64_t K = 0, KS = 1;
};

// The normed input of the next product: h + f (f's slots combined) normalized by `norm`; the sum goes to
// h_out and the normed rows to x_out when they are defined (ops::NormedInput).
ops::NormedInput residual_norm(const Tensor& h, const FfnOut& f, const Tensor& norm, double eps,
                               const Tensor& h_out = Tensor(), const Tensor& x_out = Tensor());

// The MoE of a decode step from the normed input `in` (the post-attention residual add + RMSNorm; in.x_out
// [N, D] defined, it receives the experts' input): on the GPU the norm rides in the router's launch and
// the experts' outputs stay per slot (FfnOut with K > 0); elsewhere normed_input, then moe_fwd.
FfnOut moe_decode(const ops::NormedInput& in, const MoeWeights& w, const ModelConfig& cfg);

// dx written, gradients accumulated into g (the correction bias gets none). dy_op as mlp_bwd's (for the
// shared expert).
void moe_bwd(Tensor dx, MoeWeights& g, const Tensor& dy, const MoeWeights& w, const ModelConfig& cfg,
             const MoeSaved& s, const MoeOptions& opt = {}, const Tensor& dy_op = {});

}  // namespace dseek
