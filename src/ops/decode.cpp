// decode.cpp — checks and device dispatch for the decode ops over the paged latent cache (ops/decode.h),
// and the reference of each fused op: the unfused ops in sequence (on the CPU, and on the GPU where the
// fused kernel does not apply).
#include "ops/decode.h"

#include "ops/check.h"
#include "ops/decode_impl.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace dseek::ops {

namespace {

// kv_b in a dtype the backend reads: the activation dtype on the CPU; f32 or bf16 on the GPU (a
// block-scaled fp8 matrix is dequantized to the activation dtype for the call, so f32 runs stay f32).
Tensor kv_b_for(const Tensor& kv_b, DType act) {
  if (kv_b.device() == Device::CPU) return kv_b.dtype() == act ? kv_b : kv_b.to(act);
  if (kv_b.dtype() == DType::F32 || kv_b.dtype() == DType::BF16) return kv_b;
  return kv_b.dequantize(act);
}

// The shared expert rides in the GPU launches as one more expert: same width, same dtype, no block scales.
bool shared_folds(const SharedExpert& shared, const std::vector<Tensor>& gate) {
  bool fold = shared.gate.size(0) == gate[0].size(0);
  for (const Tensor* t : {&shared.gate, &shared.up, &shared.down})
    fold = fold && t->dtype() == gate[0].dtype() && !t->block_scale();
  return fold;
}
void check_kv_b(const char* op, const Tensor& kv_b, int64_t H, int64_t dn, int64_t dv, int64_t C) {
  check_ndim(op, "kv_b", kv_b, 2);
  DSEEK_CHECK(dn > 0 && dv > 0, op, ": head dims dn = ", dn, ", dv = ", dv, " must be positive");
  check_shape(op, "kv_b", kv_b, {H * (dn + dv), C});
}

}  // namespace

void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots) {
  const char* op = "paged_cache_write";
  check_ndim(op, "pool", pool, 3);
  check_ndim(op, "rows", rows, 2);
  check_ndim(op, "slots", slots, 1);
  const int64_t N = rows.size(0);
  DSEEK_CHECK(pool.size(1) == kCacheBlock, op, ": pool ", pool.str(), " must have blocks of ", kCacheBlock,
              " rows");
  DSEEK_CHECK(pool.size(2) == rows.size(1), op, ": pool ", pool.str(), " and rows ", rows.str(),
              " differ in width");
  check_shape(op, "slots", slots, {N});
  check_dtype(op, "slots", slots, {DType::I32});
  DSEEK_CHECK(pool.dtype() == rows.dtype(), op, ": pool and rows differ in dtype");
  check_same_device(op, {&pool, &rows, &slots});
  if (N == 0) return;
  if (pool.device() == Device::CPU) {
    const int64_t cap = pool.size(0) * kCacheBlock;
    for (int64_t i = 0; i < N; ++i)
      DSEEK_CHECK(slots.data<int32_t>()[i] >= 0 && slots.data<int32_t>()[i] < cap, op, ": slot ",
                  slots.data<int32_t>()[i], " outside the pool of ", cap, " rows");
    return cpu::paged_cache_write(pool, rows, slots);
  }
  return cuda::paged_cache_write(pool, rows, slots);
}

