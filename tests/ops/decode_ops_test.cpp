// decode_ops_test.cpp — the CPU decode ops over the paged latent cache (ops/decode.h) against independent
// references: rows scattered through randomly ordered blocks and attended with mla_decode_paged equal
// the contiguous absorbed attention (ops::mla_absorbed_fwd, BLAS-based) of each sequence; the all-heads
// absorptions equal per-head BLAS products (the form mla.cpp's contiguous path uses); the fused decode
// forms (residual add + RMSNorm, two products, gate+up+SwiGLU, latent norms + rope + cache write, q rope
// in the absorption, router with its gate product, shared expert with the routed ones) against plain
// loops or the unfused ops; the paged cache's block bookkeeping; bad input refused with a clear message.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "model/paged_cache.h"
#include "ops/attention.h"
#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/router.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dseek {
namespace {

Tensor random(const Shape& s, uint32_t seed, DType dt = DType::F32, double scale = 1.0) {
  Tensor t = Tensor::empty(s, DType::F64);
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = nd(rng);
  return t.to(dt);
}

Tensor i32(const std::vector<int32_t>& v, const Shape& s) {
  Tensor t = Tensor::empty(s, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

struct Case {
  int64_t H, C, R;
  std::vector<int64_t> lens;
};

// Scatter each sequence's rows through shuffled blocks, run the paged decode, compare per sequence.
void check_paged_decode(const Case& c, DType dt, double tol) {
  const int64_t W = c.C + c.R, B = int64_t(c.lens.size()), BS = ops::kCacheBlock;
  int64_t need = 0, MB = 1;
  for (int64_t L : c.lens) {
    need += (L + BS - 1) / BS;
    MB = std::max(MB, (L + BS - 1) / BS);
  }
  const int64_t NB = need + 3;  // spare blocks stay unused
  std::vector<int32_t> order(static_cast<size_t>(NB));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  Tensor pool = Tensor::empty({NB, BS, W}, dt);  // pool: [NB, 64, W]
  pool.fill(std::nan(""));
  std::vector<int32_t> table(size_t(B * MB), 0), lens;
  std::vector<Tensor> rows;
  size_t next = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = c.lens[size_t(b)];
    rows.push_back(random({L, W}, uint32_t(100 + b), dt));  // rows: [L, W] the sequence's latents
    std::vector<int32_t> slots;
    for (int64_t k = 0; k < (L + BS - 1) / BS; ++k) table[size_t(b * MB + k)] = order[next++];
    for (int64_t p = 0; p < L; ++p)
      slots.push_back(table[size_t(b * MB + p / BS)] * int32_t(BS) + int32_t(p % BS));
    ops::paged_cache_write(pool, rows.back(), i32(slots, {L}));
    lens.push_back(int32_t(L));
  }
  Tensor q = random({B, c.H, W}, 5, dt), out = Tensor::empty({B, c.H, c.C}, dt);
  out.fill(std::nan(""));
  const double scale = 1.0 / std::sqrt(double(W));
  ops::mla_decode_paged(out, q, pool, i32(table, {B, MB}), i32(lens, {B}), scale);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = c.lens[size_t(b)];
    Tensor ref = Tensor::empty({1, c.H, c.C}, dt);
    ops::mla_absorbed_fwd(ref, q.slice(b, 1), rows[size_t(b)], scale, L - 1);
    test::Diff d = test::diff(out.slice(b, 1), ref);
    EXPECT_FALSE(d.nan);
    EXPECT_LE(d.rel, tol) << "H " << c.H << " C " << c.C << " R " << c.R << " sequence " << b << " length "
                          << L << ": " << test::str(d);
  }
}

TEST(DecodeOps, PagedDecodeEqualsContiguousAbsorbed) {
  check_paged_decode({.H = 4, .C = 16, .R = 8, .lens = {1, 63, 64, 65, 130}}, DType::F32, 1e-5);
  check_paged_decode({.H = 3, .C = 32, .R = 4, .lens = {200, 7}}, DType::F32, 1e-5);
  check_paged_decode({.H = 16, .C = 64, .R = 16, .lens = {129}}, DType::F64, 1e-12);
}

// qa / o from per-head BLAS products (matmul_nn with W_UK[h], linear with W_UV[h]) as the reference.
void check_absorb(int64_t N, int64_t H, int64_t dn, int64_t dv, int64_t R, int64_t C, DType wdt) {
  const int64_t Dq = dn + R, W = C + R;
  Tensor q = random({N, H, Dq}, 1), kvb = random({H * (dn + dv), C}, 2, wdt, 0.1), lat = random({N, H, C}, 3);
  Tensor kvf = kvb.to(DType::F32);
  Tensor qa = Tensor::empty({N, H, W}, DType::F32), o = Tensor::empty({N, H, dv}, DType::F32);
  qa.fill(std::nan(""));
  o.fill(std::nan(""));
  ops::mla_absorb_q(qa, q, kvb, dn, dv);
  ops::mla_absorb_o(o, lat, kvb, dn, dv);
  Tensor qf = q.view({N, H * Dq}), lf = lat.view({N, H * C});
  Tensor qn = Tensor::empty({N, dn}, DType::F32), ql = Tensor::empty({N, C}, DType::F32);
  Tensor qa_ref = Tensor::empty({N, H * W}, DType::F32), o_ref = Tensor::empty({N, H * dv}, DType::F32);
  Tensor oh = Tensor::empty({N, dv}, DType::F32);
  for (int64_t h = 0; h < H; ++h) {
    ops::copy_cols(qn, 0, qf, h * Dq, dn);
    ops::matmul_nn(ql, qn, kvf.slice(h * (dn + dv), dn));  // W_UK[h]: [dn, C]
    ops::copy_cols(qa_ref, h * W, ql, 0, C);
    ops::copy_cols(qa_ref, h * W + C, qf, h * Dq + dn, R);
    ops::copy_cols(ql, 0, lf, h * C, C);
    ops::linear(oh, ql, kvf.slice(h * (dn + dv) + dn, dv));  // W_UV[h]: [dv, C]
    ops::copy_cols(o_ref, h * dv, oh, 0, dv);
  }
  test::Diff dq = test::diff(qa, qa_ref), dout = test::diff(o, o_ref);
  EXPECT_FALSE(dq.nan || dout.nan);
  EXPECT_LE(dq.rel, 1e-5) << "absorb_q " << test::str(dq);
  EXPECT_LE(dout.rel, 1e-5) << "absorb_o " << test::str(dout);
}

TEST(DecodeOps, AbsorptionsEqualPerHeadProducts) {
  check_absorb(3, 4, 8, 6, 4, 16, DType::F32);
  check_absorb(9, 2, 16, 16, 8, 32, DType::BF16);  // bf16 weights, converted for the CPU
  check_absorb(1, 5, 4, 12, 0, 24, DType::F32);
}

// The device-plan-free routed experts against the host-plan path (permute, grouped products, SwiGLU,
// weighted un-permute) that the prefill and training use.
TEST(DecodeOps, SmallMoeEqualsThePlannedPath) {
  const int64_t N = 5, K = 3, E = 7, D = 24, F = 16;
  std::vector<Tensor> g, u, dn;
  for (int64_t e = 0; e < E; ++e) {
    g.push_back(random({F, D}, uint32_t(20 + e), DType::F32, 0.2));
    u.push_back(random({F, D}, uint32_t(40 + e), DType::F32, 0.2));
    dn.push_back(random({D, F}, uint32_t(60 + e), DType::F32, 0.2));
  }
  Tensor x = random({N, D}, 3), w = random({N, K}, 4).to(DType::F32);
  Tensor idx = i32({0, 3, 6, 1, 2, 3, 6, 5, 4, 0, 1, 2, 3, 4, 5}, {N, K});
  Tensor got = Tensor::empty({N, D}, DType::F32);
  got.fill(std::nan(""));
  ops::moe_experts_small(got, x, idx, w, g, u, dn);
  ops::MoePlan plan = ops::MoePlan::build(idx, E);
  Tensor xp = Tensor::empty({N * K, D}, DType::F32), gg = Tensor::empty({N * K, F}, DType::F32),
         uu = Tensor::empty({N * K, F}, DType::F32), hh = Tensor::empty({N * K, F}, DType::F32),
         yp = Tensor::empty({N * K, D}, DType::F32), want = Tensor::empty({N, D}, DType::F32);
  ops::moe_permute(xp, x, plan);
  ops::grouped_linear(gg, xp, g, plan);
  ops::grouped_linear(uu, xp, u, plan);
  ops::swiglu_fwd(hh, gg, uu);
  ops::grouped_linear(yp, hh, dn, plan);
  ops::moe_unpermute(want, yp, w, plan);
  test::Diff d = test::diff(got, want);
  EXPECT_FALSE(d.nan);
  EXPECT_LE(d.rel, 1e-5) << test::str(d);
  EXPECT_THROW(ops::moe_experts_small(got, x, i32(std::vector<int32_t>(N * K, 7), {N, K}), w, g, u, dn),
               Error);
}

TEST(DecodeOps, ArgmaxTakesTheFirstMaximum) {
  Tensor x = random({4, 1000}, 9);
  x.data<float>()[0 * 1000 + 17] = 50;
  x.data<float>()[0 * 1000 + 900] = 50;  // tie: 17 wins
  x.data<float>()[1 * 1000 + 999] = 60;
  x.data<float>()[2 * 1000 + 0] = 70;
  Tensor ids = Tensor::empty({4}, DType::I64);
  ops::argmax_rows(ids, x);
  EXPECT_EQ(ids.data<int64_t>()[0], 17);
  EXPECT_EQ(ids.data<int64_t>()[1], 999);
  EXPECT_EQ(ids.data<int64_t>()[2], 0);
  const float* r3 = x.data<float>() + 3000;
  EXPECT_EQ(ids.data<int64_t>()[3], std::max_element(r3, r3 + 1000) - r3);
}

TEST(DecodeOps, BadInputIsRefused) {
  Tensor pool = Tensor::zeros({2, 64, 8}, DType::F32), rows = Tensor::zeros({1, 8}, DType::F32);
  try {
    ops::paged_cache_write(pool, rows, i32({128}, {1}));
    ADD_FAILURE() << "slot outside the pool accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot 128 outside the pool of 128 rows"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ops::paged_cache_write(pool, Tensor::zeros({1, 9}, DType::F32), i32({0}, {1})), Error);
  Tensor q = Tensor::zeros({1, 2, 8}, DType::F32), o = Tensor::zeros({1, 2, 6}, DType::F32);
  try {
    ops::mla_decode_paged(o, q, pool, i32({0}, {1, 1}), i32({65}, {1}), 1.0);
    ADD_FAILURE() << "length beyond the block table accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("length 65"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::mla_decode_paged(o, q, pool, i32({5}, {1, 1}), i32({3}, {1}), 1.0), Error);  // block 5
  EXPECT_THROW(ops::mla_decode_paged(o, q, pool, i32({0}, {1, 1}), i32({0}, {1}), 1.0), Error);  // empty
}

// The fused forms of a decode step against plain f64 loops (norms, rope) or the unfused ops they replace.
TEST(DecodeOps, AddRmsNormIsTheAddThenTheNorm) {
  for (int64_t D : {int64_t(7), int64_t(64)}) {
    const int64_t N = 3;
    Tensor h = random({N, D}, 1), y = random({N, D}, 2), w = random({D}, 3);
    Tensor h2 = h.clone(), out = Tensor::empty({N, D}, DType::F32), rstd = Tensor::empty({N}, DType::F32);
    ops::add_rmsnorm_fwd(h2, out, rstd, y, w, 1e-6);
    for (int64_t n = 0; n < N; ++n) {
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) {
        const float v = h.data<float>()[n * D + i] + y.data<float>()[n * D + i];
        EXPECT_EQ(h2.data<float>()[n * D + i], v);
        ss += double(v) * v;
      }
      const double r = 1.0 / std::sqrt(ss / double(D) + 1e-6);
      EXPECT_NEAR(rstd.data<float>()[n], r, 1e-5 * r);
      for (int64_t i = 0; i < D; ++i)
        EXPECT_NEAR(out.data<float>()[n * D + i],
                    double(w.data<float>()[i]) * double(h2.data<float>()[n * D + i]) * r, 1e-5)
            << "row " << n << " col " << i;
    }
  }
}

TEST(DecodeOps, PairAndSwigluProductsEqualTheirParts) {
  const int64_t N = 3, I = 40, Oa = 12, Ob = 5;
  Tensor x = random({N, I}, 1), wa = random({Oa, I}, 2, DType::BF16), wb = random({Ob, I}, 3, DType::BF16);
  Tensor a = Tensor::empty({N, Oa}, DType::F32), b = Tensor::empty({N, Ob}, DType::F32);
  ops::linear_pair(a, b, x, wa, wb);
  Tensor ar = Tensor::empty({N, Oa}, DType::F32), br = Tensor::empty({N, Ob}, DType::F32);
  ops::linear(ar, x, wa);
  ops::linear(br, x, wb);
  EXPECT_EQ(test::diff(a, ar).max_abs, 0.0);
  EXPECT_EQ(test::diff(b, br).max_abs, 0.0);
  Tensor wu = random({Oa, I}, 4, DType::BF16), h = Tensor::empty({N, Oa}, DType::F32);
  ops::linear_swiglu(h, x, wa, wu);
  Tensor u = Tensor::empty({N, Oa}, DType::F32);
  ops::linear(u, x, wu);
  for (int64_t i = 0; i < N * Oa; ++i) {
    const double g = ar.data<float>()[i];
    EXPECT_NEAR(h.data<float>()[i], g / (1 + std::exp(-g)) * u.data<float>()[i], 1e-5) << i;
  }
  EXPECT_THROW(ops::linear_pair(a, b, x, wb, wa), Error);  // outputs swapped: shapes disagree
}

TEST(DecodeOps, DecodeLatentNormsRopesAndWrites) {
  const int64_t N = 2, Q = 12, C = 16, R = 8, W = C + R;
  for (bool with_q : {true, false}) {
    Tensor cq = random({N, Q}, 1), kv = random({N, W}, 2), wq = random({Q}, 3), wkv = random({C}, 4);
    Tensor pos = Tensor::empty({N}, DType::I64), inv = Tensor::empty({R / 2}, DType::F32);
    pos.data<int64_t>()[0] = 5;
    pos.data<int64_t>()[1] = 130;
    for (int64_t i = 0; i < R / 2; ++i) inv.data<float>()[i] = float(std::pow(10000.0, -2.0 * double(i) / R));
    Tensor pool = Tensor::zeros({3, 64, W}, DType::F32), cqn = Tensor::empty({N, Q}, DType::F32);
    cqn.fill(std::nan(""));
    const Tensor slots = i32({70, 3}, {N});
    ops::mla_decode_latent({.cqn = with_q ? cqn : Tensor(),
                            .pool = pool,
                            .cq = with_q ? cq : Tensor(),
                            .kv = kv,
                            .q_norm = with_q ? wq : Tensor(),
                            .kv_norm = wkv,
                            .positions = pos,
                            .inv_freq = inv,
                            .slots = slots,
                            .attention_factor = 0.75,
                            .eps = 1e-6});
    auto norm = [](const float* x, const float* w, int64_t n, int64_t i) {
      double ss = 0;
      for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * x[j];
      return double(w[i]) * x[i] / std::sqrt(ss / double(n) + 1e-6);
    };
    for (int64_t n = 0; n < N; ++n) {
      if (with_q) {
        for (int64_t i = 0; i < Q; ++i)
          EXPECT_NEAR(cqn.data<float>()[n * Q + i], norm(cq.data<float>() + n * Q, wq.data<float>(), Q, i),
                      1e-5);
      }
      const float* row = pool.data<float>() + slots.data<int32_t>()[n] * W;
      const float* x = kv.data<float>() + n * W;
      for (int64_t i = 0; i < C; ++i) EXPECT_NEAR(row[i], norm(x, wkv.data<float>(), C, i), 1e-5) << i;
      for (int64_t i = 0; i < R / 2; ++i) {
        const double th = double(float(pos.data<int64_t>()[n]) * inv.data<float>()[i]);
        const double c = std::cos(th) * 0.75, sn = std::sin(th) * 0.75, a = x[C + 2 * i],
                     b = x[C + 2 * i + 1];
        EXPECT_NEAR(row[C + 2 * i], a * c - b * sn, 1e-5) << "pair " << i;
        EXPECT_NEAR(row[C + 2 * i + 1], a * sn + b * c, 1e-5) << "pair " << i;
      }
    }
    EXPECT_EQ(pool.data<float>()[0], 0.0f);  // other slots untouched
  }
}

TEST(DecodeOps, AbsorbQWithRopeIsRopeThenAbsorb) {
  const int64_t N = 3, H = 2, dn = 8, dv = 6, R = 4, C = 16;
  Tensor q = random({N, H, dn + R}, 1), kvb = random({H * (dn + dv), C}, 2, DType::F32, 0.1);
  Tensor pos = Tensor::empty({N}, DType::I64), inv = Tensor::empty({R / 2}, DType::F32);
  for (int64_t n = 0; n < N; ++n) pos.data<int64_t>()[n] = 3 + 40 * n;
  inv.data<float>()[0] = 1.0f;
  inv.data<float>()[1] = 0.01f;
  Tensor qa = Tensor::empty({N, H, C + R}, DType::F32), want = Tensor::empty({N, H, C + R}, DType::F32);
  const Tensor q0 = q.clone();
  const ops::RopeAt at{.positions = pos, .inv_freq = inv, .attention_factor = 1.1};
  ops::mla_absorb_q(qa, q, kvb, dn, dv, &at);
  EXPECT_EQ(test::diff(q, q0).max_abs, 0.0) << "q must not change";
  Tensor qr = q.clone();
  ops::rope_fwd(qr, pos, inv, dn, 1.1);
  ops::mla_absorb_q(want, qr, kvb, dn, dv);
  EXPECT_EQ(test::diff(qa, want).max_abs, 0.0);
  EXPECT_GT(test::diff(qr, q).max_abs, 0.1);  // the rope did rotate
}

TEST(DecodeOps, RouterDecodeIsTheGateProductThenTheRouter) {
  const int64_t N = 4, D = 24, E = 16;
  const ops::RouterParams p{.scoring = ScoringFunc::Sigmoid,
                            .method = TopkMethod::NoauxTc,
                            .n_group = 4,
                            .topk_group = 2,
                            .top_k = 3,
                            .norm_topk_prob = true,
                            .routed_scaling_factor = 2.5};
  Tensor x = random({N, D}, 1), gate = random({E, D}, 2), bias = random({E}, 3, DType::F32, 0.1);
  Tensor idx = Tensor::empty({N, 3}, DType::I32), w = Tensor::empty({N, 3}, DType::F32);
  ops::router_decode(idx, w, x, gate, bias, p);
  Tensor logits = Tensor::empty({N, E}, DType::F32), ri = Tensor::empty({N, 3}, DType::I32),
         rw = Tensor::empty({N, 3}, DType::F32);
  ops::linear(logits, x, gate);
  ops::router_fwd(ri, rw, Tensor(), logits, bias, p);
  for (int64_t i = 0; i < N * 3; ++i) EXPECT_EQ(idx.data<int32_t>()[i], ri.data<int32_t>()[i]) << i;
  EXPECT_EQ(test::diff(w, rw).max_abs, 0.0);
}

TEST(DecodeOps, SmallMoeWithSharedExpertAddsItsOutput) {
  const int64_t N = 2, K = 2, E = 4, D = 16, F = 8;
  std::vector<Tensor> g, u, dn;
  for (int64_t e = 0; e < E; ++e) {
    g.push_back(random({F, D}, uint32_t(20 + e), DType::F32, 0.2));
    u.push_back(random({F, D}, uint32_t(40 + e), DType::F32, 0.2));
    dn.push_back(random({D, F}, uint32_t(60 + e), DType::F32, 0.2));
  }
  const ops::SharedExpert sh{.gate = random({F, D}, 80, DType::F32, 0.2),
                             .up = random({F, D}, 81, DType::F32, 0.2),
                             .down = random({D, F}, 82, DType::F32, 0.2)};
  Tensor x = random({N, D}, 3), w = random({N, K}, 4), idx = i32({0, 3, 2, 1}, {N, K});
  Tensor got = Tensor::empty({N, D}, DType::F32), routed = Tensor::empty({N, D}, DType::F32);
  ops::moe_experts_small(got, x, idx, w, g, u, dn, sh);
  ops::moe_experts_small(routed, x, idx, w, g, u, dn);
  Tensor gg = Tensor::empty({N, F}, DType::F32), uu = Tensor::empty({N, F}, DType::F32),
         so = Tensor::empty({N, D}, DType::F32);
  ops::linear(gg, x, sh.gate);
  ops::linear(uu, x, sh.up);
  ops::swiglu_fwd(gg, gg, uu);
  ops::linear(so, gg, sh.down);
  ops::add_(so, routed);
  test::Diff d = test::diff(got, so);
  EXPECT_LE(d.max_abs, 1e-6) << test::str(d);
  EXPECT_GT(test::diff(got, routed).max_abs, 1e-3);  // the shared expert did contribute
}

TEST(PagedCache, BlocksAreTakenAndReturned) {
  ModelConfig cfg;
  cfg.kv_lora_rank = 8;
  cfg.qk_rope_head_dim = 4;
  PagedLatentCache c(cfg, 2, 5);
  EXPECT_EQ(c.pool(1).shape(), (Shape{5, 64, 12}));
  const int64_t a = c.add_sequence(), b = c.add_sequence();
  c.reserve(a, 65);  // 2 blocks
  c.reserve(b, 64);  // 1 block
  EXPECT_EQ(c.free_blocks(), 2);
  EXPECT_EQ(c.blocks(a), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(c.blocks(b), (std::vector<int32_t>{2}));
  EXPECT_EQ(c.slot(a, 64), 64);
  EXPECT_EQ(c.slot(b, 5), 2 * 64 + 5);
  EXPECT_THROW(c.slot(b, 64), Error);
  EXPECT_THROW(c.set_length(b, 65), Error);
  c.set_length(a, 65);
  EXPECT_EQ(c.length(a), 65);
  try {
    c.reserve(b, 64 * 4);
    ADD_FAILURE() << "reserved more blocks than free";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 3 more blocks"), std::string::npos) << e.what();
  }
  c.release(a);
  EXPECT_EQ(c.free_blocks(), 4);
  EXPECT_THROW(c.length(a), Error);
  const int64_t d = c.add_sequence();  // reuses a's id and its blocks first
  EXPECT_EQ(d, a);
  c.reserve(d, 1);
  EXPECT_EQ(c.blocks(d), (std::vector<int32_t>{0}));
}

}  // namespace
}  // namespace dseek
