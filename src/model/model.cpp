// model.cpp — the transformer forward (spec/model.md §2.1): embed, L decoder layers, norm, head.
#include "model/model.h"

#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace dseek {

Model Model::load(const std::string& dir, const LoadOptions& opt) {
  ModelConfig cfg = ModelConfig::load(dir);
  io::TensorSource src = io::TensorSource::open_dir(dir);
  Weights w = load_weights(src, cfg, opt);
  return from_weights(std::move(cfg), std::move(w));
}

Model Model::from_weights(ModelConfig cfg, Weights w) {
  Model m;
  m.rope = Rope::from(cfg);
  m.cfg = std::move(cfg);
  m.w = std::move(w);
  return m;
}

void Model::to(Device dev, DType dtype) {
  for (auto& r : param_table(w, cfg, w.has_mtp)) {
    if (!r.tensor->defined()) continue;
    if (r.tensor->block_scale()) {  // fp8 with block scales: stays fp8, dequantized on the fly
      *r.tensor = r.tensor->to(dev);
      continue;
    }
    const bool big = r.kind == ParamKind::Matrix || r.kind == ParamKind::Embedding;
    *r.tensor = r.tensor->to(big ? dtype : DType::F32).to(dev);
  }
  rope.inv_freq = rope.inv_freq.to(dev);
}

Tensor Model::run(const Tensor& ids, const Tensor& positions, const std::vector<SeqChunk>& chunks,
                  AttnPath path, ForwardTrace* trace, const PagedStep* paged) const {
  const int64_t N = ids.size(0), D = cfg.hidden_size;
  const DType dt = act_dtype();
  const Device dev = device();
  Tensor h = Tensor::empty({N, D}, dt, dev);  // h: [N, D] the residual stream
  ops::embedding_fwd(h, ids, w.embed_tokens);
  if (trace) trace->hidden.push_back(h.clone());
  Tensor xn = Tensor::empty({N, D}, dt, dev);
  auto context = [&](int64_t l) {
    return LayerContext{.cfg = cfg,
                        .rope = rope,
                        .positions = positions,
                        .chunks = chunks,
                        .layer = l,
                        .path = path,
                        .moe = {},
                        .paged = paged,
                        .fp16_attention = dev == Device::CUDA && w.embed_tokens.dtype() == DType::BF16};
  };
  if (paged && paged->decode && !trace) {  // a decode step: every residual norm rides in a product's launch
    FfnOut pending;
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      layer_decode(h, w.layers[size_t(l)], context(l), pending);
    ops::normed_input(xn, residual_norm(h, pending, w.norm, cfg.rms_norm_eps));
    return xn;
  }
  // pending: [N, D] the last layer's FFN output, added to h inside the next RMSNorm (not with a trace,
  // which records h after every layer).
  Tensor pending;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const LayerWeights& L = w.layers[size_t(l)];
    RouterTrace rt;
    layer_fwd(h, L, context(l), nullptr, trace && L.is_moe ? &rt : nullptr, trace ? nullptr : &pending);
    if (trace && L.is_moe) trace->routers.push_back(rt);
    if (trace && l + 1 < cfg.num_hidden_layers) trace->hidden.push_back(h.clone());
  }
  if (pending.defined()) {
    ops::add_rmsnorm_fwd(h, xn, Tensor(), pending, w.norm, cfg.rms_norm_eps);
  } else {
    ops::rmsnorm_fwd(xn, Tensor(), h, w.norm, cfg.rms_norm_eps);
  }
  if (trace) trace->hidden.push_back(xn.clone());
  return xn;
}

Tensor Model::forward(const Tensor& ids, ForwardTrace* trace) const {
  DSEEK_CHECK(ids.ndim() == 2 && ids.dtype() == DType::I64, "forward: input_ids must be I64 [B, T], got ",
              ids.str());
  const int64_t B = ids.size(0), T = ids.size(1), N = B * T;
  Tensor flat = ids.view({N});
  Tensor pos = Tensor::empty({N}, DType::I64);
  std::vector<SeqChunk> chunks;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) pos.data<int64_t>()[b * T + t] = t;
    chunks.push_back({.row0 = b * T, .len = T, .pos0 = 0, .cache = nullptr});
  }
  Tensor hn = run(flat.to(device()), pos.to(device()), chunks, AttnPath::Naive, trace);
  Tensor logits = Tensor::empty({N, cfg.vocab_size}, hn.dtype(), device());
  ops::linear(logits, hn, lm_head());
  return logits.to(DType::F32).to(Device::CPU).view({B, T, cfg.vocab_size});
}