void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv,
                  const RopeAt* rope) {
  const char* op = "mla_absorb_q";
  check_ndim(op, "q", q, 3);
  check_act(op, "q", q);
  check_ndim(op, "qa", qa, 3);
  const int64_t N = q.size(0), H = q.size(1), R = q.size(2) - dn, C = kv_b.ndim() == 2 ? kv_b.size(1) : 0;
  DSEEK_CHECK(R >= 0, op, ": q ", q.str(), " is narrower than dn = ", dn);
  check_kv_b(op, kv_b, H, dn, dv, C);
  check_shape(op, "qa", qa, {N, H, C + R});
  DSEEK_CHECK(qa.dtype() == q.dtype(), op, ": qa and q differ in dtype");
  check_same_device(op, {&qa, &q, &kv_b});
  if (rope) {
    check_shape(op, "positions", rope->positions, {N});
    check_dtype(op, "positions", rope->positions, {DType::I64});
    check_shape(op, "inv_freq", rope->inv_freq, {R / 2});
    check_dtype(op, "inv_freq", rope->inv_freq, {DType::F32});
    DSEEK_CHECK(R % 2 == 0, op, ": the roped part has ", R, " columns (pairs)");
    check_same_device(op, {&q, &rope->positions, &rope->inv_freq});
  }
  if (N == 0) return;
  const Tensor w = kv_b_for(kv_b, q.dtype());
  if (q.device() == Device::CPU) {
    if (!rope) return cpu::mla_absorb_q(qa, q, w, dn, dv);
    Tensor qr = q.clone();  // qr: [N, H, dn + R] q with its last R columns roped
    rope_fwd(qr, rope->positions, rope->inv_freq, dn, rope->attention_factor);
    return cpu::mla_absorb_q(qa, qr, w, dn, dv);
  }
  return cuda::mla_absorb_q(qa, q, w, dn, dv, rope);
}

void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv) {
  const char* op = "mla_absorb_o";
  check_ndim(op, "o_lat", o_lat, 3);
  check_act(op, "o_lat", o_lat);
  const int64_t N = o_lat.size(0), H = o_lat.size(1), C = o_lat.size(2);
  check_kv_b(op, kv_b, H, dn, dv, C);
  check_shape(op, "o", o, {N, H, dv});
  DSEEK_CHECK(o.dtype() == o_lat.dtype(), op, ": o and o_lat differ in dtype");
  check_same_device(op, {&o, &o_lat, &kv_b});
  if (N == 0) return;
  const Tensor w = kv_b_for(kv_b, o_lat.dtype());
  if (o.device() == Device::CPU) return cpu::mla_absorb_o(o, o_lat, w, dn, dv);
  return cuda::mla_absorb_o(o, o_lat, w, dn, dv);
}

namespace {
// mla_decode_paged's checks, for a latent width C.
void check_paged(const char* op, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                 const Tensor& seq_lens, int64_t max_len, int64_t C) {
  check_ndim(op, "q", q, 3);
  check_act(op, "q", q);
  check_ndim(op, "pool", pool, 3);
  check_ndim(op, "block_table", block_table, 2);
  const int64_t B = q.size(0), W = q.size(2), MB = block_table.size(1);
  DSEEK_CHECK(pool.size(1) == kCacheBlock, op, ": pool ", pool.str(), " must have blocks of ", kCacheBlock,
              " rows");
  DSEEK_CHECK(pool.size(2) == W, op, ": pool ", pool.str(), " and q ", q.str(), " differ in width");
  DSEEK_CHECK(C > 0 && C <= W, op, ": latent width ", C, " must be in (0, ", W, "]");
  check_shape(op, "block_table", block_table, {B, MB});
  check_shape(op, "seq_lens", seq_lens, {B});
  check_dtype(op, "block_table", block_table, {DType::I32});
  check_dtype(op, "seq_lens", seq_lens, {DType::I32});
  DSEEK_CHECK(pool.dtype() == q.dtype(), op, ": pool and q differ in dtype");
  DSEEK_CHECK(max_len >= 0 && max_len <= MB * kCacheBlock, op, ": max_len ", max_len, " exceeds the ",
              MB * kCacheBlock, " rows the block table can address");
  check_same_device(op, {&q, &pool, &block_table, &seq_lens});
}
}  // namespace

