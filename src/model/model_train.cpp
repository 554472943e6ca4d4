// model_train.cpp — the training forward and backward of the whole model (DESIGN.md "Explicit backward
// per module"; spec/model.md §2.1, §4.4 balance loss, §5.1 multi-token prediction): embedding, the
// decoder stack, final norm, LM head with fused cross-entropy, then the MTP modules; the backward is the
// reverse walk, MTP modules first (deepest first), their gradients flowing into the main hidden states.
#include <cstring>
#include <optional>

#include "core/profile.h"
#include "model/model.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace dseek {

namespace {

// Rows [b·T + i + shift] for i < L of each of B sequences (T rows each): [B·L, ...] gathered.
Tensor gather_seq(const Tensor& src, int64_t B, int64_t T, int64_t L, int64_t shift) {
  Shape s = src.shape();
  s[0] = B * L;
  Tensor out = Tensor::empty(s, src.dtype(), src.device());
  for (int64_t b = 0; b < B; ++b) out.slice(b * L, L).copy_from(src.slice(b * T + shift, L));
  return out;
}

int64_t count_targets(const Tensor& t) {  // t on the CPU
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += t.data<int64_t>()[i] >= 0;
  return n;
}

struct Stack {  // positions (on the model's device) and chunks for B sequences of L tokens each
  Tensor positions;
  std::vector<SeqChunk> chunks;
  Stack(int64_t B, int64_t L, Device dev) {
    Tensor pos = Tensor::empty({B * L}, DType::I64);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < L; ++t) pos.data<int64_t>()[b * L + t] = t;
      chunks.push_back({.row0 = b * L, .len = L, .pos0 = 0, .cache = nullptr});
    }
    positions = pos.to(dev);
  }
};

void add_load(std::vector<int64_t>& load, const RouterTrace& r, int64_t E) {
  if (int64_t(r.load.size()) == E) {  // counted from the layer's host-side plan
    load = r.load;
    return;
  }
  load.assign(size_t(E), 0);
  const Tensor idx = r.topk_idx.to(Device::CPU);
  for (int64_t i = 0; i < idx.numel(); ++i) load[size_t(idx.data<int32_t>()[i])]++;
}

struct MtpSaved {
  Tensor ids, targets;             // [B·L] embedding ids (t_{i+k}) and targets (t_{i+k+1})
  Tensor e, e_rstd, prev, p_rstd;  // embedding rows and the previous hidden, with their rstd
  Tensor cat;                      // [B·L, 2D] = [enorm(e) | hnorm(prev)]
  LayerSaved layer;
  Tensor out, out_rstd, outn;  // module output (pre-norm), its shared_head.norm rstd and result
  int64_t count = 0;
};

}  // namespace

