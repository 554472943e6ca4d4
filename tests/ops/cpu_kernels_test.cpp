// cpu_kernels_test.cpp — the CPU training kernels' fast paths against independent references: the
// AVX2 e^x against std::exp, the f32 ops (vectorised softmax, cross-entropy, SwiGLU, RMSNorm, blocked
// attention) against the same ops in f64 (whose backward the finite-difference checks hold), the
// threaded GEMM splits and grouped expert products against plain loops, the column-block mover, and
// the vectorised AdamW against its formula (DESIGN.md "CPU backend").
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "gradcheck.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/vec.h"
#include "ops/cross_entropy.h"
#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/moe.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dseek {
namespace {

using test::randn;

// Runs the body with `n` OpenMP threads, then restores the count.
struct Threads {
  int keep;
  explicit Threads(int n) : keep(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(keep); }
};

Tensor f32(const Tensor& t) {
  return t.to(DType::F32);
}

TEST(CpuKernels, ExpMatchesStdExpWithinThreeUlp) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-87.0f, 88.0f);
  double worst = 0;
  for (int i = 0; i < 200000; i += 8) {
    alignas(32) float x[8], y[8];
    for (float& v : x) v = i < 8 ? float(i) * 0.1f - 0.4f : u(rng);  // include values near 0
    _mm256_store_ps(y, ops::cpu::vec::exp8(_mm256_load_ps(x)));
    for (int j = 0; j < 8; ++j) {
      const double ref = std::exp(double(x[j]));
      worst = std::max(worst, std::fabs(double(y[j]) - ref) / ref);
    }
  }
  EXPECT_LT(worst, 3.6e-7);  // 3 ulp of f32
  alignas(32) float x[8] = {NAN, -INFINITY, -1000.0f, 0.0f, 1.0f, -1.0f, 88.0f, -87.0f}, y[8];
  _mm256_store_ps(y, ops::cpu::vec::exp8(_mm256_load_ps(x)));
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_LE(y[1], 1.7e-38f);  // clamped to e^-87
  EXPECT_LE(y[2], 1.7e-38f);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_NEAR(y[4], 2.718281828f, 1e-6f);
  EXPECT_NEAR(y[5], 0.367879441f, 1e-7f);
  EXPECT_TRUE(std::isfinite(y[6]));
}

TEST(CpuKernels, F32AttentionAcrossBlocksMatchesF64) {
  Threads th(3);
  std::mt19937 rng(2);
  const int64_t H = 3, Dq = 12, Dv = 8;
  const std::vector<int64_t> cu = {0, 150, 150, 283};  // 3 blocks (short last), empty, 3 blocks
  const int64_t N = cu.back();
  Tensor q = randn({N, H, Dq}, rng), k = randn({N, H, Dq}, rng), v = randn({N, H, Dv}, rng),
         r = randn({N, H, Dv}, rng);
  const int64_t P = ops::varlen_probs_size(cu, H);
  Tensor o64 = Tensor::empty({N, H, Dv}, DType::F64), p64 = Tensor::empty({P}, DType::F64);
  Tensor o32 = Tensor::empty({N, H, Dv}, DType::F32), p32 = Tensor::empty({P}, DType::F32);
  ops::attention_fwd_varlen(o64, p64, q, k, v, cu, 0.4);
  ops::attention_fwd_varlen(o32, p32, f32(q), f32(k), f32(v), cu, 0.4);
  EXPECT_LT(test::diff(o32, o64).rel, 1e-5) << test::str(test::diff(o32, o64));
  EXPECT_LT(test::diff(p32, p64).rel, 1e-5) << test::str(test::diff(p32, p64));
  Tensor dq64 = Tensor::empty(q.shape(), DType::F64), dk64 = Tensor::empty(k.shape(), DType::F64),
         dv64 = Tensor::empty(v.shape(), DType::F64);
  Tensor dq32 = Tensor::empty(q.shape(), DType::F32), dk32 = Tensor::empty(k.shape(), DType::F32),
         dv32 = Tensor::empty(v.shape(), DType::F32);
  ops::attention_bwd_varlen(dq64, dk64, dv64, r, q, k, v, p64, cu, 0.4);
  ops::attention_bwd_varlen(dq32, dk32, dv32, f32(r), f32(q), f32(k), f32(v), p32, cu, 0.4);
  EXPECT_LT(test::diff(dq32, dq64).rel, 1e-5) << test::str(test::diff(dq32, dq64));
  EXPECT_LT(test::diff(dk32, dk64).rel, 1e-5) << test::str(test::diff(dk32, dk64));
  EXPECT_LT(test::diff(dv32, dv64).rel, 1e-5) << test::str(test::diff(dv32, dv64));
}