void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len) {
  const char* op = "mla_decode_paged";
  check_ndim(op, "o_lat", o_lat, 3);
  check_paged(op, q, pool, block_table, seq_lens, max_len, o_lat.size(2));
  const int64_t B = q.size(0), H = q.size(1), C = o_lat.size(2), MB = block_table.size(1);
  check_shape(op, "o_lat", o_lat, {B, H, C});
  DSEEK_CHECK(o_lat.dtype() == q.dtype(), op, ": o_lat and q differ in dtype");
  check_same_device(op, {&o_lat, &q});
  if (B == 0) return;
  if (q.device() == Device::CPU) {
    const int32_t* len = seq_lens.data<int32_t>();
    const int32_t* bt = block_table.data<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      DSEEK_CHECK(len[b] >= 1 && len[b] <= MB * kCacheBlock, op, ": sequence ", b, " has length ", len[b],
                  ", the block table addresses 1 ..= ", MB * kCacheBlock);
      for (int64_t k = 0; k < (len[b] + kCacheBlock - 1) / kCacheBlock; ++k)
        DSEEK_CHECK(bt[b * MB + k] >= 0 && bt[b * MB + k] < pool.size(0), op, ": sequence ", b, " block ", k,
                    " is ", bt[b * MB + k], ", the pool has ", pool.size(0));
    }
    return cpu::mla_decode_paged(o_lat, q, pool, block_table, seq_lens, scale, max_len);
  }
  return cuda::mla_decode_paged(o_lat, q, pool, block_table, seq_lens, scale, max_len);
}

void mla_decode_paged_o(Tensor o, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                        const Tensor& seq_lens, double scale, int64_t max_len, const Tensor& kv_b, int64_t dn,
                        int64_t dv) {
  const char* op = "mla_decode_paged_o";
  DSEEK_CHECK(kv_b.ndim() == 2, op, ": kv_b ", kv_b.str(), " must have 2 dims");
  const int64_t C = kv_b.size(1);
  check_paged(op, q, pool, block_table, seq_lens, max_len, C);
  const int64_t B = q.size(0), H = q.size(1);
  check_kv_b(op, kv_b, H, dn, dv, C);
  check_shape(op, "o", o, {B, H, dv});
  DSEEK_CHECK(o.dtype() == q.dtype(), op, ": o and q differ in dtype");
  check_same_device(op, {&o, &q, &kv_b});
  if (B == 0) return;
  if (q.device() == Device::CUDA)
    return cuda::mla_decode_paged_o(o, q, pool, block_table, seq_lens, scale, max_len,
                                    kv_b_for(kv_b, q.dtype()), dn, dv);
  Tensor o_lat = Tensor::empty({B, H, C}, q.dtype(), q.device());  // o_lat: [B, H, C] the reference's
  mla_decode_paged(o_lat, q, pool, block_table, seq_lens, scale, max_len);
  mla_absorb_o(o, o_lat, kv_b, dn, dv);
}

namespace {
// mla_decode_latent's checks.
void check_latent(const char* op, const LatentStep& a, bool need_cqn = true) {
  check_ndim(op, "kv", a.kv, 2);
  check_act(op, "kv", a.kv);
  check_ndim(op, "pool", a.pool, 3);
  const int64_t N = a.kv.size(0), W = a.kv.size(1), C = a.kv_norm.ndim() == 1 ? a.kv_norm.size(0) : -1,
                R = W - C;
  DSEEK_CHECK(C > 0 && R >= 0 && R % 2 == 0, op, ": kv ", a.kv.str(), " and kv_norm ", a.kv_norm.str(),
              " leave no even rope part");
  check_shape(op, "inv_freq", a.inv_freq, {R / 2});
  check_dtype(op, "inv_freq", a.inv_freq, {DType::F32});
  check_shape(op, "positions", a.positions, {N});
  check_dtype(op, "positions", a.positions, {DType::I64});
  check_dtype(op, "kv_norm", a.kv_norm, {DType::F32, a.kv.dtype()});
  const bool q = a.cq.defined();
  if (q) {
    check_ndim(op, "cq", a.cq, 2);
    check_shape(op, "cq", a.cq, {N, a.cq.size(1)});
    if (need_cqn) {
      check_shape(op, "cqn", a.cqn, a.cq.shape());
      DSEEK_CHECK(a.cqn.dtype() == a.kv.dtype(), op, ": cqn and kv differ in dtype");
    }
    check_shape(op, "q_norm", a.q_norm, {a.cq.size(1)});
    check_dtype(op, "q_norm", a.q_norm, {DType::F32, a.kv.dtype()});
    DSEEK_CHECK(a.cq.dtype() == a.kv.dtype(), op, ": cq and kv differ in dtype");
    check_same_device(op, {&a.cq, &a.cqn, &a.q_norm, &a.kv});
  }
  check_same_device(op, {&a.kv, &a.pool, &a.kv_norm, &a.positions, &a.inv_freq, &a.slots});
  DSEEK_CHECK(a.pool.size(1) == kCacheBlock && a.pool.size(2) == W && a.pool.dtype() == a.kv.dtype(), op,
              ": pool ", a.pool.str(), " does not hold rows of ", a.kv.str());
  check_shape(op, "slots", a.slots, {N});
  check_dtype(op, "slots", a.slots, {DType::I32});
}
}  // namespace