Tensor Model::forward_cached(const std::vector<int64_t>& tokens, LatentCache& cache, bool last_only,
                             AttnPath path) const {
  const int64_t T = int64_t(tokens.size()), p0 = cache.length();
  DSEEK_CHECK(T > 0, "forward_cached: no tokens");
  Tensor ids = Tensor::empty({T}, DType::I64), pos = Tensor::empty({T}, DType::I64);
  for (int64_t t = 0; t < T; ++t) {
    ids.data<int64_t>()[t] = tokens[size_t(t)];
    pos.data<int64_t>()[t] = p0 + t;
  }
  Tensor hn = run(ids.to(device()), pos.to(device()), {{.row0 = 0, .len = T, .pos0 = p0, .cache = &cache}},
                  path, nullptr);
  cache.advance(T);
  Tensor rows = last_only ? hn.slice(T - 1, 1) : hn;
  Tensor logits = Tensor::empty({rows.size(0), cfg.vocab_size}, rows.dtype(), device());
  ops::linear(logits, rows, lm_head());
  return logits.to(DType::F32).to(Device::CPU);
}

Tensor Model::forward_cached_batch(const std::vector<std::vector<int64_t>>& seqs,
                                   const std::vector<LatentCache*>& caches, AttnPath path) const {
  const int64_t B = int64_t(seqs.size());
  DSEEK_CHECK(B > 0 && caches.size() == seqs.size(), "forward_cached_batch: ", seqs.size(), " sequences and ",
              caches.size(), " caches");
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) {
    DSEEK_CHECK(!seqs[size_t(b)].empty(), "forward_cached_batch: sequence ", b, " has no tokens");
    DSEEK_CHECK(caches[size_t(b)] != nullptr, "forward_cached_batch: sequence ", b, " has no cache");
    for (int64_t o = 0; o < b; ++o)
      DSEEK_CHECK(caches[size_t(o)] != caches[size_t(b)], "forward_cached_batch: sequences ", o, " and ", b,
                  " share one cache");
    N += int64_t(seqs[size_t(b)].size());
  }
  Tensor ids = Tensor::empty({N}, DType::I64), pos = Tensor::empty({N}, DType::I64);
  std::vector<SeqChunk> chunks;
  std::vector<int64_t> last;  // row of each sequence's last token
  int64_t r = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& sq = seqs[size_t(b)];
    LatentCache* c = caches[size_t(b)];
    const int64_t p0 = c->length(), T = int64_t(sq.size());
    for (int64_t t = 0; t < T; ++t) {
      DSEEK_CHECK(sq[size_t(t)] >= 0 && sq[size_t(t)] < cfg.vocab_size, "forward_cached_batch: token id ",
                  sq[size_t(t)], " is outside the vocabulary (", cfg.vocab_size, ")");
      ids.data<int64_t>()[r + t] = sq[size_t(t)];
      pos.data<int64_t>()[r + t] = p0 + t;
    }
    chunks.push_back({.row0 = r, .len = T, .pos0 = p0, .cache = c});
    r += T;
    last.push_back(r - 1);
  }
  Tensor hn = run(ids.to(device()), pos.to(device()), chunks, path, nullptr);
  for (int64_t b = 0; b < B; ++b) caches[size_t(b)]->advance(chunks[size_t(b)].len);
  // rows: [B, D] the last hidden state of each sequence
  Tensor rows = Tensor::empty({B, cfg.hidden_size}, hn.dtype(), device());
  for (int64_t b = 0; b < B; ++b) rows.slice(b, 1).copy_from(hn.slice(last[size_t(b)], 1));
  Tensor logits = Tensor::empty({B, cfg.vocab_size}, rows.dtype(), device());
  ops::linear(logits, rows, lm_head());
  return logits.to(DType::F32).to(Device::CPU);
}

}  // namespace dseek