TEST(CpuKernels, F32CrossEntropySwiGluRmsNormMatchF64) {
  Threads th(2);
  std::mt19937 rng(3);
  {  // V = 301: the vector loops' partial last lane group
    const int64_t N = 70, D = 24, V = 301;
    Tensor h = randn({N, D}, rng), w = randn({V, D}, rng, 0.5), t = Tensor::empty({N}, DType::I64);
    for (int64_t i = 0; i < N; ++i) t.data<int64_t>()[i] = i % 7 == 3 ? -1 : int64_t(rng() % V);
    Tensor dh64 = Tensor::empty({N, D}, DType::F64), dw64 = Tensor::zeros({V, D}, DType::F64);
    Tensor dh32 = Tensor::empty({N, D}, DType::F32), dw32 = Tensor::zeros({V, D}, DType::F32);
    auto r64 = ops::lm_head_cross_entropy(dh64, dw64, h, w, t, 0.01);
    auto r32 = ops::lm_head_cross_entropy(dh32, dw32, f32(h), f32(w), t, 0.01);
    EXPECT_EQ(r32.count, r64.count);
    EXPECT_NEAR(r32.loss_sum / r32.count, r64.loss_sum / r64.count, 1e-5);
    EXPECT_LT(test::diff(dh32, dh64).rel, 1e-5) << test::str(test::diff(dh32, dh64));
    EXPECT_LT(test::diff(dw32, dw64).rel, 1e-5) << test::str(test::diff(dw32, dw64));
  }
  {
    const int64_t n = 1003;
    Tensor g = randn({n}, rng, 3.0), u = randn({n}, rng), d = randn({n}, rng);
    Tensor y64 = Tensor::empty({n}, DType::F64), y32 = Tensor::empty({n}, DType::F32);
    ops::swiglu_fwd(y64, g, u);
    ops::swiglu_fwd(y32, f32(g), f32(u));
    EXPECT_LT(test::diff(y32, y64).rel, 1e-6) << test::str(test::diff(y32, y64));
    Tensor dg64 = Tensor::empty({n}, DType::F64), du64 = Tensor::empty({n}, DType::F64);
    Tensor dg32 = Tensor::empty({n}, DType::F32), du32 = Tensor::empty({n}, DType::F32);
    ops::swiglu_bwd(dg64, du64, d, g, u);
    ops::swiglu_bwd(dg32, du32, f32(d), f32(g), f32(u));
    EXPECT_LT(test::diff(dg32, dg64).rel, 1e-6) << test::str(test::diff(dg32, dg64));
    EXPECT_LT(test::diff(du32, du64).rel, 1e-6) << test::str(test::diff(du32, du64));
  }
  {  // 130 rows: the backward's 64-row blocks, the last one short; D = 37 leaves a lane tail
    const int64_t N = 130, D = 37;
    Tensor x = randn({N, D}, rng), w = randn({D}, rng), dy = randn({N, D}, rng);
    Tensor y64 = Tensor::empty({N, D}, DType::F64), s64 = Tensor::empty({N}, DType::F64);
    Tensor y32 = Tensor::empty({N, D}, DType::F32), s32 = Tensor::empty({N}, DType::F32);
    ops::rmsnorm_fwd(y64, s64, x, w, 1e-6);
    ops::rmsnorm_fwd(y32, s32, f32(x), f32(w), 1e-6);
    EXPECT_LT(test::diff(y32, y64).rel, 1e-6) << test::str(test::diff(y32, y64));
    Tensor dx64 = Tensor::empty({N, D}, DType::F64), dw64 = Tensor::zeros({D}, DType::F64);
    Tensor dx32 = Tensor::empty({N, D}, DType::F32), dw32 = Tensor::zeros({D}, DType::F32);
    ops::rmsnorm_bwd(dx64, dw64, dy, x, w, s64);
    ops::rmsnorm_bwd(dx32, dw32, f32(dy), f32(x), f32(w), s32);
    EXPECT_LT(test::diff(dx32, dx64).rel, 1e-5) << test::str(test::diff(dx32, dx64));
    EXPECT_LT(test::diff(dw32, dw64).rel, 1e-5) << test::str(test::diff(dw32, dw64));
  }
}

