// layer.cpp — decoder layer forward/backward (spec/model.md §2.1: pre-norm residual blocks); each residual
// add is fused with the RMSNorm that follows it.
#include "model/layer.h"

#include "core/profile.h"
#include "ops/elementwise.h"
#include "ops/rmsnorm.h"

namespace dseek {

void layer_fwd(Tensor h, const LayerWeights& w, const LayerContext& ctx, LayerSaved* s, RouterTrace* trace,
               Tensor* pending) {
  prof::Scope scope(prof::kLayerFwd);
  const ModelConfig& c = ctx.cfg;
  const int64_t N = h.size(0), D = h.size(1);
  const DType dt = h.dtype();
  const Device dev = h.device();
  Tensor xn = Tensor::empty({N, D}, dt, dev), y = Tensor::empty({N, D}, dt, dev);  // xn, y: [N, D]
  Tensor rstd = s ? Tensor::empty({N}, dt, dev) : Tensor();
  if (s) {  // h_in: [N, D] a copy of the input (h is updated in place)
    s->h_in = Tensor::empty({N, D}, dt, dev);
    ops::copy_cols(s->h_in, 0, h, 0, D);
  }
  if (pending && pending->defined()) {  // the previous layer's FFN output joins the residual here
    DSEEK_CHECK(!s, "layer_fwd: a training forward adds every residual in its own layer");
    ops::add_rmsnorm_fwd(h, xn, rstd, *pending, w.input_layernorm, c.rms_norm_eps);
  } else {
    ops::rmsnorm_fwd(xn, rstd, h, w.input_layernorm, c.rms_norm_eps);
  }
  if (s) {
    s->rstd1 = rstd;
    s->attn.recompute = s->recompute;
    s->moe.recompute = s->recompute;
  }
  {
    prof::Scope sub(prof::kMlaFwd);
    mla_fwd(y, xn, w.attn, c, ctx.rope, ctx.positions, ctx.chunks, ctx.layer, ctx.path,
            s ? &s->attn : nullptr, ctx.paged, ctx.fp16_attention);
  }
  if (s) {
    rstd = Tensor::empty({N}, dt, dev);
    s->rstd2 = rstd;
  }
  Tensor xn2 = s ? Tensor::empty({N, D}, dt, dev) : xn;  // xn2: [N, D]
  ops::add_rmsnorm_fwd(h, xn2, rstd, y, w.post_attention_layernorm, c.rms_norm_eps);
  if (s) {
    s->h_mid = Tensor::empty({N, D}, dt, dev);  // h_mid: [N, D] after the attention residual
    ops::copy_cols(s->h_mid, 0, h, 0, D);
  }
  if (w.is_moe) {
    prof::Scope sub(prof::kMoeFwd);
    moe_fwd(y, xn2, w.moe, c, trace, s ? &s->moe : nullptr, ctx.moe);
  } else {
    prof::Scope sub(prof::kMlpFwd);
    mlp_fwd(y, xn2, w.mlp, s ? &s->mlp : nullptr);
  }
  if (pending) {
    *pending = y;  // added by the next layer's input norm (or the final norm)
  } else {
    ops::add_(h, y);
  }
  if (s && s->recompute) {  // the normed inputs are rebuilt in the backward
    s->attn.x = Tensor();
    s->mlp.x = Tensor();
    s->moe.x = Tensor();
    s->moe.shared.x = Tensor();
  }
}

void layer_decode(Tensor h, const LayerWeights& w, const LayerContext& ctx, FfnOut& pending) {
  prof::Scope scope(prof::kLayerFwd);
  const ModelConfig& c = ctx.cfg;
  DSEEK_CHECK(ctx.paged && ctx.paged->decode, "layer_decode: a decode step over the paged cache");
  const int64_t N = h.size(0), D = h.size(1);
  const DType dt = h.dtype();
  const Device dev = h.device();
  // h2: [N, D] h + pending (the input norm's launch writes it); y: [N, D] the attention output; xn: [N, D]
  // the FFN's input (the post-attention norm's launch writes it, and h = h2 + y).
  Tensor h2 = Tensor::empty({N, D}, dt, dev), y = Tensor::empty({N, D}, dt, dev),
         xn = Tensor::empty({N, D}, dt, dev);
  const ops::NormedInput in1 = residual_norm(h, pending, w.input_layernorm, c.rms_norm_eps, h2);
  {
    prof::Scope sub(prof::kMlaFwd);
    mla_decode(y, in1, w.attn, c, ctx.rope, ctx.positions, *ctx.paged, ctx.layer);
  }
  const ops::NormedInput in2 = residual_norm(h2, {.y = y, .w = Tensor(), .K = 0, .KS = 1},
                                             w.post_attention_layernorm, c.rms_norm_eps, h, xn);
  if (w.is_moe) {
    prof::Scope sub(prof::kMoeFwd);
    pending = moe_decode(in2, w.moe, c);
  } else {
    prof::Scope sub(prof::kMlpFwd);
    ops::normed_input(xn, in2);
    Tensor f = Tensor::empty({N, D}, dt, dev);  // f: [N, D] the MLP output
    mlp_fwd(f, xn, w.mlp);
    pending = {.y = f, .w = Tensor(), .K = 0, .KS = 1};
  }
}

void layer_bwd(Tensor dh, LayerWeights& g, const LayerWeights& w, const LayerContext& ctx, LayerSaved& s,
               Tensor* dh_op) {
  prof::Scope scope(prof::kLayerBwd);
  const ModelConfig& c = ctx.cfg;
  const int64_t N = dh.size(0), D = dh.size(1);
  const DType dt = dh.dtype();
  const Device dev = dh.device();
  if (s.recompute) {
    Tensor xn1 = Tensor::empty({N, D}, dt, dev), xn2 = Tensor::empty({N, D}, dt, dev);
    ops::rmsnorm_fwd(xn1, Tensor(), s.h_in, w.input_layernorm, c.rms_norm_eps);
    ops::rmsnorm_fwd(xn2, Tensor(), s.h_mid, w.post_attention_layernorm, c.rms_norm_eps);
    s.attn.x = xn1;
    if (w.is_moe) {
      s.moe.x = xn2;
      s.moe.shared.x = xn2;
    } else {
      s.mlp.x = xn2;
    }
  }
  Tensor dxn = Tensor::empty({N, D}, dt, dev);
  // On the GPU with bf16 products the residual gradient is rounded to bf16 where it is added up (for
  // o_proj's and the down projections' backward), not cast again by each product.
  const bool ops_bf16 = dev == Device::CUDA && dt == DType::F32 && w.attn.o_proj.dtype() == DType::BF16;
  const Tensor in_op = dh_op ? *dh_op : Tensor();
  // h_out = h_mid + FFN(rms2(h_mid))
  if (w.is_moe) {
    prof::Scope sub(prof::kMoeBwd);
    moe_bwd(dxn, g.moe, dh, w.moe, c, s.moe, ctx.moe, in_op);
  } else {
    prof::Scope sub(prof::kMlpBwd);
    mlp_bwd(dxn, g.mlp, dh, w.mlp, s.mlp, in_op);
  }
  Tensor mid_op = ops_bf16 ? Tensor::empty({N, D}, DType::BF16, dev) : Tensor();  // mid_op: [N, D]
  // dh is now ∂/∂h_mid
  ops::rmsnorm_bwd_add(dh, mid_op, g.post_attention_layernorm, dxn, s.h_mid, w.post_attention_layernorm,
                       s.rstd2);
  // h_mid = h_in + MLA(rms1(h_in))
  {
    prof::Scope sub(prof::kMlaBwd);
    mla_bwd(dxn, g.attn, dh, w.attn, c, ctx.rope, ctx.positions, ctx.chunks, s.attn, mid_op);
  }
  Tensor out_op = ops_bf16 && dh_op ? Tensor::empty({N, D}, DType::BF16, dev) : Tensor();  // out_op: [N, D]
  ops::rmsnorm_bwd_add(dh, out_op, g.input_layernorm, dxn, s.h_in, w.input_layernorm, s.rstd1);
  if (dh_op) *dh_op = out_op;
}

}  // namespace dseek