void mla_decode_latent(const LatentStep& a) {
  const char* op = "mla_decode_latent";
  check_latent(op, a);
  const int64_t N = a.kv.size(0), C = a.kv_norm.size(0), W = a.kv.size(1);
  const bool q = a.cq.defined();
  if (N == 0) return;
  if (a.kv.device() == Device::CUDA && (!q || a.q_norm.dtype() == a.kv_norm.dtype()))
    return cuda::mla_decode_latent(a);
  // The reference: the norms, the rope of the latent row, the cache write.
  if (q) rmsnorm_fwd(a.cqn, Tensor(), a.cq, a.q_norm, a.eps);
  Tensor lat = a.kv.clone();                                        // lat: [N, C + R]
  Tensor ckv = Tensor::empty({N, C}, a.kv.dtype(), a.kv.device()),  // ckv: [N, C] the latents
      ckvn = Tensor::empty({N, C}, a.kv.dtype(), a.kv.device());    // ckvn: [N, C] normed
  copy_cols(ckv, 0, lat, 0, C);
  rmsnorm_fwd(ckvn, Tensor(), ckv, a.kv_norm, a.eps);
  copy_cols(lat, 0, ckvn, 0, C);
  rope_fwd(lat.view({N, 1, W}), a.positions, a.inv_freq, C, a.attention_factor);
  paged_cache_write(a.pool, lat, a.slots);
}

namespace {
bool gemv_takes(const Tensor& out, const Tensor& x, const Tensor& w) {
  return x.device() == Device::CUDA && x.dtype() == DType::F32 && out.dtype() == DType::F32 &&
         w.dtype() == DType::BF16 && !w.block_scale() && x.size(0) >= 1 && x.size(0) <= 8;
}
}  // namespace

namespace {
// f32 on the GPU (or undefined): what the fused decode kernels read.
bool gpu_f32(const Tensor& t) {
  return !t.defined() || (t.device() == Device::CUDA && t.dtype() == DType::F32);
}
// Rows of `width` f32 values that fit a kernel's shared memory (1 ..= 8 of them).
bool rows_fit_smem(int64_t N, int64_t width) {
  return N >= 1 && N <= 8 && N * width * int64_t(sizeof(float)) <= 200 * 1024;
}
}  // namespace

void mla_decode_latent_q(Tensor q, const LatentStep& a, const Tensor& q_b) {
  const char* op = "mla_decode_latent_q";
  DSEEK_CHECK(a.cq.defined(), op, ": needs the q_a output cq");
  check_latent(op, a, false);
  const int64_t N = a.kv.size(0), Q = a.cq.size(1);
  check_ndim(op, "q_b", q_b, 2);
  DSEEK_CHECK(q_b.size(1) == Q, op, ": q_b ", q_b.str(), " does not take rows of ", Q);
  check_shape(op, "q", q, {N, q_b.size(0)});
  DSEEK_CHECK(q.dtype() == a.kv.dtype(), op, ": q and kv differ in dtype");
  check_same_device(op, {&q, &a.kv, &q_b});
  if (N == 0) return;
  const bool fused = gpu_f32(a.cq) && gpu_f32(a.kv) && gpu_f32(a.pool) && gpu_f32(a.q_norm) &&
                     gpu_f32(a.kv_norm) && gpu_f32(q) && q_b.dtype() == DType::BF16 && !q_b.block_scale() &&
                     rows_fit_smem(N, Q);
  if (fused) return cuda::mla_decode_latent_q(q, a, q_b);
  LatentStep b = a;  // the reference: the latent step, then the q_b product
  b.cqn = Tensor::empty(a.cq.shape(), a.cq.dtype(), a.cq.device());
  mla_decode_latent(b);
  linear(q, b.cqn, q_b);
}