// C = alpha · op(A) · op(B) + beta · C in f64 loops.
std::vector<double> naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                               const std::vector<float>& A, const std::vector<float>& B, float beta,
                               const std::vector<float>& C) {
  std::vector<double> out(size_t(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t p = 0; p < K; ++p)
        s += double(ta ? A[size_t(p * M + i)] : A[size_t(i * K + p)]) *
             double(tb ? B[size_t(j * K + p)] : B[size_t(p * N + j)]);
      out[size_t(i * N + j)] = alpha * s + beta * double(C[size_t(i * N + j)]);
    }
  return out;
}

TEST(CpuKernels, ThreadedGemmSplitsMatchLoopsAndRepeatExactly) {
  Threads th(4);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  struct Case {
    bool ta, tb;
    int64_t M, N, K;
    float beta;
  };
  // With 4 threads: a weight gradient (few rows, long inner dimension: split K, 63 M multiply-adds), a
  // tall product (rows), a wide one (columns), and one below the threading threshold.
  for (const Case c : {Case{true, false, 96, 80, 8192, 1.0f}, Case{false, true, 2048, 64, 96, 0.0f},
                       Case{false, false, 8, 6000, 200, 0.5f}, Case{false, false, 5, 6, 7, 0.0f}}) {
    std::vector<float> A(size_t(c.M * c.K)), B(size_t(c.K * c.N)), C0(size_t(c.M * c.N));
    for (float& x : A) x = nd(rng);
    for (float& x : B) x = nd(rng);
    for (float& x : C0) x = nd(rng);
    const std::vector<double> ref = naive_gemm(c.ta, c.tb, c.M, c.N, c.K, 0.75f, A, B, c.beta, C0);
    std::vector<float> C1 = C0, C2 = C0;
    for (std::vector<float>* C : {&C1, &C2})
      ops::cpu::gemm(c.ta, c.tb, c.M, c.N, c.K, 0.75f, A.data(), c.ta ? c.M : c.K, B.data(), c.tb ? c.K : c.N,
                     c.beta, C->data(), c.N);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (C1[i] - ref[i]) * (C1[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << c.M << "x" << c.N << "x" << c.K;
    EXPECT_EQ(C1, C2) << "the same call twice gave different bits, " << c.M << "x" << c.N << "x" << c.K;
  }
}

TEST(CpuKernels, GroupedExpertProductsInPiecesMatchLoops) {
  Threads th(4);
  std::mt19937 rng(5);
  const int64_t T = 300, Kk = 2, E = 5, I = 16, O = 40;
  Tensor idx = Tensor::empty({T, Kk}, DType::I32);
  for (int64_t t = 0; t < T; ++t) {  // expert 3 gets nothing, expert 0 most tokens
    idx.data<int32_t>()[t * Kk] = t % 3 == 0 ? 0 : int32_t(rng() % 3);
    idx.data<int32_t>()[t * Kk + 1] = 4;
  }
  const ops::MoePlan plan = ops::MoePlan::build(idx, E);
  const int64_t M = T * Kk;
  Tensor x = f32(randn({M, I}, rng)), dy = f32(randn({M, O}, rng));
  std::vector<Tensor> w, dw;
  for (int64_t e = 0; e < E; ++e) {
    w.push_back(f32(randn({O, I}, rng)));
    dw.push_back(f32(randn({O, I}, rng)));  // gradients accumulate onto what is there
  }
  std::vector<Tensor> dw0;
  for (const Tensor& t : dw) dw0.push_back(t.clone());
  Tensor y = Tensor::empty({M, O}, DType::F32), dx = Tensor::empty({M, I}, DType::F32);
  ops::grouped_linear(y, x, w, plan);
  ops::grouped_linear_bwd(dx, dw, dy, x, w, plan);
  auto at = [](const Tensor& t, int64_t r, int64_t c) { return double(t.data<float>()[r * t.size(1) + c]); };
  double worst = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = plan.offsets[size_t(e)]; r < plan.offsets[size_t(e) + 1]; ++r) {
      for (int64_t o = 0; o < O; ++o) {
        double s = 0;
        for (int64_t i = 0; i < I; ++i) s += at(x, r, i) * at(w[size_t(e)], o, i);
        worst = std::max(worst, std::fabs(at(y, r, o) - s));
      }
      for (int64_t i = 0; i < I; ++i) {
        double s = 0;
        for (int64_t o = 0; o < O; ++o) s += at(dy, r, o) * at(w[size_t(e)], o, i);
        worst = std::max(worst, std::fabs(at(dx, r, i) - s));
      }
    }
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        double s = at(dw0[size_t(e)], o, i);
        for (int64_t r = plan.offsets[size_t(e)]; r < plan.offsets[size_t(e) + 1]; ++r)
          s += at(dy, r, o) * at(x, r, i);
        worst = std::max(worst, std::fabs(at(dw[size_t(e)], o, i) - s));
      }
  EXPECT_LT(worst, 1e-4);
}

