// router_test.cpp — MoE routing against independent math (spec/model.md §4.2, §4.3): the kept groups
// and chosen experts are recomputed by counting ranks (no sorting, no partial selection), for V2's
// greedy and group_limited_greedy and V3's noaux_tc, plus hand-made cases with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "ops/router.h"

namespace dseek {
namespace {

struct Choice {
  std::set<int> experts;
  std::vector<double> weight;  // by expert id (0 when not chosen)
};

// Independent reference: an item is among the top-m of a list iff fewer than m items beat it
// (beat = larger value, or equal value and lower index).
int beaten_by(const std::vector<double>& v, int i, const std::vector<char>* allowed = nullptr) {
  int n = 0;
  for (int j = 0; j < int(v.size()); ++j) {
    if (allowed && !(*allowed)[size_t(j)]) continue;
    if (v[size_t(j)] > v[size_t(i)] || (v[size_t(j)] == v[size_t(i)] && j < i)) ++n;
  }
  return n;
}

Choice reference(const std::vector<double>& logits, const std::vector<double>& bias,
                 const ops::RouterParams& p) {
  const int E = int(logits.size());
  std::vector<double> s(static_cast<size_t>(E));
  if (p.scoring == ScoringFunc::Softmax) {
    double z = 0;
    for (double l : logits) z += std::exp(l);
    for (int e = 0; e < E; ++e) s[size_t(e)] = std::exp(logits[size_t(e)]) / z;
  } else {
    for (int e = 0; e < E; ++e) s[size_t(e)] = 1 / (1 + std::exp(-logits[size_t(e)]));
  }
  std::vector<double> sc(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) sc[size_t(e)] = s[size_t(e)] + (bias.empty() ? 0 : bias[size_t(e)]);
  std::vector<char> allowed(size_t(E), 1);
  if (p.method != TopkMethod::Greedy) {
    const int G = int(p.n_group), gs = E / G;
    std::vector<double> gscore(static_cast<size_t>(G));
    for (int g = 0; g < G; ++g) {
      std::vector<double> in(sc.begin() + g * gs, sc.begin() + (g + 1) * gs);
      if (p.method == TopkMethod::NoauxTc) {  // sum of the two members ranked first and second
        double sum = 0;
        for (int i = 0; i < gs; ++i)
          if (beaten_by(in, i) < 2) sum += in[size_t(i)];
        gscore[size_t(g)] = sum;
      } else {  // the member ranked first
        for (int i = 0; i < gs; ++i)
          if (beaten_by(in, i) == 0) gscore[size_t(g)] = in[size_t(i)];
      }
    }
    for (int e = 0; e < E; ++e) allowed[size_t(e)] = beaten_by(gscore, e / gs) < p.topk_group;
  }
  Choice c;
  c.weight.assign(size_t(E), 0);
  double sum = 0;
  for (int e = 0; e < E; ++e) {
    if (allowed[size_t(e)] && beaten_by(sc, e, &allowed) < p.top_k) {
      c.experts.insert(e);
      sum += s[size_t(e)];
    }
  }
  for (int e : c.experts)
    c.weight[size_t(e)] = s[size_t(e)] / (p.norm_topk_prob ? sum + 1e-20 : 1.0) * p.routed_scaling_factor;
  return c;
}

void check_random(const ops::RouterParams& p, int E, bool with_bias, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 1.5);
  const int N = 300;
  Tensor logits = Tensor::empty({N, E}, DType::F64);
  for (int i = 0; i < N * E; ++i) logits.data<double>()[i] = nd(rng);
  std::vector<double> bias;
  Tensor bt;
  if (with_bias) {
    bt = Tensor::empty({E}, DType::F32);
    for (int e = 0; e < E; ++e) {
      bt.data<float>()[e] = float(nd(rng) * 0.1);
      bias.push_back(bt.data<float>()[e]);
    }
  }
  Tensor idx = Tensor::empty({N, p.top_k}, DType::I32), w = Tensor::empty({N, p.top_k}, DType::F64);
  ops::router_fwd(idx, w, Tensor(), logits, bt, p);
  for (int n = 0; n < N; ++n) {
    std::vector<double> l(logits.data<double>() + n * E, logits.data<double>() + (n + 1) * E);
    Choice ref = reference(l, bias, p);
    std::set<int> got;
    for (int k = 0; k < p.top_k; ++k) {
      int e = idx.data<int32_t>()[n * p.top_k + k];
      if (k > 0) {
        EXPECT_LT(idx.data<int32_t>()[n * p.top_k + k - 1], e) << "ascending order";
      }
      got.insert(e);
      EXPECT_NEAR(w.data<double>()[n * p.top_k + k], ref.weight[size_t(e)], 1e-12) << "token " << n;
    }
    EXPECT_EQ(got, ref.experts) << "token " << n;
  }
}

TEST(Router, V2GroupLimitedGreedy) {
  ops::RouterParams p{.scoring = ScoringFunc::Softmax,
                      .method = TopkMethod::GroupLimitedGreedy,
                      .n_group = 8,
                      .topk_group = 3,
                      .top_k = 6,
                      .norm_topk_prob = false,
                      .routed_scaling_factor = 16.0};
  check_random(p, 160, false, 1);  // DeepSeek-V2's shape: 160 experts, 8 groups, 3 kept, top-6
  p.n_group = 4;
  p.topk_group = 1;
  p.top_k = 2;
  check_random(p, 8, false, 2);
}

TEST(Router, V2Greedy) {
  ops::RouterParams p{.scoring = ScoringFunc::Softmax,
                      .method = TopkMethod::Greedy,
                      .top_k = 6,
                      .norm_topk_prob = false,
                      .routed_scaling_factor = 1.0};
  check_random(p, 64, false, 3);
  p.norm_topk_prob = true;
  check_random(p, 64, false, 4);
}

TEST(Router, V3NoauxTc) {
  ops::RouterParams p{.scoring = ScoringFunc::Sigmoid,
                      .method = TopkMethod::NoauxTc,
                      .n_group = 8,
                      .topk_group = 4,
                      .top_k = 8,
                      .norm_topk_prob = true,
                      .routed_scaling_factor = 2.5};
  check_random(p, 256, true, 5);
  p.n_group = 4;
  p.topk_group = 2;
  p.top_k = 2;
  check_random(p, 8, true, 6);
}

TEST(Router, GroupLimitedHandCase) {
  // 2 groups of 3 experts, keep 1 group, top-2. Group 0's max (e1) loses to group 1's max (e4), so
  // even though e0 beats e3 and e5, only group 1 experts can be picked: {3, 4}.
  ops::RouterParams p{.scoring = ScoringFunc::Softmax,
                      .method = TopkMethod::GroupLimitedGreedy,
                      .n_group = 2,
                      .topk_group = 1,
                      .top_k = 2,
                      .norm_topk_prob = false,
                      .routed_scaling_factor = 1.0};
  const double l[6] = {2.9, 3.0, 0.0, 1.0, 3.1, 0.5};
  Tensor logits = Tensor::empty({1, 6}, DType::F64);
  std::copy(l, l + 6, logits.data<double>());
  Tensor idx = Tensor::empty({1, 2}, DType::I32), w = Tensor::empty({1, 2}, DType::F64);
  ops::router_fwd(idx, w, Tensor(), logits, Tensor(), p);
  EXPECT_EQ(idx.data<int32_t>()[0], 3);
  EXPECT_EQ(idx.data<int32_t>()[1], 4);
  double z = 0;
  for (double v : l) z += std::exp(v);
  EXPECT_NEAR(w.data<double>()[0], std::exp(1.0) / z, 1e-12);
  EXPECT_NEAR(w.data<double>()[1], std::exp(3.1) / z, 1e-12);
  // With group scores by top-2 sum (noaux_tc, sigmoid) group 0 (2.9 + 3.0) wins instead.
  p.scoring = ScoringFunc::Sigmoid;
  p.method = TopkMethod::NoauxTc;
  ops::router_fwd(idx, w, Tensor(), logits, Tensor(), p);
  EXPECT_EQ(idx.data<int32_t>()[0], 0);
  EXPECT_EQ(idx.data<int32_t>()[1], 1);
}

TEST(Router, BiasSelectsButDoesNotWeigh) {
  ops::RouterParams p{.scoring = ScoringFunc::Sigmoid,
                      .method = TopkMethod::NoauxTc,
                      .n_group = 1,
                      .topk_group = 1,
                      .top_k = 1,
                      .norm_topk_prob = false,
                      .routed_scaling_factor = 2.0};
  Tensor logits = Tensor::empty({1, 2}, DType::F32);
  logits.data<float>()[0] = 1.0f;
  logits.data<float>()[1] = 0.0f;
  Tensor bias = Tensor::empty({2}, DType::F32);
  bias.data<float>()[0] = 0.0f;
  bias.data<float>()[1] = 0.5f;  // sigmoid(0) + 0.5 = 1.0 > sigmoid(1) = 0.731
  Tensor idx = Tensor::empty({1, 1}, DType::I32), w = Tensor::empty({1, 1}, DType::F32);
  ops::router_fwd(idx, w, Tensor(), logits, bias, p);
  EXPECT_EQ(idx.data<int32_t>()[0], 1);
  EXPECT_FLOAT_EQ(w.data<float>()[0], 2.0f * 0.5f);  // unbiased sigmoid(0) = 0.5, times 2
}

}  // namespace
}  // namespace dseek
