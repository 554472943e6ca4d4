// mla.cpp — MLA forward (naive and absorbed) and backward (spec/model.md §2.2 projections and splits,
// §2.4 RoPE, §2.5 the absorbed form and what the cache holds).
#include "model/mla.h"

#include <algorithm>

#include "core/profile.h"
#include "ops/attention.h"
#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/flash_attention.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace dseek {

Rope Rope::from(const ModelConfig& cfg) {
  Rope r;
  std::vector<float> f = cfg.rope_inv_freq();
  r.inv_freq = Tensor::empty({int64_t(f.size())}, DType::F32);
  std::copy(f.begin(), f.end(), r.inv_freq.data<float>());
  r.attention_factor = cfg.rope_attention_factor();
  return r;
}

namespace {

struct Dims {
  int64_t H, dn, R, dq, dv, C, D;
  explicit Dims(const ModelConfig& c)
      : H(c.num_attention_heads),
        dn(c.qk_nope_head_dim),
        R(c.qk_rope_head_dim),
        dq(c.qk_head_dim()),
        dv(c.v_head_dim),
        C(c.kv_lora_rank),
        D(c.hidden_size) {}
};

// The projections shared by every path: roped queries q [N, H·dq], and the latent rows
// lat [N, C + R] = [rmsnorm(c_kv) | rope(k_pe)]. The pre-norm latents and their rstd go to `s`.
// dt: the activation dtype (x may be the products' bf16 operand already). With `s`, x and the normed q
// latent are kept as the products took them.
void project(Tensor& q, Tensor& lat, MlaSaved* s, const Tensor& x, DType dt, const MlaWeights& w,
             const ModelConfig& c, const Rope& rope, const Tensor& positions) {
  const Dims d(c);
  const int64_t N = x.size(0);
  const Device dev = x.device();
  q = Tensor::empty({N, d.H * d.dq}, dt, dev);  // q: [N, H, dn + R]
  // The products of x: cast once on the GPU (bf16 weights), not once per product.
  const Tensor xa = c.q_lora_rank > 0 ? ops::product_input(x, {&w.q_a_proj, &w.kv_a_proj_with_mqa})
                                      : ops::product_input(x, {&w.q_proj, &w.kv_a_proj_with_mqa});
  if (c.q_lora_rank > 0) {
    Tensor cq = Tensor::empty({N, c.q_lora_rank}, dt, dev), cqn = Tensor::empty({N, c.q_lora_rank}, dt, dev);
    Tensor rstd = s ? Tensor::empty({N}, dt, dev) : Tensor();
    ops::linear(cq, xa, w.q_a_proj);
    ops::rmsnorm_fwd(cqn, rstd, cq, w.q_a_layernorm, c.rms_norm_eps);
    const Tensor cqa = ops::product_input(cqn, {&w.q_b_proj});
    ops::linear(q, cqa, w.q_b_proj);
    if (s) {
      s->cq = cq;
      s->cq_rstd = rstd;
      s->cqn = cqa;
    }
  } else {
    ops::linear(q, xa, w.q_proj);
  }
  lat = Tensor::empty({N, d.C + d.R}, dt, dev);  // lat: [N, C + R] = [c_kv | k_pe]
  ops::linear(lat, xa, w.kv_a_proj_with_mqa);
  Tensor ckv = Tensor::empty({N, d.C}, dt, dev),
         ckvn = Tensor::empty({N, d.C}, dt, dev);  // ckv, ckvn: [N, C]
  Tensor rstd = s ? Tensor::empty({N}, dt, dev) : Tensor();
  ops::copy_cols(ckv, 0, lat, 0, d.C);
  ops::rmsnorm_fwd(ckvn, rstd, ckv, w.kv_a_layernorm, c.rms_norm_eps);
  ops::copy_cols(lat, 0, ckvn, 0, d.C);
  ops::rope_fwd(lat.view({N, 1, d.C + d.R}), positions, rope.inv_freq, d.C, rope.attention_factor);
  ops::rope_fwd(q.view({N, d.H, d.dq}), positions, rope.inv_freq, d.dn, rope.attention_factor);
  if (s) {
    s->x = xa;
    s->ckv = ckv;
    s->ckv_rstd = rstd;
  }
}

// Per-head keys/values from latent rows src [S, C + R]: k [S, H, dn + R] = [k_nope_h | k_pe] (k_pe shared
// by the heads), v [S, H, dv].
void decompress(Tensor& k, Tensor& v, const Tensor& src, const MlaWeights& w, const ModelConfig& c) {
  const Dims d(c);
  const int64_t S = src.size(0);
  const DType dt = src.dtype();
  const Device dev = src.device();
  Tensor ckv = Tensor::empty({S, d.C}, dt, dev);  // ckv: [S, C] the normed latents
  ops::copy_cols(ckv, 0, src, 0, d.C);
  Tensor kv =
      Tensor::empty({S, d.H * (d.dn + d.dv)}, dt, dev);  // kv: [S, H, dn + dv] = per head [k_nope | v]
  ops::linear(kv, ckv, w.kv_b_proj);
  k = Tensor::empty({S, d.H * d.dq}, dt, dev);
  v = Tensor::empty({S, d.H * d.dv}, dt, dev);
  // per head h: k[:, h, :dn] = kv[:, h, :dn], k[:, h, dn:] = k_pe = src[:, C:], v[:, h] = kv[:, h, dn:]
  std::vector<ops::ColBlock> split;
  for (int64_t h = 0; h < d.H; ++h) {
    split.push_back({k, h * d.dq, kv, h * (d.dn + d.dv), d.dn});
    split.push_back({k, h * d.dq + d.dn, src, d.C, d.R});
    split.push_back({v, h * d.dv, kv, h * (d.dn + d.dv) + d.dn, d.dv});
  }
  ops::copy_cols_many(split);
}

// Sequences shorter than this take the exact attention kernel even when fp16 operands are allowed.
constexpr int64_t kTensorCoreMinKeys = 256;

// The flash kernel's inputs from latent rows src [S, C + R]: kv [S, H, dn + dv] = kv_b_proj(c_kv) (per
// head [k_nope | v]) and the rope keys kpe [S, R]; fp16 when the attention takes fp16 operands on the GPU
// (half the bytes the kernel streams, copied straight into shared memory), bf16 for the training kernels
// (`bf16`: src f32 and kv_b_proj bf16, on the GPU).
void flash_inputs(Tensor& kv, Tensor& kpe, const Tensor& src, const MlaWeights& w, const ModelConfig& c,
                  bool fp16, bool bf16 = false, Tensor* ckvn_op = nullptr) {
  const Dims d(c);
  const int64_t S = src.size(0);
  const Device dev = src.device();
  const bool half = fp16 && dev == Device::CUDA;
  Tensor ckvn = Tensor::empty({S, d.C}, src.dtype(), dev);  // ckvn: [S, C] the normed latents
  ops::copy_cols(ckvn, 0, src, 0, d.C);
  Tensor pe = Tensor::empty({S, d.R}, src.dtype(), dev);  // pe: [S, R] the roped k_pe columns
  ops::copy_cols(pe, 0, src, d.C, d.R);
  if (bf16) {  // the product writes bf16 straight away (f32 accumulation); ckvn_op: its operand
    kpe = pe.to(DType::BF16);
    kv = Tensor::empty({S, d.H * (d.dn + d.dv)}, DType::BF16, dev);
    const Tensor op = ckvn.to(DType::BF16);
    ops::linear(kv, op, w.kv_b_proj);
    if (ckvn_op) *ckvn_op = op;
    return;
  }
  kpe = half ? pe.to(DType::F16) : pe;
  if (half && src.dtype() == DType::F32 && w.kv_b_proj.dtype() == DType::BF16 && !w.kv_b_proj.block_scale()) {
    // The product itself in fp16 (bf16 weights convert exactly within fp16's range; the normed latents
    // keep 3 more bits than in bf16): kv comes out in the dtype the kernel reads, with no f32 round trip.
    kv = Tensor::empty({S, d.H * (d.dn + d.dv)}, DType::F16, dev);
    ops::linear(kv, ckvn.to(DType::F16), w.kv_b_proj.to(DType::F16));
    return;
  }
  kv = Tensor::empty({S, d.H * (d.dn + d.dv)}, src.dtype(), dev);
  ops::linear(kv, ckvn, w.kv_b_proj);
  if (half) kv = kv.to(DType::F16);
}

// Absorbed attention for one chunk against cache rows [0, pos0 + len): q_lat_h = q_nope_h · W_UK[h],
// scores over [c_kv | k_pe], o_h = (P · c_kv) · W_UV[h]ᵀ.
void attend_absorbed(Tensor oc, const Tensor& qc, const Tensor& rows, const MlaWeights& w,
                     const ModelConfig& c, int64_t pos0) {
  const Dims d(c);
  const int64_t W = d.C + d.R, len = qc.size(0);
  const DType dt = qc.dtype();
  const Device dev = qc.device();
  Tensor qn = Tensor::empty({len, d.dn}, dt, dev);     // qn: [len, dn] one head's q_nope
  Tensor ql = Tensor::empty({len, d.C}, dt, dev);      // ql: [len, C] its absorbed query
  Tensor qa = Tensor::empty({len, d.H * W}, dt, dev);  // qa: [len, H, C + R] = [q_lat | q_pe]
  for (int64_t h = 0; h < d.H; ++h) {
    ops::copy_cols(qn, 0, qc, h * d.dq, d.dn);
    ops::matmul_nn(ql, qn, w.kv_b_proj.slice(h * (d.dn + d.dv), d.dn));  // W_UK[h]: [dn, C]
    ops::copy_cols(qa, h * W, ql, 0, d.C);
    ops::copy_cols(qa, h * W + d.C, qc, h * d.dq + d.dn, d.R);
  }
  Tensor olat = Tensor::empty({len, d.H * d.C}, dt, dev);  // olat: [len, H, C]
  ops::mla_absorbed_fwd(olat.view({len, d.H, d.C}), qa.view({len, d.H, W}), rows.slice(0, pos0 + len),
                        c.softmax_scale(), pos0);
  Tensor oh = Tensor::empty({len, d.dv}, dt, dev);  // oh: [len, dv] one head's output
  for (int64_t h = 0; h < d.H; ++h) {
    ops::copy_cols(ql, 0, olat, h * d.C, d.C);
    ops::linear(oh, ql, w.kv_b_proj.slice(h * (d.dn + d.dv) + d.dn, d.dv));  // W_UV[h]: [dv, C]
    ops::copy_cols(oc, h * d.dv, oh, 0, d.dv);
  }
}

// A decode step over the paged cache after its first product (q_a / q and kv_a of the normed input), every
// head in one launch per stage: the latent norms with the k_pe rope, the cache write and q_b in one op
// (mla_decode_latent_q), then the absorbed attention with the q rope applied inside the query absorption,
// the output absorption inside the attention's split combine, and o_proj: qa [N, H, C + R] the absorbed
// queries, o [N, H·dv]. first: cq [N, q_lora_rank] (q_lora) or q [N, H·(dn + R)]; kv: [N, C + R].
void decode_after_first(Tensor out, const Tensor& first, const Tensor& kv, const MlaWeights& w,
                        const ModelConfig& c, const Rope& rope, const Tensor& positions, const PagedStep& p,
                        int64_t layer) {
  const Dims d(c);
  const int64_t N = kv.size(0);
  const DType dt = kv.dtype();
  const Device dev = kv.device();
  const bool lora = c.q_lora_rank > 0;
  const ops::LatentStep lat{.cqn = Tensor(),
                            .pool = p.cache->pool(layer),
                            .cq = lora ? first : Tensor(),
                            .kv = kv,
                            .q_norm = lora ? w.q_a_layernorm : Tensor(),
                            .kv_norm = w.kv_a_layernorm,
                            .positions = positions,
                            .inv_freq = rope.inv_freq,
                            .slots = p.slots,
                            .attention_factor = rope.attention_factor,
                            .eps = c.rms_norm_eps};
  Tensor q = first;  // q: [N, H, dn + R], its R part not yet roped
  if (lora) {
    q = Tensor::empty({N, d.H * d.dq}, dt, dev);
    ops::mla_decode_latent_q(q, lat, w.q_b_proj);
  } else {
    ops::mla_decode_latent(lat);
  }
  Tensor qa = Tensor::empty({N, d.H, d.C + d.R}, dt, dev);  // qa: [N, H, C + R]
  const ops::RopeAt at{
      .positions = positions, .inv_freq = rope.inv_freq, .attention_factor = rope.attention_factor};
  ops::mla_absorb_q(qa, q.view({N, d.H, d.dq}), w.kv_b_proj, d.dn, d.dv, &at);
  Tensor o = Tensor::empty({N, d.H * d.dv}, dt, dev);  // o: [N, H, dv]
  ops::mla_decode_paged_o(o.view({N, d.H, d.dv}), qa, p.cache->pool(layer), p.block_table, p.seq_lens,
                          c.softmax_scale(), p.max_len, w.kv_b_proj, d.dn, d.dv);
  ops::linear(out, o, w.o_proj);
}

// The decode step from an already normed input x [N, D].
void decode_paged(Tensor out, const Tensor& x, const MlaWeights& w, const ModelConfig& c, const Rope& rope,
                  const Tensor& positions, const PagedStep& p, int64_t layer) {
  const Dims d(c);
  const int64_t N = x.size(0);
  const bool lora = c.q_lora_rank > 0;
  // first: [N, q_lora_rank] cq, or [N, H·(dn + R)] q; kv: [N, C + R] = [c_kv | k_pe] as projected
  Tensor first = Tensor::empty({N, lora ? c.q_lora_rank : d.H * d.dq}, x.dtype(), x.device()),
         kv = Tensor::empty({N, d.C + d.R}, x.dtype(), x.device());
  ops::linear_pair(first, kv, x, lora ? w.q_a_proj : w.q_proj, w.kv_a_proj_with_mqa);
  decode_after_first(out, first, kv, w, c, rope, positions, p, layer);
}

}  // namespace

