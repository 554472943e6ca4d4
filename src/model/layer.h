// layer.h — one decoder layer, forward and backward (spec/model.md §2.1):
//   h_mid = h + MLA(RMSNorm_in(h));  h_out = h_mid + FFN(RMSNorm_post(h_mid)),  FFN = dense MLP or MoE.
// Shared by the main stack and the MTP modules. With `recompute`, the RMSNorm outputs are rebuilt in the
// backward instead of kept (and MLA recomputes its up-projections, see mla.h; the MoE its permuted rows
// and the experts' gate/up products, see moe.h).
#pragma once

#include <vector>

#include "model/mla.h"
#include "model/moe.h"

namespace dseek {

struct LayerSaved {
  bool recompute = false;
  Tensor h_in, rstd1, h_mid, rstd2;  // [N, D], [N], [N, D], [N]
  MlaSaved attn;
  MlpSaved mlp;
  MoeSaved moe;
};

struct LayerContext {
  const ModelConfig& cfg;
  const Rope& rope;
  const Tensor& positions;  // [N] I64
  const std::vector<SeqChunk>& chunks;
  int64_t layer = 0;  // index into the cache (inference)
  AttnPath path = AttnPath::Auto;
  MoeOptions moe;                    // balance-loss settings (training)
  const PagedStep* paged = nullptr;  // inference over the paged latent cache (mla.h)
  bool fp16_attention = false;  // inference attention with fp16 tensor-core operands (GPU, bf16 products)
};

// h [N, D] updated in place. `saved` (training) keeps what layer_bwd needs; `trace` (optional) gets
// the router's choice of an MoE layer. With `pending` (inference), the FFN residual is deferred so that it
// fuses with the next RMSNorm: on entry *pending [N, D] (when defined) is the previous layer's FFN output
// not yet in h, added before the input norm; on return *pending is this layer's FFN output, not added.
void layer_fwd(Tensor h, const LayerWeights& w, const LayerContext& ctx, LayerSaved* saved = nullptr,
               RouterTrace* trace = nullptr, Tensor* pending = nullptr);

// A decode step over the paged cache (ctx.paged->decode, inference): h [N, D] the residual before this
// layer, updated in place, not including `pending` (the previous layer's FFN output, or undefined), which
// is added inside the input norm's launch; on return `pending` is this layer's FFN output. Within the
// layer the residual ping-pongs through a second buffer (a launch whose blocks all read the residual
// writes the sum elsewhere).
void layer_decode(Tensor h, const LayerWeights& w, const LayerContext& ctx, FfnOut& pending);

// dh: the gradient w.r.t. the layer's output on entry, w.r.t. its input on return. Parameter
// gradients accumulate into g. `grad_scale` scales the balance-loss gradient like the other losses.
// dh_op (optional, in and out): on the way in dh's bf16 operand (or undefined), on the way out the new dh's
// (GPU bf16 training: the residual gradient rounded once for the products that read it, in the pass that
// adds it up).
void layer_bwd(Tensor dh, LayerWeights& g, const LayerWeights& w, const LayerContext& ctx, LayerSaved& s,
               Tensor* dh_op = nullptr);

}  // namespace dseek