TrainResult Model::forward_backward(const Tensor& ids, const Tensor& targets, const TrainOptions& opt,
                                    Weights* grads) const {
  DSEEK_CHECK(ids.ndim() == 2 && ids.dtype() == DType::I64, "forward_backward: ids must be I64 [B, T]");
  DSEEK_CHECK(targets.shape() == ids.shape() && targets.dtype() == DType::I64,
              "forward_backward: targets must be I64 like ids");
  const int64_t B = ids.size(0), T = ids.size(1), N = B * T, D = cfg.hidden_size, E = cfg.n_routed_experts;
  const DType dt = act_dtype();
  const Device dev = device();
  const bool mtp_on = opt.mtp_lambda > 0 && cfg.num_nextn_predict_layers > 0;
  DSEEK_CHECK(!mtp_on || w.has_mtp, "forward_backward: MTP loss asked for but the model has no MTP weights");
  const int64_t depth = mtp_on ? cfg.num_nextn_predict_layers : 0;
  DSEEK_CHECK(T > depth, "forward_backward: sequences of ", T, " tokens are too short for ", depth,
              " MTP depths");
  // flat, tflat: [N] ids and targets on the model's device
  const Tensor flat = ids.view({N}).to(dev), tflat = targets.view({N}).to(dev);
  const Tensor tflat_host = targets.view({N}).to(Device::CPU);  // for counting (no copy when on the CPU)
  // The embedding's ids from the host (its checks and its backward's grouping need no device→host copy)
  const Tensor ids_host = ids.view({N}).to(Device::CPU);
  Stack main(B, T, dev);
  auto context = [&](const Stack& st, int64_t layer, const MoeOptions& mo) {
    return LayerContext{.cfg = cfg,
                        .rope = rope,
                        .positions = st.positions,
                        .chunks = st.chunks,
                        .layer = layer,
                        .path = AttnPath::Naive,
                        .moe = mo};
  };
  const bool train = grads != nullptr;
  TrainResult res;

  // ---- forward: embedding, layers, final norm, LM head + cross-entropy
  Tensor h = Tensor::empty({N, D}, dt, dev);  // h: [N, D]
  {
    prof::Scope scope(prof::kEmbedding);
    ops::embedding_fwd(h, ids_host, w.embed_tokens);
  }
  std::vector<LayerSaved> saved(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const LayerWeights& L = w.layers[size_t(l)];
    saved[size_t(l)].recompute = opt.recompute;
    RouterTrace rt;
    layer_fwd(h, L, context(main, l, {.balance_alpha = opt.balance_alpha, .seq_len = T}),
              train ? &saved[size_t(l)] : nullptr, L.is_moe ? &rt : nullptr);
    if (L.is_moe) {
      res.expert_load.emplace_back();
      add_load(res.expert_load.back(), rt, E);
      res.balance_loss += rt.balance_loss;
    }
  }
  std::optional<prof::Scope> head_scope(std::in_place, prof::kLmHead);
  Tensor h_final = h, rstd = Tensor::empty({N}, dt, dev), hn = Tensor::empty({N, D}, dt, dev);
  ops::rmsnorm_fwd(hn, rstd, h_final, w.norm, cfg.rms_norm_eps);
  const Tensor& head = lm_head();
  res.tokens = count_targets(tflat_host);
  DSEEK_CHECK(res.tokens > 0, "forward_backward: no targets");
  Tensor dhn = train ? Tensor::empty({N, D}, dt, dev) : Tensor();
  Tensor dhead = train ? (cfg.tie_word_embeddings ? grads->embed_tokens : grads->lm_head) : Tensor();
  auto ce = ops::lm_head_cross_entropy(dhn, dhead, hn, head, tflat, opt.grad_scale / double(res.tokens));
  res.main_loss = ce.loss_sum / double(ce.count);
  head_scope.reset();

  // ---- MTP modules: depth k sees positions i < T − k, combining h^{k−1}_i with Emb(t_{i+k}).
  std::vector<MtpSaved> ms(static_cast<size_t>(depth));
  std::vector<Stack> stacks;
  for (int64_t k = 1; k <= depth; ++k) stacks.emplace_back(B, T - k, dev);
  for (int64_t k = 1; k <= depth; ++k) {
    const MtpWeights& M = w.mtp[size_t(k - 1)];
    MtpSaved& s = ms[size_t(k - 1)];
    const int64_t L = T - k, Nk = B * L;
    s.ids = gather_seq(flat, B, T, L, k);
    s.targets = gather_seq(tflat, B, T, L, k);
    s.prev = k == 1 ? gather_seq(hn, B, T, L, 0) : gather_seq(ms[size_t(k - 2)].out, B, L + 1, L, 0);
    s.e = Tensor::empty({Nk, D}, dt, dev);
    ops::embedding_fwd(s.e, s.ids, w.embed_tokens);
    Tensor en = Tensor::empty({Nk, D}, dt, dev), pn = Tensor::empty({Nk, D}, dt, dev);
    s.e_rstd = Tensor::empty({Nk}, dt, dev);
    s.p_rstd = Tensor::empty({Nk}, dt, dev);
    ops::rmsnorm_fwd(en, s.e_rstd, s.e, M.enorm, cfg.rms_norm_eps);
    ops::rmsnorm_fwd(pn, s.p_rstd, s.prev, M.hnorm, cfg.rms_norm_eps);
    s.cat = Tensor::empty({Nk, 2 * D}, dt, dev);  // cat: [Nk, 2D], embedding first (spec §5.3)
    ops::copy_cols(s.cat, 0, en, 0, D);
    ops::copy_cols(s.cat, D, pn, 0, D);
    Tensor x = Tensor::empty({Nk, D}, dt, dev);
    ops::linear(x, s.cat, M.eh_proj);
    s.layer.recompute = opt.recompute;
    RouterTrace rt;
    layer_fwd(x, M.layer,
              context(stacks[size_t(k - 1)], 0, {.balance_alpha = opt.balance_alpha, .seq_len = L}),
              train ? &s.layer : nullptr, M.layer.is_moe ? &rt : nullptr);
    if (M.layer.is_moe) {
      res.expert_load.emplace_back();
      add_load(res.expert_load.back(), rt, E);
      res.balance_loss += rt.balance_loss;
    }
    s.out = x;
    s.out_rstd = Tensor::empty({Nk}, dt, dev);
    s.outn = Tensor::empty({Nk, D}, dt, dev);
    ops::rmsnorm_fwd(s.outn, s.out_rstd, s.out, M.shared_head_norm, cfg.rms_norm_eps);
    s.count = count_targets(gather_seq(tflat_host, B, T, L, k));
    DSEEK_CHECK(s.count > 0, "forward_backward: no targets for MTP depth ", k);
    auto r = ops::lm_head_cross_entropy(Tensor(), Tensor(), s.outn, head, s.targets, 1.0);
    res.mtp_losses.push_back(r.loss_sum / double(r.count));
  }
  res.loss = res.main_loss + res.balance_loss;
  for (double l : res.mtp_losses) res.loss += opt.mtp_lambda / double(depth) * l;
  if (!train) return res;

  // ---- backward: MTP modules (deepest first), then the main stack.
  const MoeOptions bal{.balance_alpha = opt.balance_alpha * opt.grad_scale, .seq_len = 0};
  Tensor dnext;  // gradient w.r.t. the output of depth k (from depth k + 1's hnorm input)
  for (int64_t k = depth; k >= 1; --k) {
    const MtpWeights& M = w.mtp[size_t(k - 1)];
    MtpWeights& G = grads->mtp[size_t(k - 1)];
    MtpSaved& s = ms[size_t(k - 1)];
    const int64_t L = T - k, Nk = B * L;
    Tensor doutn = Tensor::empty({Nk, D}, dt, dev), dout = Tensor::empty({Nk, D}, dt, dev);
    ops::lm_head_cross_entropy(doutn, dhead, s.outn, head, s.targets,
                               opt.grad_scale * opt.mtp_lambda / double(depth) / double(s.count));
    ops::rmsnorm_bwd(dout, G.shared_head_norm, doutn, s.out, M.shared_head_norm, s.out_rstd);
    if (dnext.defined()) ops::add_(dout, dnext);
    MoeOptions mo = bal;
    mo.seq_len = L;
    layer_bwd(dout, G.layer, M.layer, context(stacks[size_t(k - 1)], 0, mo), s.layer);
    Tensor dcat = Tensor::empty({Nk, 2 * D}, dt, dev);
    ops::linear_bwd(dcat, G.eh_proj, dout, s.cat, M.eh_proj);
    Tensor den = Tensor::empty({Nk, D}, dt, dev), dpn = Tensor::empty({Nk, D}, dt, dev),
           tmp = Tensor::empty({Nk, D}, dt, dev);
    ops::copy_cols(den, 0, dcat, 0, D);
    ops::copy_cols(dpn, 0, dcat, D, D);
    ops::rmsnorm_bwd(tmp, G.enorm, den, s.e, M.enorm, s.e_rstd);
    ops::embedding_bwd(grads->embed_tokens, s.ids, tmp);
    ops::rmsnorm_bwd(tmp, G.hnorm, dpn, s.prev, M.hnorm, s.p_rstd);
    // tmp: ∂/∂prev rows; scatter back into the previous level's rows i < L of each sequence.
    const int64_t Tp = k == 1 ? T : L + 1;
    Tensor dprev = k == 1 ? dhn : Tensor::zeros({B * Tp, D}, dt, dev);
    for (int64_t b = 0; b < B; ++b) ops::add_(dprev.slice(b * Tp, L), tmp.slice(b * L, L));
    if (k > 1) dnext = dprev;
  }
  Tensor dh = Tensor::empty({N, D}, dt, dev);
  {
    prof::Scope scope(prof::kLmHead);
    ops::rmsnorm_bwd(dh, grads->norm, dhn, h_final, w.norm, rstd);
  }
  Tensor dh_op;  // dh's bf16 operand, handed from layer to layer (GPU bf16 training)
  for (int64_t l = cfg.num_hidden_layers - 1; l >= 0; --l) {
    MoeOptions mo = bal;
    mo.seq_len = T;
    layer_bwd(dh, grads->layers[size_t(l)], w.layers[size_t(l)], context(main, l, mo), saved[size_t(l)],
              &dh_op);
  }
  {
    prof::Scope scope(prof::kEmbedding);
    ops::embedding_bwd(grads->embed_tokens, ids_host, dh);
  }
  return res;
}

}  // namespace dseek