void mla_fwd(Tensor out, const Tensor& x, const MlaWeights& w, const ModelConfig& c, const Rope& rope,
             const Tensor& positions, const std::vector<SeqChunk>& chunks, int64_t layer, AttnPath path,
             MlaSaved* saved, const PagedStep* paged, bool fp16_attention) {
  const Dims d(c);
  const int64_t N = x.size(0);
  const DType dt = x.dtype();
  const Device dev = x.device();
  DSEEK_CHECK(!paged || !saved, "mla_fwd: a training forward does not use the paged cache");
  if (paged && paged->decode) return decode_paged(out, x, w, c, rope, positions, *paged, layer);
  Tensor q, lat;
  project(q, lat, saved, x, dt, w, c, rope, positions);
  Tensor o = Tensor::empty({N, d.H * d.dv}, dt, dev);  // o: [N, H, dv]
  if (paged) ops::paged_cache_write(paged->cache->pool(layer), lat, paged->slots);
  // Whole sequences without a cache (training, a plain forward, a paged prefill): every row at once —
  // training through the varlen attention that keeps the probabilities, inference through the flash
  // kernel.
  bool whole = true;
  std::vector<int64_t> cu{0};
  for (const SeqChunk& ch : chunks) {
    whole = whole && !ch.cache && ch.pos0 == 0 && ch.row0 == cu.back();
    cu.push_back(ch.row0 + ch.len);
  }
  whole = whole && cu.back() == N;
  DSEEK_CHECK(!saved || whole, "mla_fwd: a training forward takes whole sequences in order, without a cache");
  // Inference: the naive path's keys/values are read in place by the flash kernel (kv_b_proj's output and
  // the roped k_pe columns of the latent rows).
  // Tensor cores only where they pay: with few keys the exact kernel costs little, and bf16 products
  // already put tiny fixtures near routing ties (on the H200, tiny-v3's [2, 16] batch flipped one
  // router choice under fp16-operand attention: 4.9 % instead of 1.0 % from the reference).
  int64_t max_keys = 0;
  for (const SeqChunk& ch : chunks) max_keys = std::max(max_keys, ch.pos0 + ch.len);
  const bool fp16_ops = fp16_attention && max_keys >= kTensorCoreMinKeys;
  // On the GPU the flash kernel writes o in bf16 when o_proj takes bf16 (no cast before that product).
  const bool o_bf16 = fp16_ops && !saved && dev == Device::CUDA && dt == DType::F32 && N > 8 &&
                      w.o_proj.dtype() == DType::BF16 && !w.o_proj.block_scale();
  // Training with bf16 products on the GPU: the attention's products are bf16 too, flash-style (nothing
  // of size [H, T, T] kept) for the head dims the kernels are built for, else with the probabilities kept
  // in bf16; as for inference, only where tensor cores pay (few keys: exact f32).
  const bool bf16_attn = saved && dev == Device::CUDA && dt == DType::F32 &&
                         w.kv_b_proj.dtype() == DType::BF16 && !w.kv_b_proj.block_scale() &&
                         max_keys >= kTensorCoreMinKeys;
  const bool flash_train = bf16_attn && ops::mla_flash_train_dims(d.dn, d.R, d.dv);
  if (whole && !saved) {
    Tensor kv, kpe;
    flash_inputs(kv, kpe, lat, w, c, fp16_ops);
    if (o_bf16) o = Tensor::empty({N, d.H * d.dv}, DType::BF16, dev);
    ops::mla_flash_fwd(o.view({N, d.H, d.dv}), q.view({N, d.H, d.dq}), kv.view({N, d.H, d.dn + d.dv}), kpe,
                       cu, cu, c.softmax_scale(), fp16_ops);
  } else if (whole && flash_train) {
    Tensor kv, kpe, ckvn;
    flash_inputs(kv, kpe, lat, w, c, false, true, &ckvn);
    q = q.to(DType::BF16);  // the operand the backward reads again; the f32 q is not kept
    o = Tensor::empty({N, d.H * d.dv}, DType::BF16, dev);   // o_proj's operand, kept for its backward
    Tensor lse = Tensor::empty({d.H, N}, DType::F32, dev);  // lse: [H, N]
    {
      prof::Scope scope(prof::kAttnCoreFwd);
      ops::mla_flash_train_fwd(o.view({N, d.H, d.dv}), lse, q.view({N, d.H, d.dq}),
                               kv.view({N, d.H, d.dn + d.dv}), kpe, cu, c.softmax_scale());
    }
    saved->cu = cu;
    saved->lse = lse;
    if (!saved->recompute) {
      saved->kv = kv;
      saved->kpe = kpe;
      saved->ckvn = ckvn;
    }
  } else if (whole) {
    Tensor k, v;
    decompress(k, v, lat, w, c);
    Tensor probs = Tensor::empty({ops::varlen_probs_size(cu, d.H)}, bf16_attn ? DType::BF16 : dt, dev);
    {
      prof::Scope scope(prof::kAttnCoreFwd);
      ops::attention_fwd_varlen(o.view({N, d.H, d.dv}), probs, q.view({N, d.H, d.dq}), k.view({N, d.H, d.dq}),
                                v.view({N, d.H, d.dv}), cu, c.softmax_scale());
    }
    saved->cu = cu;
    saved->probs = probs;
    if (!saved->recompute) {
      saved->k = k;
      saved->v = v;
    }
  }
  // Chunks against caches: write their latent rows, then the absorbed form (decode) right away, and the
  // naive form for the rest in one flash call over all of them.
  std::vector<const SeqChunk*> naive_chunks;
  bool in_place = true;  // the naive chunks are all the rows, in order, each from position 0
  int64_t next_row = 0;
  for (const SeqChunk& ch : chunks) {
    if (whole) break;  // handled above
    Tensor qc = q.slice(ch.row0, ch.len), lc = lat.slice(ch.row0, ch.len), oc = o.slice(ch.row0, ch.len);
    Tensor rows;
    if (ch.cache) {
      DSEEK_CHECK(ch.pos0 == ch.cache->length(), "mla_fwd: chunk at position ", ch.pos0,
                  " but the cache holds ", ch.cache->length(), " tokens");
      DSEEK_CHECK(ch.pos0 + ch.len <= ch.cache->capacity(), "mla_fwd: latent cache capacity ",
                  ch.cache->capacity(), " exceeded");
      rows = ch.cache->rows(layer);
      rows.slice(ch.pos0, ch.len).copy_from(lc);
    } else {
      DSEEK_CHECK(ch.pos0 == 0, "mla_fwd: a chunk at position ", ch.pos0, " needs a cache");
    }
    const bool naive = path == AttnPath::Naive || (path == AttnPath::Auto && ch.pos0 == 0) || !ch.cache;
    if (!naive) {
      attend_absorbed(oc, qc, rows, w, c, ch.pos0);
      in_place = false;
      continue;
    }
    in_place = in_place && ch.pos0 == 0 && ch.row0 == next_row;
    next_row = ch.row0 + ch.len;
    naive_chunks.push_back(&ch);
  }
  in_place = in_place && next_row == N;
  if (!naive_chunks.empty()) {
    // Keys: each chunk's cached prefix and its own rows (srcs), queries: its rows; gathered unless they
    // are already the whole of lat / q / o.
    std::vector<int64_t> cu_q{0}, cu_k{0};
    for (const SeqChunk* ch : naive_chunks) {
      cu_q.push_back(cu_q.back() + ch->len);
      cu_k.push_back(cu_k.back() + ch->pos0 + ch->len);
    }
    const int64_t Nq = cu_q.back(), Nk = cu_k.back();
    if (in_place && o_bf16) o = Tensor::empty({N, d.H * d.dv}, DType::BF16, dev);  // nothing else writes o
    Tensor qg = q, og = o, src = lat;  // qg: [Nq, H·dq], og: [Nq, H·dv], src: [Nk, C + R]
    if (!in_place) {
      qg = Tensor::empty({Nq, d.H * d.dq}, dt, dev);
      og = Tensor::empty({Nq, d.H * d.dv}, dt, dev);
      src = Tensor::empty({Nk, d.C + d.R}, dt, dev);
      for (size_t i = 0; i < naive_chunks.size(); ++i) {
        const SeqChunk& ch = *naive_chunks[i];
        qg.slice(cu_q[i], ch.len).copy_from(q.slice(ch.row0, ch.len));
        src.slice(cu_k[i], ch.pos0 + ch.len)
            .copy_from(ch.pos0 == 0 ? lat.slice(ch.row0, ch.len)
                                    : ch.cache->rows(layer).slice(0, ch.pos0 + ch.len));
      }
    }
    Tensor kv, kpe;
    flash_inputs(kv, kpe, src, w, c, fp16_ops);
    ops::mla_flash_fwd(og.view({Nq, d.H, d.dv}), qg.view({Nq, d.H, d.dq}), kv.view({Nk, d.H, d.dn + d.dv}),
                       kpe, cu_q, cu_k, c.softmax_scale(), fp16_ops);
    if (!in_place)
      for (size_t i = 0; i < naive_chunks.size(); ++i)
        o.slice(naive_chunks[i]->row0, naive_chunks[i]->len)
            .copy_from(og.slice(cu_q[i], naive_chunks[i]->len));
  }
  ops::linear(out, o, w.o_proj);
  if (saved) {
    saved->o = o;
    if (!saved->recompute) {
      saved->q = q;
      if (!flash_train) saved->lat = lat;  // the flash path keeps kv_b's operand ckvn instead
    } else {
      saved->cqn = Tensor();
    }
  }
}

