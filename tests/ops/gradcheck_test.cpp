// gradcheck_test.cpp — every op's backward against central finite differences in f64 (DESIGN.md:
// "Every backward has a finite-difference check").
#include <gtest/gtest.h>

#include <cmath>

#include "gradcheck.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/flash_attention.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/router.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dseek {
namespace {

using test::dot;
using test::expect_grad;
using test::randn;

TEST(GradCheck, Linear) {
  std::mt19937 rng(1);
  Tensor x = randn({5, 7}, rng), w = randn({4, 7}, rng), r = randn({5, 4}, rng);
  Tensor y = Tensor::empty({5, 4}, DType::F64), dx = Tensor::empty({5, 7}, DType::F64),
         dw = Tensor::zeros({4, 7}, DType::F64);
  ops::linear_bwd(dx, dw, r, x, w);
  auto f = [&] {
    ops::linear(y, x, w);
    return dot(r, y);
  };
  expect_grad("linear dx", x, dx, f, 35);
  expect_grad("linear dw", w, dw, f, 28);
}

TEST(GradCheck, RmsNorm) {
  std::mt19937 rng(2);
  Tensor x = randn({3, 16}, rng), w = randn({16}, rng), r = randn({3, 16}, rng);
  Tensor y = Tensor::empty({3, 16}, DType::F64), rstd = Tensor::empty({3}, DType::F64);
  ops::rmsnorm_fwd(y, rstd, x, w, 1e-6);
  Tensor dx = Tensor::empty({3, 16}, DType::F64), dw = Tensor::zeros({16}, DType::F64);
  ops::rmsnorm_bwd(dx, dw, r, x, w, rstd);
  auto f = [&] {
    ops::rmsnorm_fwd(y, Tensor(), x, w, 1e-6);
    return dot(r, y);
  };
  expect_grad("rmsnorm dx", x, dx, f, 48);
  expect_grad("rmsnorm dw", w, dw, f, 16);
}

TEST(GradCheck, RopeWithYarnFactor) {
  std::mt19937 rng(3);
  Tensor x = randn({6, 2, 10}, rng), r = randn({6, 2, 10}, rng);
  Tensor pos = Tensor::empty({6}, DType::I64), inv = Tensor::empty({4}, DType::F32);
  for (int i = 0; i < 6; ++i) pos.data<int64_t>()[i] = 3 * i + 1;
  for (int i = 0; i < 4; ++i) inv.data<float>()[i] = std::pow(10000.0f, -0.25f * i) / (i > 1 ? 4.0f : 1.0f);
  Tensor dx = r.clone();
  ops::rope_bwd(dx, pos, inv, 2, 1.3);
  auto f = [&] {
    Tensor y = x.clone();
    ops::rope_fwd(y, pos, inv, 2, 1.3);
    return dot(r, y);
  };
  expect_grad("rope dx", x, dx, f, 120);
}

TEST(GradCheck, CausalAttention) {
  std::mt19937 rng(4);
  const int64_t T = 5, H = 3, Dq = 6, Dv = 4;
  Tensor q = randn({T, H, Dq}, rng), k = randn({T, H, Dq}, rng), v = randn({T, H, Dv}, rng),
         r = randn({T, H, Dv}, rng);
  Tensor out = Tensor::empty({T, H, Dv}, DType::F64), probs = Tensor::empty({H, T, T}, DType::F64);
  ops::attention_fwd(out, probs, q, k, v, 0.4, 0);
  Tensor dq = Tensor::empty(q.shape(), DType::F64), dk = Tensor::empty(k.shape(), DType::F64),
         dv = Tensor::empty(v.shape(), DType::F64);
  ops::attention_bwd(dq, dk, dv, r, q, k, v, probs, 0.4, 0);
  auto f = [&] {
    ops::attention_fwd(out, Tensor(), q, k, v, 0.4, 0);
    return dot(r, out);
  };
  expect_grad("attention dq", q, dq, f, 90);
  expect_grad("attention dk", k, dk, f, 90);
  expect_grad("attention dv", v, dv, f, 60);
}

// Sequences longer than the CPU kernel's 64-query blocks: products that stop at each block's last key,
// dK/dV summed over blocks, a short last block; also a query offset (a cache-style q_pos0).
TEST(GradCheck, CausalAttentionAcrossQueryBlocks) {
  std::mt19937 rng(16);
  const int64_t T = 150, H = 2, Dq = 6, Dv = 4;
  for (const int64_t pos0 : {int64_t(0), int64_t(37)}) {
    const int64_t S = pos0 + T;
    Tensor q = randn({T, H, Dq}, rng), k = randn({S, H, Dq}, rng), v = randn({S, H, Dv}, rng),
           r = randn({T, H, Dv}, rng);
    Tensor out = Tensor::empty({T, H, Dv}, DType::F64), probs = Tensor::empty({H, T, S}, DType::F64);
    ops::attention_fwd(out, probs, q, k, v, 0.5, pos0);
    for (int64_t h = 0; h < H; ++h)  // masked entries are exactly zero, each row sums to one
      for (int64_t t = 0; t < T; ++t) {
        double sum = 0;
        for (int64_t j = 0; j < S; ++j) {
          const double pj = probs.data<double>()[(h * T + t) * S + j];
          if (j > pos0 + t) {
            ASSERT_EQ(pj, 0.0) << "h " << h << " t " << t << " j " << j;
          }
          sum += pj;
        }
        ASSERT_NEAR(sum, 1.0, 1e-12);
      }
    Tensor dq = Tensor::empty(q.shape(), DType::F64), dk = Tensor::empty(k.shape(), DType::F64),
           dv = Tensor::empty(v.shape(), DType::F64);
    ops::attention_bwd(dq, dk, dv, r, q, k, v, probs, 0.5, pos0);
    auto f = [&] {
      ops::attention_fwd(out, Tensor(), q, k, v, 0.5, pos0);
      return dot(r, out);
    };
    expect_grad("blocks dq", q, dq, f, 20);
    expect_grad("blocks dk", k, dk, f, 20);
    expect_grad("blocks dv", v, dv, f, 20);
  }
  const std::vector<int64_t> cu = {0, 150, 220};  // varlen: 3 blocks (last short) and 2 blocks
  const int64_t N = cu.back();
  Tensor q = randn({N, H, Dq}, rng), k = randn({N, H, Dq}, rng), v = randn({N, H, Dv}, rng),
         r = randn({N, H, Dv}, rng);
  Tensor out = Tensor::empty({N, H, Dv}, DType::F64),
         probs = Tensor::empty({ops::varlen_probs_size(cu, H)}, DType::F64);
  ops::attention_fwd_varlen(out, probs, q, k, v, cu, 0.3);
  Tensor dq = Tensor::empty(q.shape(), DType::F64), dk = Tensor::empty(k.shape(), DType::F64),
         dv = Tensor::empty(v.shape(), DType::F64);
  ops::attention_bwd_varlen(dq, dk, dv, r, q, k, v, probs, cu, 0.3);
  auto f = [&] {
    ops::attention_fwd_varlen(out, Tensor(), q, k, v, cu, 0.3);
    return dot(r, out);
  };
  expect_grad("varlen blocks dq", q, dq, f, 20);
  expect_grad("varlen blocks dk", k, dk, f, 20);
  expect_grad("varlen blocks dv", v, dv, f, 20);
}

TEST(GradCheck, VarlenAttentionMatchesPerSequenceAndDifferences) {
  std::mt19937 rng(15);
  const int64_t H = 2, Dq = 5, Dv = 3;
  const std::vector<int64_t> cu = {0, 4, 4, 11};  // lengths 4, 0, 7
  const int64_t N = cu.back();
  Tensor q = randn({N, H, Dq}, rng), k = randn({N, H, Dq}, rng), v = randn({N, H, Dv}, rng),
         r = randn({N, H, Dv}, rng);
  Tensor out = Tensor::empty({N, H, Dv}, DType::F64),
         probs = Tensor::empty({ops::varlen_probs_size(cu, H)}, DType::F64);
  ops::attention_fwd_varlen(out, probs, q, k, v, cu, 0.7);
  for (size_t b = 0; b + 1 < cu.size(); ++b) {  // twin oracle: one sequence at a time
    const int64_t L = cu[b + 1] - cu[b];
    if (L == 0) continue;
    Tensor o1 = Tensor::empty({L, H, Dv}, DType::F64);
    ops::attention_fwd(o1, Tensor(), q.slice(cu[b], L), k.slice(cu[b], L), v.slice(cu[b], L), 0.7, 0);
    EXPECT_LT(test::diff(o1, out.slice(cu[b], L)).max_abs, 1e-12);
  }
  Tensor dq = Tensor::empty(q.shape(), DType::F64), dk = Tensor::empty(k.shape(), DType::F64),
         dv = Tensor::empty(v.shape(), DType::F64);
  ops::attention_bwd_varlen(dq, dk, dv, r, q, k, v, probs, cu, 0.7);
  auto f = [&] {
    ops::attention_fwd_varlen(out, Tensor(), q, k, v, cu, 0.7);
    return dot(r, out);
  };
  expect_grad("varlen dq", q, dq, f, 110);
  expect_grad("varlen dk", k, dk, f, 110);
  expect_grad("varlen dv", v, dv, f, 66);
}

// The training flash attention's CPU twin (the reference the GPU kernels are held to): its forward
// equals the prefill attention, its lse is each row's log-sum-exp, and its backward (probabilities
// rebuilt from lse) matches finite differences for q, kv (k_nope and v) and the shared rope key.
TEST(GradCheck, MlaFlashTrainingAttention) {
  std::mt19937 rng(21);
  const int64_t H = 3, dn = 4, R = 2, dv = 3;
  const std::vector<int64_t> cu = {0, 5, 5, 12};  // lengths 5, 0, 7
  const int64_t N = cu.back();
  const double scale = 0.45;
  Tensor q = randn({N, H, dn + R}, rng), kv = randn({N, H, dn + dv}, rng), kpe = randn({N, R}, rng),
         r = randn({N, H, dv}, rng);
  Tensor out = Tensor::empty({N, H, dv}, DType::F64), lse = Tensor::empty({H, N}, DType::F64),
         ref = Tensor::empty({N, H, dv}, DType::F64);
  ops::mla_flash_train_fwd(out, lse, q, kv, kpe, cu, scale);
  ops::mla_flash_fwd(ref, q, kv, kpe, cu, cu, scale, false);
  EXPECT_LT(test::diff(out, ref).max_abs, 1e-12);
  // lse of row 7 (sequence 2's third row), head 1, from its three visible keys
  double m = -1e300, l = 0;
  std::vector<double> sc;
  for (int64_t j = 5; j <= 7; ++j) {
    double d = 0;
    for (int64_t c = 0; c < dn; ++c)
      d += q.data<double>()[(7 * H + 1) * (dn + R) + c] * kv.data<double>()[(j * H + 1) * (dn + dv) + c];
    for (int64_t c = 0; c < R; ++c)
      d += q.data<double>()[(7 * H + 1) * (dn + R) + dn + c] * kpe.data<double>()[j * R + c];
    sc.push_back(scale * d);
    m = std::max(m, scale * d);
  }
  for (double x : sc) l += std::exp(x - m);
  EXPECT_NEAR(lse.data<double>()[1 * N + 7], m + std::log(l), 1e-12);
  Tensor dq = Tensor::empty(q.shape(), DType::F64), dkv = Tensor::empty(kv.shape(), DType::F64),
         dkpe = Tensor::empty(kpe.shape(), DType::F64);
  ops::mla_flash_bwd(dq, dkv, dkpe, r, out, lse, q, kv, kpe, cu, scale);
  auto f = [&] {
    ops::mla_flash_fwd(out, q, kv, kpe, cu, cu, scale, false);
    return dot(r, out);
  };
  expect_grad("flash dq", q, dq, f, 72);
  expect_grad("flash dkv", kv, dkv, f, 84);
  expect_grad("flash dkpe", kpe, dkpe, f, 24);
}

TEST(GradCheck, SwiGlu) {
  std::mt19937 rng(5);
  Tensor g = randn({4, 9}, rng, 2.0), u = randn({4, 9}, rng), r = randn({4, 9}, rng);
  Tensor y = Tensor::empty({4, 9}, DType::F64), dg = Tensor::empty({4, 9}, DType::F64),
         du = Tensor::empty({4, 9}, DType::F64);
  ops::swiglu_bwd(dg, du, r, g, u);
  auto f = [&] {
    ops::swiglu_fwd(y, g, u);
    return dot(r, y);
  };
  expect_grad("swiglu dgate", g, dg, f, 36);
  expect_grad("swiglu dup", u, du, f, 36);
}

TEST(GradCheck, Embedding) {
  std::mt19937 rng(6);
  Tensor table = randn({7, 5}, rng), r = randn({6, 5}, rng), ids = Tensor::empty({6}, DType::I64);
  const int64_t id[6] = {3, 1, 3, 6, 0, 3};  // repeats accumulate
  std::copy(id, id + 6, ids.data<int64_t>());
  Tensor y = Tensor::empty({6, 5}, DType::F64), dt = Tensor::zeros({7, 5}, DType::F64);
  ops::embedding_bwd(dt, ids, r);
  auto f = [&] {
    ops::embedding_fwd(y, ids, table);
    return dot(r, y);
  };
  expect_grad("embedding dtable", table, dt, f, 35);
}

void check_router(ScoringFunc sf, TopkMethod m, bool norm, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t N = 6, E = 8, K = 3;
  ops::RouterParams p{.scoring = sf,
                      .method = m,
                      .n_group = 4,
                      .topk_group = 2,
                      .top_k = K,
                      .norm_topk_prob = norm,
                      .routed_scaling_factor = 2.5};
  Tensor logits = randn({N, E}, rng, 2.0), r = randn({N, K}, rng);
  Tensor bias = Tensor::empty({E}, DType::F32);
  for (int e = 0; e < E; ++e) bias.data<float>()[e] = 0.05f * float(e % 3);
  Tensor idx = Tensor::empty({N, K}, DType::I32), w = Tensor::empty({N, K}, DType::F64),
         scores = Tensor::empty({N, E}, DType::F64);
  const Tensor b = m == TopkMethod::NoauxTc ? bias : Tensor();
  ops::router_fwd(idx, w, scores, logits, b, p);
  Tensor dl = Tensor::empty({N, E}, DType::F64);
  ops::router_bwd(dl, r, idx, scores, p);
  // Balance loss on top: its gradient adds into dl.
  const double alpha = 0.3;
  ops::router_balance_loss(dl, scores, idx, 3, alpha, p);
  Tensor idx2 = Tensor::empty({N, K}, DType::I32);
  auto f = [&] {
    ops::router_fwd(idx2, w, scores, logits, b, p);
    for (int64_t i = 0; i < N * K; ++i)
      EXPECT_EQ(idx2.data<int32_t>()[i], idx.data<int32_t>()[i]) << "a perturbation changed the routing";
    return dot(r, w) + ops::router_balance_loss(Tensor(), scores, idx, 3, alpha, p);
  };
  expect_grad("router dlogits", logits, dl, f, 48);
}

TEST(GradCheck, RouterSigmoidNoauxTc) {
  check_router(ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 8);
}
TEST(GradCheck, RouterSoftmaxGroupLimited) {
  check_router(ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, false, 9);
}
TEST(GradCheck, RouterSoftmaxGreedyNormalized) {
  check_router(ScoringFunc::Softmax, TopkMethod::Greedy, true, 10);
}

TEST(GradCheck, MoePermuteGroupedLinearUnpermute) {
  std::mt19937 rng(16);
  const int64_t N = 6, K = 2, E = 4, D = 5, F = 3;
  Tensor idx = Tensor::empty({N, K}, DType::I32);
  const int32_t ids[12] = {0, 2, 1, 2, 0, 3, 2, 3, 0, 1, 1, 2};  // expert 3 twice, every expert used
  std::copy(ids, ids + 12, idx.data<int32_t>());
  const ops::MoePlan plan = ops::MoePlan::build(idx, E);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 3, 6, 10, 12}));
  Tensor x = randn({N, D}, rng), gw = randn({N, K}, rng), r = randn({N, F}, rng);
  std::vector<Tensor> w;
  for (int e = 0; e < E; ++e) w.push_back(randn({F, D}, rng));
  Tensor xp = Tensor::empty({N * K, D}, DType::F64), yp = Tensor::empty({N * K, F}, DType::F64),
         out = Tensor::empty({N, F}, DType::F64);
  auto f = [&] {
    ops::moe_permute(xp, x, plan);
    ops::grouped_linear(yp, xp, w, plan);
    ops::moe_unpermute(out, yp, gw, plan);
    return dot(r, out);
  };
  f();
  // Independent math: out[n] = Σ_k gw[n,k] · w[idx[n,k]] x[n].
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < F; ++o) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) {
        double y = 0;
        for (int64_t i = 0; i < D; ++i)
          y += w[size_t(ids[n * K + k])].data<double>()[o * D + i] * x.data<double>()[n * D + i];
        want += gw.data<double>()[n * K + k] * y;
      }
      EXPECT_NEAR(out.data<double>()[n * F + o], want, 1e-12);
    }
  Tensor dyp = Tensor::empty({N * K, F}, DType::F64), dgw = Tensor::empty({N, K}, DType::F64),
         dxp = Tensor::empty({N * K, D}, DType::F64), dx = Tensor::empty({N, D}, DType::F64);
  std::vector<Tensor> dw;
  for (int e = 0; e < E; ++e) dw.push_back(Tensor::zeros({F, D}, DType::F64));
  ops::moe_unpermute_bwd(dyp, dgw, r, yp, gw, plan);
  ops::grouped_linear_bwd(dxp, dw, dyp, xp, w, plan);
  ops::moe_permute_bwd(dx, dxp, plan);
  expect_grad("moe dx", x, dx, f, 30);
  expect_grad("moe dgate", gw, dgw, f, 12);
  for (int e = 0; e < E; ++e) expect_grad("moe dw", w[size_t(e)], dw[size_t(e)], f, 15);
}