namespace {
void check_normed(const char* op, const NormedInput& in) {
  check_ndim(op, "h", in.h, 2);
  check_act(op, "h", in.h);
  const int64_t N = in.h.size(0), D = in.h.size(1);
  check_shape(op, "norm", in.norm, {D});
  DSEEK_CHECK(in.K >= 0 && in.KS >= 1 && (in.KS == in.K || in.KS == in.K + 1), op, ": slots K = ", in.K,
              ", KS = ", in.KS, " (KS is K or K + 1, at least 1)");
  if (in.y.defined()) {
    check_shape(op, "y", in.y, {N * in.KS, D});
    DSEEK_CHECK(in.y.dtype() == in.h.dtype(), op, ": y and h differ in dtype");
    if (in.K > 0) {
      check_shape(op, "w", in.w, {N, in.K});
      check_dtype(op, "w", in.w, {DType::F32});
    }
  }
  for (const Tensor* t : {&in.h_out, &in.x_out})
    if (t->defined()) {
      check_shape(op, t == &in.h_out ? "h_out" : "x_out", *t, {N, D});
      DSEEK_CHECK(t->dtype() == in.h.dtype(), op, ": h_out / x_out and h differ in dtype");
    }
  DSEEK_CHECK(!in.h_out.defined() || in.h_out.raw() != in.h.raw(), op, ": h_out must not be h");
  check_same_device(op, {&in.h, &in.norm, &in.y, &in.w, &in.h_out, &in.x_out});
}
bool normed_fusable(const NormedInput& in) {
  return in.h.device() == Device::CUDA && gpu_f32(in.h) && gpu_f32(in.y) && gpu_f32(in.w) &&
         gpu_f32(in.norm) && gpu_f32(in.h_out) && gpu_f32(in.x_out);
}
}  // namespace

void normed_input(Tensor x, const NormedInput& in) {
  const char* op = "normed_input";
  check_normed(op, in);
  const int64_t N = in.h.size(0), D = in.h.size(1);
  check_shape(op, "x", x, {N, D});
  DSEEK_CHECK(x.dtype() == in.h.dtype(), op, ": x and h differ in dtype");
  check_same_device(op, {&x, &in.h});
  if (N == 0) return;
  if (normed_fusable(in) && gpu_f32(x)) return cuda::normed_input(x, in);
  // The reference: the slots' combine, the residual add, the RMSNorm.
  Tensor v = Tensor::empty({N, D}, in.h.dtype(), in.h.device());  // v: [N, D] h + δ
  copy_cols(v, 0, in.h, 0, D);
  if (!in.y.defined()) {
    rmsnorm_fwd(x, Tensor(), v, in.norm, in.eps);
  } else {
    Tensor d = in.y;  // d: [N, D] δ
    if (in.KS > 1 || in.K > 0) {
      d = Tensor::empty({N, D}, in.h.dtype(), in.h.device());
      if (in.h.device() == Device::CUDA) {
        DSEEK_CHECK(in.h.dtype() == DType::F32, op, ": expert slots are f32 on the GPU");
        cuda::moe_combine_slots(d, in.y, in.w, in.K, in.KS);
      } else {
        DSEEK_CHECK(in.h.dtype() == DType::F32, op, ": expert slots are f32");
        const float* y = in.y.data<float>();
        const float* w = in.K > 0 ? in.w.data<float>() : nullptr;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < D; ++i) {
            float acc = 0.0f;
            for (int64_t k = 0; k < in.K; ++k) acc += w[n * in.K + k] * y[(n * in.KS + k) * D + i];
            if (in.KS > in.K) acc = y[(n * in.KS + in.K) * D + i] + acc;
            d.data<float>()[n * D + i] = acc;
          }
      }
    }
    add_rmsnorm_fwd(v, x, Tensor(), d, in.norm, in.eps);
  }
  if (in.h_out.defined()) copy_cols(in.h_out, 0, v, 0, D);
}