TEST(CpuKernels, ColumnBlockMoverCopiesAndAddsInOrder) {
  std::mt19937 rng(6);
  const int64_t R = 9;
  Tensor a = randn({R, 10}, rng), b = randn({R, 4}, rng), dst = randn({R, 12}, rng), acc = randn({R, 3}, rng);
  Tensor dst0 = dst.clone(), acc0 = acc.clone();
  ops::copy_cols_many(
      {{dst, 1, a, 6, 4}, {dst, 7, b, 0, 4}, {acc, 0, a, 0, 3, true}, {acc, 0, b, 1, 3, true}});
  auto at = [](const Tensor& t, int64_t r, int64_t c) { return t.data<double>()[r * t.size(1) + c]; };
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t c = 0; c < 12; ++c) {
      const double want = c >= 1 && c < 5    ? at(a, r, c + 5)
                          : c >= 7 && c < 11 ? at(b, r, c - 7)
                                             : at(dst0, r, c);
      EXPECT_EQ(at(dst, r, c), want) << r << "," << c;
    }
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(at(acc, r, c), (at(acc0, r, c) + at(a, r, c)) + at(b, r, c + 1));
  }
  EXPECT_THROW(ops::copy_cols_many({{dst, 0, a, 0, 3, true}}), Error);  // adding into part of dst
  EXPECT_THROW(ops::copy_cols_many({{dst, 10, a, 0, 3}}), Error);       // past dst's columns
}

TEST(CpuKernels, VectorisedAdamWFollowsItsFormula) {
  std::mt19937 rng(7);
  const int64_t n = 1003;  // 8-lane groups and a tail
  Tensor p = f32(randn({n}, rng)), g = f32(randn({n}, rng)), m = f32(randn({n}, rng, 0.1)),
         v = f32(randn({n}, rng, 0.1));
  for (int64_t i = 0; i < n; ++i) v.data<float>()[i] = std::fabs(v.data<float>()[i]);
  const Tensor p0 = p.clone(), m0 = m.clone(), v0 = v.clone();
  const ops::AdamWParams ap{.lr = 1e-2,
                            .beta1 = 0.9,
                            .beta2 = 0.95,
                            .eps = 1e-8,
                            .weight_decay = 0.1,
                            .step = 3,
                            .grad_scale = 0.5};
  ops::adamw_step(p, g, m, v, ap);
  const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.95, 3);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {  // m is a difference of O(0.1) terms: its error is relative to 0.1
    const double gi = 0.5 * g.data<float>()[i];
    const double mi = 0.9 * m0.data<float>()[i] + 0.1 * gi, vi = 0.95 * v0.data<float>()[i] + 0.05 * gi * gi;
    const double pi = p0.data<float>()[i] * (1 - 1e-2 * 0.1) - 1e-2 / bc1 * mi / (std::sqrt(vi / bc2) + 1e-8);
    worst = std::max(
        {worst, std::fabs(m.data<float>()[i] - mi) / std::max(std::fabs(mi), 0.1),
         std::fabs(v.data<float>()[i] - vi) / std::max(vi, 1e-3),
         std::fabs(p.data<float>()[i] - pi) / std::max(double(std::fabs(p0.data<float>()[i])), 1.0)});
  }
  EXPECT_LT(worst, 1e-5);
}