// The experts' SwiGLU MLP as the training step runs it: grouped_swiglu (h, g, u in one op), the down
// projection, then grouped_down_swiglu_bwd (dg, du and the down matrices' gradients from dy) and
// grouped_linear_pair_bwd (the gate and up matrices' gradients and dx) — against finite differences of
// Σ r ⊙ y, y = (silu(x·wgᵀ) ⊙ (x·wuᵀ))·wdᵀ per expert.
TEST(GradCheck, GroupedSwigluMlp) {
  std::mt19937 rng(21);
  const int64_t M = 9, E = 3, D = 5, F = 4;
  ops::MoePlan plan;
  plan.experts = E;
  plan.top_k = 1;
  plan.tokens = M;
  plan.offsets = {0, 4, 4, 9};  // an expert without rows
  Tensor x = randn({M, D}, rng), r = randn({M, D}, rng);
  std::vector<Tensor> wg, wu, wd;
  for (int e = 0; e < E; ++e) {
    wg.push_back(randn({F, D}, rng, 0.7));
    wu.push_back(randn({F, D}, rng, 0.7));
    wd.push_back(randn({D, F}, rng, 0.7));
  }
  Tensor h = Tensor::empty({M, F}, DType::F64), g = Tensor::empty({M, F}, DType::F64),
         u = Tensor::empty({M, F}, DType::F64), y = Tensor::empty({M, D}, DType::F64);
  auto f = [&] {
    ops::grouped_swiglu(h, g, u, x, wg, wu, plan);
    ops::grouped_linear(y, h, wd, plan);
    return dot(r, y);
  };
  f();
  for (int64_t i = 0; i < M * F; ++i) {  // independent math: h = silu(g)·u
    const double gv = g.data<double>()[i];
    EXPECT_NEAR(h.data<double>()[i], gv / (1 + std::exp(-gv)) * u.data<double>()[i], 1e-14);
  }
  Tensor dg = Tensor::empty({M, F}, DType::F64), du = Tensor::empty({M, F}, DType::F64),
         dx = Tensor::empty({M, D}, DType::F64);
  std::vector<Tensor> dwg, dwu, dwd;
  for (int e = 0; e < E; ++e) {
    dwg.push_back(Tensor::zeros({F, D}, DType::F64));
    dwu.push_back(Tensor::zeros({F, D}, DType::F64));
    dwd.push_back(Tensor::zeros({D, F}, DType::F64));
  }
  ops::grouped_down_swiglu_bwd(dg, du, dwd, r, h, wd, g, u, plan);
  ops::grouped_linear_pair_bwd(dx, dwg, dwu, dg, du, x, wg, wu, plan);
  expect_grad("grouped swiglu mlp dx", x, dx, f, 30);
  for (int e : {0, 2}) {
    expect_grad("grouped swiglu mlp dw_gate", wg[size_t(e)], dwg[size_t(e)], f, 12);
    expect_grad("grouped swiglu mlp dw_up", wu[size_t(e)], dwu[size_t(e)], f, 12);
    expect_grad("grouped swiglu mlp dw_down", wd[size_t(e)], dwd[size_t(e)], f, 12);
  }
}