void linear_pair(Tensor out_a, Tensor out_b, const NormedInput& in, const Tensor& w_a, const Tensor& w_b) {
  const char* op = "linear_pair";
  check_normed(op, in);
  const int64_t N = in.h.size(0), D = in.h.size(1);
  if (N == 0) return;
  if (normed_fusable(in) && rows_fit_smem(N, D) && gemv_takes(out_a, in.h, w_a) &&
      gemv_takes(out_b, in.h, w_b) && w_a.ndim() == 2 && w_b.ndim() == 2 && w_a.size(1) == D &&
      w_b.size(1) == D) {
    check_shape(op, "out_a", out_a, {N, w_a.size(0)});
    check_shape(op, "out_b", out_b, {N, w_b.size(0)});
    check_same_device(op, {&out_a, &out_b, &in.h, &w_a, &w_b});
    return cuda::gemv_pair_normed(out_a, out_b, in, w_a, w_b);
  }
  Tensor x = in.x_out.defined() ? in.x_out : Tensor::empty({N, D}, in.h.dtype(), in.h.device());  // x: [N, D]
  NormedInput rest = in;
  rest.x_out = Tensor();
  normed_input(x, rest);
  linear_pair(out_a, out_b, x, w_a, w_b);
}

void linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const Tensor& w_a, const Tensor& w_b) {
  const char* op = "linear_pair";
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w_a", w_a, 2);
  check_ndim(op, "w_b", w_b, 2);
  check_shape(op, "out_a", out_a, {x.size(0), w_a.size(0)});
  check_shape(op, "out_b", out_b, {x.size(0), w_b.size(0)});
  DSEEK_CHECK(w_a.size(1) == x.size(1) && w_b.size(1) == x.size(1), op, ": x ", x.str(), ", w_a ", w_a.str(),
              " and w_b ", w_b.str(), " disagree on the input dim");
  check_same_device(op, {&out_a, &out_b, &x, &w_a, &w_b});
  if (gemv_takes(out_a, x, w_a) && gemv_takes(out_b, x, w_b))
    return cuda::gemv_pair(out_a, out_b, x, w_a, w_b);
  const Tensor xa = product_input(x, {&w_a, &w_b});  // cast once on the GPU
  linear(out_a, xa, w_a);
  linear(out_b, xa, w_b);
}

void linear_swiglu(Tensor out, const Tensor& x, const Tensor& w_gate, const Tensor& w_up) {
  const char* op = "linear_swiglu";
  check_ndim(op, "x", x, 2);
  check_ndim(op, "w_gate", w_gate, 2);
  check_shape(op, "w_up", w_up, w_gate.shape());
  check_shape(op, "out", out, {x.size(0), w_gate.size(0)});
  DSEEK_CHECK(w_gate.size(1) == x.size(1), op, ": x ", x.str(), " and w_gate ", w_gate.str(),
              " disagree on the input dim");
  check_same_device(op, {&out, &x, &w_gate, &w_up});
  if (gemv_takes(out, x, w_gate) && gemv_takes(out, x, w_up)) return cuda::gemv_swiglu(out, x, w_gate, w_up);
  Tensor u = Tensor::empty(out.shape(), out.dtype(), out.device());  // u: [N, F] the up product
  const Tensor xa = product_input(x, {&w_gate, &w_up});              // cast once on the GPU
  linear(out, xa, w_gate);
  linear(u, xa, w_up);
  swiglu_fwd(out, out, u);
}

bool router_decode_applies(const Tensor& x, const Tensor& gate, const RouterParams& p) {
  return x.device() == Device::CUDA && x.dtype() == DType::F32 && x.ndim() == 2 && gate.ndim() == 2 &&
         (gate.dtype() == DType::F32 || gate.dtype() == DType::BF16) && !gate.block_scale() &&
         cuda::router_small_applies(x.size(0), gate.size(0), p);
}