void mla_bwd(Tensor dx, MlaWeights& g, const Tensor& dout, const MlaWeights& w, const ModelConfig& c,
             const Rope& rope, const Tensor& positions, const std::vector<SeqChunk>& chunks, MlaSaved& s,
             const Tensor& dout_op) {
  const Dims d(c);
  const int64_t N = dout.size(0);
  const DType dt = dout.dtype();  // the activation dtype (s.x, s.o may be bf16 operands)
  const Device dev = dout.device();
  const bool flash = s.lse.defined();
  Tensor x = s.x, q = s.q, lat = s.lat, k = s.k, v = s.v, kv = s.kv, kpe = s.kpe, cqn = s.cqn,
         ckvn_op = s.ckvn;
  if (s.recompute) {  // rebuild the norms' outputs and the up-projections from the saved input
    MlaSaved tmp;
    project(q, lat, &tmp, s.x, dt, w, c, rope, positions);
    cqn = tmp.cqn;
    x = tmp.x;
    if (flash) {
      q = q.to(DType::BF16);
      flash_inputs(kv, kpe, lat, w, c, false, true, &ckvn_op);
    } else {
      decompress(k, v, lat, w, c);
    }
  }
  (void)chunks;
  // out = o · Woᵀ
  Tensor d_o = Tensor::empty({N, d.H * d.dv}, dt, dev);
  ops::linear_bwd(d_o, g.o_proj, dout_op.defined() ? dout_op : dout, s.o, w.o_proj);
  // Attention: dq [N, H, dq]; keys/values came from kv = ckvn · W_kvbᵀ and the shared k_pe, so their
  // gradients are dkv [N, H, dn + dv] and dpe [N, R] (the k_pe part summed over heads).
  Tensor dq = Tensor::empty({N, d.H * d.dq}, dt, dev);
  // dkv: [N, H·(dn + dv)], only kv_b's backward reads it: on the flash path with bf16 weights written in
  // bf16 by the attention's backward (no cast)
  const bool dkv_op = flash && dev == Device::CUDA && w.kv_b_proj.dtype() == DType::BF16;
  Tensor dkv = Tensor::empty({N, d.H * (d.dn + d.dv)}, dkv_op ? DType::BF16 : dt, dev);
  Tensor dpe = Tensor::empty({N, d.R}, dt, dev);          // dpe: [N, R] ∂/∂k_pe
  Tensor ckvn, dckvn = Tensor::empty({N, d.C}, dt, dev);  // ckvn: [N, C] the normed latents (below)
  if (flash) {
    {
      prof::Scope scope(prof::kAttnCoreBwd);
      ops::mla_flash_bwd(dq.view({N, d.H, d.dq}), dkv.view({N, d.H, d.dn + d.dv}), dpe,
                         d_o.view({N, d.H, d.dv}), s.o.view({N, d.H, d.dv}), s.lse, q.view({N, d.H, d.dq}),
                         kv.view({N, d.H, d.dn + d.dv}), kpe, s.cu, c.softmax_scale());
    }
    ckvn = ckvn_op;  // kv_b's bf16 operand from the forward
  } else {
    Tensor dk = Tensor::empty({N, d.H * d.dq}, dt, dev), dvv = Tensor::empty({N, d.H * d.dv}, dt, dev);
    {
      prof::Scope scope(prof::kAttnCoreBwd);
      ops::attention_bwd_varlen(dq.view({N, d.H, d.dq}), dk.view({N, d.H, d.dq}), dvv.view({N, d.H, d.dv}),
                                d_o.view({N, d.H, d.dv}), q.view({N, d.H, d.dq}), k.view({N, d.H, d.dq}),
                                v.view({N, d.H, d.dv}), s.probs, s.cu, c.softmax_scale());
    }
    ckvn = Tensor::empty({N, d.C}, dt, dev);
    std::vector<ops::ColBlock> gather{{ckvn, 0, lat, 0, d.C}};
    for (int64_t h = 0; h < d.H; ++h) {  // dpe = Σ_h dk_h[:, dn:], heads added in order
      gather.push_back({dkv, h * (d.dn + d.dv), dk, h * d.dq, d.dn});
      gather.push_back({dkv, h * (d.dn + d.dv) + d.dn, dvv, h * d.dv, d.dv});
      gather.push_back({dpe, 0, dk, h * d.dq + d.dn, d.R, h > 0});
    }
    ops::copy_cols_many(gather);
  }
  ops::linear_bwd(dckvn, g.kv_b_proj, dkv, ckvn, w.kv_b_proj);
  // dlat = [rmsnorm_bwd(dckvn) | rope_bwd(dpe)]
  Tensor dckv = Tensor::empty({N, d.C}, dt, dev);
  ops::rmsnorm_bwd(dckv, g.kv_a_layernorm, dckvn, s.ckv, w.kv_a_layernorm, s.ckv_rstd);
  ops::rope_bwd(dpe.view({N, 1, d.R}), positions, rope.inv_freq, 0, rope.attention_factor);
  Tensor dlat = Tensor::empty({N, d.C + d.R}, dt, dev);  // dlat: [N, C + R] = [dckv | dpe]
  ops::copy_cols_many({{dlat, 0, dckv, 0, d.C}, {dlat, d.C, dpe, 0, d.R}});
  ops::linear_bwd(dx, g.kv_a_proj_with_mqa, dlat, x, w.kv_a_proj_with_mqa);
  // Queries: undo the rope on the pe columns, then the q projections.
  ops::rope_bwd(dq.view({N, d.H, d.dq}), positions, rope.inv_freq, d.dn, rope.attention_factor);
  Tensor dxq = Tensor::empty({N, d.D}, dt, dev);
  if (c.q_lora_rank > 0) {
    Tensor dcqn = Tensor::empty({N, c.q_lora_rank}, dt, dev),
           dcq = Tensor::empty({N, c.q_lora_rank}, dt, dev);
    ops::linear_bwd(dcqn, g.q_b_proj, dq, cqn, w.q_b_proj);
    ops::rmsnorm_bwd(dcq, g.q_a_layernorm, dcqn, s.cq, w.q_a_layernorm, s.cq_rstd);
    ops::linear_bwd(dxq, g.q_a_proj, dcq, x, w.q_a_proj);
  } else {
    ops::linear_bwd(dxq, g.q_proj, dq, x, w.q_proj);
  }
  ops::add_(dx, dxq);
}

void mla_decode(Tensor out, const ops::NormedInput& in, const MlaWeights& w, const ModelConfig& c,
                const Rope& rope, const Tensor& positions, const PagedStep& paged, int64_t layer) {
  DSEEK_CHECK(paged.decode && paged.cache, "mla_decode: a decode step over a paged cache");
  const Dims d(c);
  const int64_t N = in.h.size(0);
  const bool lora = c.q_lora_rank > 0;
  // first: [N, q_lora_rank] cq, or [N, H·(dn + R)] q; kv: [N, C + R] = [c_kv | k_pe] as projected
  Tensor first = Tensor::empty({N, lora ? c.q_lora_rank : d.H * d.dq}, in.h.dtype(), in.h.device()),
         kv = Tensor::empty({N, d.C + d.R}, in.h.dtype(), in.h.device());
  ops::linear_pair(first, kv, in, lora ? w.q_a_proj : w.q_proj, w.kv_a_proj_with_mqa);
  decode_after_first(out, first, kv, w, c, rope, positions, paged, layer);
}

}  // namespace dseek