// The pre-norm residual's backward in one op: y = h + rmsnorm(h)·w·(scalar r), dh_in (ones) +=
// the norm's input gradient.
TEST(GradCheck, RmsNormBackwardAdd) {
  std::mt19937 rng(22);
  const int64_t N = 4, D = 6;
  Tensor x = randn({N, D}, rng), w = randn({D}, rng), r = randn({N, D}, rng);
  Tensor y = Tensor::empty({N, D}, DType::F64), rstd = Tensor::empty({N}, DType::F64);
  auto f = [&] {  // Σ r ⊙ (x + rmsnorm(x)): the residual's identity path plus the norm's
    ops::rmsnorm_fwd(y, rstd, x, w, 1e-6);
    double s = dot(r, y);
    for (int64_t i = 0; i < N * D; ++i) s += r.data<double>()[i] * x.data<double>()[i];
    return s;
  };
  f();
  Tensor dh = r.clone(), dw = Tensor::zeros({D}, DType::F64);  // dh starts as the identity path's r
  ops::rmsnorm_bwd_add(dh, Tensor(), dw, r, x, w, rstd);
  expect_grad("rmsnorm_bwd_add dh", x, dh, f, 24);
  expect_grad("rmsnorm_bwd_add dw", w, dw, f, 6);
}

TEST(GradCheck, LmHeadCrossEntropy) {
  std::mt19937 rng(11);
  const int64_t N = 7, D = 6, V = 11;
  Tensor h = randn({N, D}, rng), w = randn({V, D}, rng), tg = Tensor::empty({N}, DType::I64);
  for (int64_t i = 0; i < N; ++i) tg.data<int64_t>()[i] = i == 3 ? -1 : int64_t(rng() % V);
  Tensor dh = Tensor::empty({N, D}, DType::F64), dw = Tensor::zeros({V, D}, DType::F64);
  auto r0 = ops::lm_head_cross_entropy(dh, dw, h, w, tg, 0.5);
  EXPECT_EQ(r0.count, N - 1);
  auto f = [&] { return 0.5 * ops::lm_head_cross_entropy(Tensor(), Tensor(), h, w, tg, 1.0).loss_sum; };
  expect_grad("cross-entropy dh", h, dh, f, 42);
  expect_grad("cross-entropy dw", w, dw, f, 66);
  for (int64_t d = 0; d < D; ++d)
    EXPECT_EQ(dh.data<double>()[3 * D + d], 0.0) << "untargeted row has a gradient";
}

}  // namespace
}  // namespace dseek
