// sampler_test.cpp — greedy is argmax; sampling is reproducible for a seed, follows softmax(logits/T),
// and respects top-k and top-p.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "infer/sampler.h"

namespace dseek::infer {
namespace {

TEST(Sampler, GreedyIsArgmax) {
  float l[5] = {0.1f, 2.0f, -1.0f, 1.99f, 0.0f};
  Sampler s({.greedy = true});
  EXPECT_EQ(s.sample(l, 5), 1);
  Sampler t({.greedy = false, .temperature = 0.0});
  EXPECT_EQ(t.sample(l, 5), 1);
  Sampler k({.greedy = false, .temperature = 1.0, .top_k = 1, .seed = 3});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k.sample(l, 5), 1);
}

TEST(Sampler, ReproducibleAndFollowsSoftmax) {
  float l[4] = {1.0f, 0.0f, -1.0f, 0.5f};
  SamplingParams p{.greedy = false, .temperature = 0.7, .seed = 11};
  Sampler a(p), b(p);
  std::map<int64_t, int> count;
  const int n = 40000;
  for (int i = 0; i < n; ++i) {
    int64_t x = a.sample(l, 4);
    ASSERT_EQ(x, b.sample(l, 4));
    count[x]++;
  }
  double z = 0;
  for (float v : l) z += std::exp(v / 0.7);
  for (int v = 0; v < 4; ++v) {
    double prob = std::exp(l[v] / 0.7) / z;
    double sd = std::sqrt(prob * (1 - prob) / n);
    EXPECT_NEAR(count[v] / double(n), prob, 5 * sd) << v;
  }
}

TEST(Sampler, TopKAndTopP) {
  float l[5] = {3.0f, 2.9f, 2.8f, -5.0f, -6.0f};
  Sampler k({.greedy = false, .temperature = 1.0, .top_k = 2, .seed = 1});
  for (int i = 0; i < 500; ++i) EXPECT_LE(k.sample(l, 5), 1);
  // probabilities ≈ .37/.33/.30/…: top_p 0.5 keeps ids 0 and 1 only.
  Sampler p({.greedy = false, .temperature = 1.0, .top_p = 0.5, .seed = 2});
  std::map<int64_t, int> seen;
  for (int i = 0; i < 2000; ++i) seen[p.sample(l, 5)]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
}

TEST(Sampler, RejectsBadParams) {
  EXPECT_THROW(Sampler({.greedy = false, .temperature = -1}), Error);
  EXPECT_THROW(Sampler({.greedy = false, .top_p = 0}), Error);
  EXPECT_THROW(Sampler({.greedy = false, .top_p = 1.5}), Error);
  EXPECT_THROW(Sampler({.greedy = false, .top_k = -2}), Error);
  float nan[2] = {NAN, 1.0f};
  Sampler s({.greedy = true});
  EXPECT_THROW(s.sample(nan, 2), Error);
}

}  // namespace
}  // namespace dseek::infer