void router_decode(Tensor topk_idx, Tensor topk_w, const Tensor& x, const Tensor& gate, const Tensor& bias,
                   const RouterParams& p) {
  const char* op = "router_decode";
  check_ndim(op, "x", x, 2);
  check_ndim(op, "gate", gate, 2);
  const int64_t N = x.size(0), E = gate.size(0), K = p.top_k;
  DSEEK_CHECK(gate.size(1) == x.size(1), op, ": x ", x.str(), " and gate ", gate.str(),
              " disagree on the input dim");
  check_shape(op, "topk_idx", topk_idx, {N, K});
  check_dtype(op, "topk_idx", topk_idx, {DType::I32});
  check_shape(op, "topk_w", topk_w, {N, K});
  if (bias.defined()) check_shape(op, "bias", bias, {E});
  check_same_device(op, {&topk_idx, &topk_w, &x, &gate, &bias});
  if (N == 0) return;
  if (router_decode_applies(x, gate, p)) {
    check_dtype(op, "topk_w", topk_w, {DType::F32});
    if (bias.defined()) check_dtype(op, "bias", bias, {DType::F32});
    return cuda::router_decode(topk_idx, topk_w, x, gate, bias, p);
  }
  // The reference: the gate product in f32 or above, then the router.
  const DType rdt = x.dtype() == DType::BF16 ? DType::F32 : x.dtype();
  Tensor logits = Tensor::empty({N, E}, rdt, x.device());  // logits: [N, E]
  linear(logits, x, gate.dtype() == rdt ? gate : gate.to(rdt));
  router_fwd(topk_idx, topk_w, Tensor(), logits, bias, p);
}

void router_decode(Tensor topk_idx, Tensor topk_w, const NormedInput& in, const Tensor& gate,
                   const Tensor& bias, const RouterParams& p) {
  const char* op = "router_decode";
  check_normed(op, in);
  const int64_t N = in.h.size(0), D = in.h.size(1);
  if (N == 0) return;
  if (normed_fusable(in) && router_decode_applies(in.h, gate, p) &&
      D * int64_t(sizeof(float)) <= 200 * 1024 && gate.size(1) == D) {
    check_shape(op, "topk_idx", topk_idx, {N, p.top_k});
    check_dtype(op, "topk_idx", topk_idx, {DType::I32});
    check_shape(op, "topk_w", topk_w, {N, p.top_k});
    check_dtype(op, "topk_w", topk_w, {DType::F32});
    if (bias.defined()) {
      check_shape(op, "bias", bias, {gate.size(0)});
      check_dtype(op, "bias", bias, {DType::F32});
    }
    check_same_device(op, {&topk_idx, &topk_w, &in.h, &gate, &bias});
    return cuda::router_decode_normed(topk_idx, topk_w, in, gate, bias, p);
  }
  Tensor x = in.x_out.defined() ? in.x_out : Tensor::empty({N, D}, in.h.dtype(), in.h.device());  // x: [N, D]
  NormedInput rest = in;
  rest.x_out = Tensor();
  normed_input(x, rest);
  router_decode(topk_idx, topk_w, x, gate, bias, p);
}

void argmax_rows(Tensor ids, const Tensor& x) {
  const char* op = "argmax_rows";
  check_ndim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::F32, DType::BF16});
  check_shape(op, "ids", ids, {x.size(0)});
  check_dtype(op, "ids", ids, {DType::I64});
  DSEEK_CHECK(x.size(1) > 0, op, ": x has no columns");
  check_same_device(op, {&ids, &x});
  if (x.size(0) == 0) return;
  if (x.device() == Device::CPU) return cpu::argmax_rows(ids, x);
  return cuda::argmax_rows(ids, x);
}

bool moe_experts_small_applies(const Tensor& x, int64_t top_k, const std::vector<Tensor>& gate) {
  if (x.device() != Device::CUDA || x.dtype() != DType::F32 || x.ndim() != 2) return false;
  if (x.size(0) < 1 || x.size(0) > kMoeSmallTokens || top_k < 1 || top_k > 16) return false;
  if (gate.empty() || int64_t(gate.size()) > kMoeSmallExperts) return false;
  return (gate[0].dtype() == DType::BF16 || gate[0].dtype() == DType::F32) && !gate[0].block_scale();
}

