// decode_ops_test.cpp — the CPU decode ops over the paged latent cache (ops/decode.h) against independent
// references: rows scattered through randomly ordered blocks and attended with mla_decode_paged equal
// the contiguous absorbed attention (ops::mla_absorbed_fwd, BLAS-based) of each sequence; the all-heads
// absorptions equal per-head BLAS products (the form mla.cpp's contiguous path uses); the paged cache's
// block bookkeeping; bad input refused with a clear message.
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
