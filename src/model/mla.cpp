// mla.cpp — MLA forward, naive and absorbed (spec/model.md §2.2 projections and splits, §2.4 RoPE,
// §2.5 the absorbed form and what the cache holds).
#include "model/mla.h"

#include "ops/attention.h"
#include "ops/elementwise.h"
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

// Naive attention for one chunk over latent rows src[S, C + R] (the chunk's own rows when it starts the
// sequence, else the cache up to the chunk's end): decompress per-head keys/values, then causal MHA.
void attend_naive(Tensor oc, const Tensor& qc, const Tensor& src, const MlaWeights& w, const ModelConfig& c,
                  int64_t pos0) {
  const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, R = c.qk_rope_head_dim,
                dq = c.qk_head_dim(), dv = c.v_head_dim, C = c.kv_lora_rank, S = src.size(0),
                len = qc.size(0);
  const DType dt = qc.dtype();
  Tensor ckv = Tensor::empty({S, C}, dt);  // ckv: [S, C] the normed latents
  ops::copy_cols(ckv, 0, src, 0, C);
  Tensor kv = Tensor::empty({S, H * (dn + dv)}, dt);  // kv: [S, H, dn + dv] = per head [k_nope | v]
  ops::linear(kv, ckv, w.kv_b_proj);
  Tensor k = Tensor::empty({S, H * dq}, dt);  // k: [S, H, dn + R] = [k_nope_h | k_pe] (k_pe shared)
  Tensor v = Tensor::empty({S, H * dv}, dt);  // v: [S, H, dv]
  for (int64_t h = 0; h < H; ++h) {
    ops::copy_cols(k, h * dq, kv, h * (dn + dv), dn);
    ops::copy_cols(k, h * dq + dn, src, C, R);
    ops::copy_cols(v, h * dv, kv, h * (dn + dv) + dn, dv);
  }
  ops::attention_fwd(oc.view({len, H, dv}), Tensor(), qc.view({len, H, dq}), k.view({S, H, dq}),
                     v.view({S, H, dv}), c.softmax_scale(), pos0);
}

// Absorbed attention for one chunk against cache rows [0, pos0 + len): q_lat_h = q_nope_h · W_UK[h],
// scores over [c_kv | k_pe], o_h = (P · c_kv) · W_UV[h]ᵀ.
void attend_absorbed(Tensor oc, const Tensor& qc, const Tensor& rows, const MlaWeights& w,
                     const ModelConfig& c, int64_t pos0) {
  const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, R = c.qk_rope_head_dim,
                dq = c.qk_head_dim(), dv = c.v_head_dim, C = c.kv_lora_rank, W = C + R, len = qc.size(0);
  const DType dt = qc.dtype();
  Tensor qn = Tensor::empty({len, dn}, dt);     // qn: [len, dn] one head's q_nope
  Tensor ql = Tensor::empty({len, C}, dt);      // ql: [len, C] its absorbed query
  Tensor qa = Tensor::empty({len, H * W}, dt);  // qa: [len, H, C + R] = [q_lat | q_pe]
  for (int64_t h = 0; h < H; ++h) {
    ops::copy_cols(qn, 0, qc, h * dq, dn);
    ops::matmul_nn(ql, qn, w.kv_b_proj.slice(h * (dn + dv), dn));  // W_UK[h]: [dn, C]
    ops::copy_cols(qa, h * W, ql, 0, C);
    ops::copy_cols(qa, h * W + C, qc, h * dq + dn, R);
  }
  Tensor olat = Tensor::empty({len, H * C}, dt);  // olat: [len, H, C]
  ops::mla_absorbed_fwd(olat.view({len, H, C}), qa.view({len, H, W}), rows.slice(0, pos0 + len),
                        c.softmax_scale(), pos0);
  Tensor oh = Tensor::empty({len, dv}, dt);  // oh: [len, dv] one head's output
  for (int64_t h = 0; h < H; ++h) {
    ops::copy_cols(ql, 0, olat, h * C, C);
    ops::linear(oh, ql, w.kv_b_proj.slice(h * (dn + dv) + dn, dv));  // W_UV[h]: [dv, C]
    ops::copy_cols(oc, h * dv, oh, 0, dv);
  }
}

}  // namespace

void mla_fwd(Tensor out, const Tensor& x, const MlaWeights& w, const ModelConfig& c, const Rope& rope,
             const Tensor& positions, const std::vector<SeqChunk>& chunks, int64_t layer, AttnPath path) {
  const int64_t N = x.size(0), H = c.num_attention_heads, dn = c.qk_nope_head_dim, dq = c.qk_head_dim(),
                dv = c.v_head_dim, C = c.kv_lora_rank, R = c.qk_rope_head_dim;
  const DType dt = x.dtype();
  // q: [N, H, dn + R]
  Tensor q = Tensor::empty({N, H * dq}, dt);
  if (c.q_lora_rank > 0) {
    Tensor cq = Tensor::empty({N, c.q_lora_rank}, dt);  // cq: [N, q_lora_rank]
    ops::linear(cq, x, w.q_a_proj);
    ops::rmsnorm_fwd(cq, Tensor(), cq, w.q_a_layernorm, c.rms_norm_eps);
    ops::linear(q, cq, w.q_b_proj);
  } else {
    ops::linear(q, x, w.q_proj);
  }
  // lat: [N, C + R] = [c_kv | k_pe]; becomes the cache row [rmsnorm(c_kv) | rope(k_pe)]
  Tensor lat = Tensor::empty({N, C + R}, dt);
  ops::linear(lat, x, w.kv_a_proj_with_mqa);
  Tensor ckv = Tensor::empty({N, C}, dt);
  ops::copy_cols(ckv, 0, lat, 0, C);
  ops::rmsnorm_fwd(ckv, Tensor(), ckv, w.kv_a_layernorm, c.rms_norm_eps);
  ops::copy_cols(lat, 0, ckv, 0, C);
  ops::rope_fwd(lat.view({N, 1, C + R}), positions, rope.inv_freq, C, rope.attention_factor);
  ops::rope_fwd(q.view({N, H, dq}), positions, rope.inv_freq, dn, rope.attention_factor);

  Tensor o = Tensor::empty({N, H * dv}, dt);  // o: [N, H, dv]
  for (const SeqChunk& ch : chunks) {
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
    if (naive) {
      attend_naive(oc, qc, ch.pos0 == 0 ? lc : rows.slice(0, ch.pos0 + ch.len), w, c, ch.pos0);
    } else {
      attend_absorbed(oc, qc, rows, w, c, ch.pos0);
    }
  }
  ops::linear(out, o, w.o_proj);
}

}  // namespace dseek