void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down, const SharedExpert& shared) {
  const char* op = "moe_experts_small";
  check_expert_call(op, out, x, topk_idx, topk_w, gate, up, down, shared);
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size());
  const bool sh = shared.defined();
  if (N == 0) return;
  const bool fold = sh && x.device() == Device::CUDA && shared_folds(shared, gate);
  if (sh && !fold) {  // the reference: out = shared MLP + routed experts (the routed sum added last)
    Tensor routed = Tensor::empty({N, D}, DType::F32, x.device());  // routed: [N, D]
    moe_experts_small(routed, x, topk_idx, topk_w, gate, up, down);
    Tensor h = Tensor::empty({N, shared.gate.size(0)}, DType::F32, x.device());  // h: [N, Fs]
    linear_swiglu(h, x, shared.gate, shared.up);
    linear(out, h, shared.down);
    add_(out, routed);
    return;
  }
  if (x.device() == Device::CPU) {
    for (int64_t i = 0; i < N * K; ++i)
      DSEEK_CHECK(topk_idx.data<int32_t>()[i] >= 0 && topk_idx.data<int32_t>()[i] < E, op, ": expert id ",
                  topk_idx.data<int32_t>()[i], " outside 0 ..< ", E);
    return cpu::moe_experts_small(out, x, topk_idx, topk_w, gate, up, down);
  }
  DSEEK_CHECK(moe_experts_small_applies(x, K, gate), op,
              ": the GPU version takes f32 activations, bf16 or f32 ", "experts, at most ", kMoeSmallTokens,
              " tokens and ", kMoeSmallExperts, " experts");
  for (int64_t e = 0; e < E; ++e)
    for (const Tensor* t : {&gate[size_t(e)], &up[size_t(e)], &down[size_t(e)]})
      DSEEK_CHECK(t->dtype() == gate[0].dtype() && !t->block_scale(), op, ": expert ", e, " is ",
                  dtype_name(t->dtype()), ", expert 0 ", dtype_name(gate[0].dtype()));
  return cuda::moe_experts_small(out, x, topk_idx, topk_w, gate, up, down, fold ? &shared : nullptr);
}

bool moe_experts_slots_applies(const Tensor& x, int64_t top_k, const std::vector<Tensor>& gate,
                               const SharedExpert& shared) {
  if (!moe_experts_small_applies(x, top_k, gate)) return false;
  for (const Tensor& g : gate)
    if (g.dtype() != gate[0].dtype() || g.block_scale()) return false;
  return !shared.defined() || shared_folds(shared, gate);
}

void moe_experts_slots(Tensor yp, const Tensor& x, const Tensor& topk_idx, const std::vector<Tensor>& gate,
                       const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                       const SharedExpert& shared) {
  const char* op = "moe_experts_slots";
  check_expert_call(op, Tensor(), x, topk_idx, Tensor(), gate, up, down, shared);
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size());
  const int64_t KS = K + (shared.defined() ? 1 : 0);
  check_shape(op, "yp", yp, {N * KS, D});
  check_dtype(op, "yp", yp, {DType::F32});
  check_same_device(op, {&yp, &x});
  DSEEK_CHECK(moe_experts_slots_applies(x, K, gate, shared), op,
              ": a GPU op for f32 activations, bf16 or f32 experts of one dtype, at most ", kMoeSmallTokens,
              " tokens and ", kMoeSmallExperts, " experts, a shared expert of the experts' width and dtype");
  for (int64_t e = 0; e < E; ++e)
    for (const Tensor* t : {&up[size_t(e)], &down[size_t(e)]})
      DSEEK_CHECK(t->dtype() == gate[0].dtype() && !t->block_scale(), op, ": expert ", e, " is ",
                  dtype_name(t->dtype()), ", expert 0 ", dtype_name(gate[0].dtype()));
  if (N == 0) return;
  return cuda::moe_experts_slots(yp, x, topk_idx, gate, up, down, shared.defined() ? &shared : nullptr);
}

}  // namespace dseek::ops