// The one-call routed experts (ops::moe_experts_grouped, the GPU prefill's op) on the CPU against the f64
// per-token reference of ops::moe_experts_small, with experts left empty and one expert taking most rows;
// an expert id outside the layer is refused.
TEST(CpuKernels, MoeExpertsGroupedMatchesTheF64Reference) {
  std::mt19937 rng(11);
  const int64_t N = 40, K = 3, E = 8, D = 32, F = 24;
  std::vector<Tensor> g, u, dn;
  for (int64_t e = 0; e < E; ++e) {
    g.push_back(f32(randn({F, D}, rng, 0.2)));
    u.push_back(f32(randn({F, D}, rng, 0.2)));
    dn.push_back(f32(randn({D, F}, rng, 0.2)));
  }
  Tensor x = f32(randn({N, D}, rng)), w = f32(randn({N, K}, rng));
  Tensor idx = Tensor::empty({N, K}, DType::I32);
  for (int64_t n = 0; n < N; ++n)  // expert 1 in every token, then 2|3 and 4|5; 0, 6 and 7 never
    for (int64_t k = 0; k < K; ++k)
      idx.data<int32_t>()[n * K + k] = k == 0 ? 1 : int32_t(k == 1 ? 2 + n % 2 : 4 + n % 2);
  Tensor got = Tensor::empty({N, D}, DType::F32), want = Tensor::empty({N, D}, DType::F32);
  got.fill(std::nan(""));
  ops::moe_experts_grouped(got, x, idx, w, g, u, dn);
  ops::moe_experts_small(want, x, idx, w, g, u, dn);
  test::Diff d = test::diff(got, want);
  EXPECT_FALSE(d.nan);
  EXPECT_LE(d.rel, 1e-5) << test::str(d);
  // With the shared expert: the routed sum plus its MLP (the f64 reference with it as a K+1-th expert of
  // weight 1 for every token).
  const ops::SharedExpert sh{.gate = f32(randn({F, D}, rng, 0.2)),
                             .up = f32(randn({F, D}, rng, 0.2)),
                             .down = f32(randn({D, F}, rng, 0.2))};
  std::vector<Tensor> g1 = g, u1 = u, d1 = dn;
  g1.push_back(sh.gate);
  u1.push_back(sh.up);
  d1.push_back(sh.down);
  Tensor idx1 = Tensor::empty({N, K + 1}, DType::I32), w1 = Tensor::empty({N, K + 1}, DType::F32);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      idx1.data<int32_t>()[n * (K + 1) + k] = idx.data<int32_t>()[n * K + k];
      w1.data<float>()[n * (K + 1) + k] = w.data<float>()[n * K + k];
    }
    idx1.data<int32_t>()[n * (K + 1) + K] = int32_t(E);
    w1.data<float>()[n * (K + 1) + K] = 1.0f;
  }
  ops::moe_experts_grouped(got, x, idx, w, g, u, dn, sh);
  ops::moe_experts_small(want, x, idx1, w1, g1, u1, d1);
  d = test::diff(got, want);
  EXPECT_FALSE(d.nan);
  EXPECT_LE(d.rel, 1e-5) << "with the shared expert: " << test::str(d);
  idx.data<int32_t>()[7] = int32_t(E);
  EXPECT_THROW(ops::moe_experts_grouped(got, x, idx, w, g, u, dn), Error);
  EXPECT_THROW(
      ops::moe_experts_grouped(got, x, idx, w, g, u, dn, {.gate = sh.gate, .up = sh.up, .down = Tensor()}),
      Error);
}

}  // namespace
}  // namespace dseek
