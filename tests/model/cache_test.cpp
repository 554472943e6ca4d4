// cache_test.cpp — the latent cache: prefill + one-token decoding gives the logits of the full forward,
// and the absorbed MLA path equals the naive one (twin oracles, spec/model.md §2.5), for f32 fixture
// weights and random bf16 weights.
#include <gtest/gtest.h>

#include <random>

#include "model/model.h"
#include "test_util.h"

namespace dseek {
namespace {

std::vector<int64_t> random_ids(int64_t n, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = int64_t(rng() % uint32_t(V));
  return v;
}

void check_cache_matches_full(const Model& m, int64_t T, int64_t prefill, double tol) {
  auto ids = random_ids(T, m.cfg.vocab_size, 3);
  Tensor in = Tensor::empty({1, T}, DType::I64);
  std::copy(ids.begin(), ids.end(), in.data<int64_t>());
  Tensor full = m.forward(in).view({T, m.cfg.vocab_size});
  LatentCache cache = m.make_cache(T);
  Tensor pre = m.forward_cached(std::vector<int64_t>(ids.begin(), ids.begin() + prefill), cache, false);
  EXPECT_LE(test::diff(pre, full.slice(0, prefill)).rel, tol) << "prefill";
  for (int64_t t = prefill; t < T; ++t) {
    Tensor step = m.forward_cached({ids[size_t(t)]}, cache);
    test::Diff d = test::diff(step, full.slice(t, 1));
    EXPECT_LE(d.rel, tol) << "decode position " << t << ": " << test::str(d);
  }
  EXPECT_EQ(cache.length(), T);
  EXPECT_THROW(m.forward_cached({ids[0]}, cache), Error);  // full
}

void check_paths_agree(const Model& m, double tol) {
  auto ids = random_ids(13, m.cfg.vocab_size, 5);
  LatentCache a = m.make_cache(13), b = m.make_cache(13);
  std::vector<int64_t> head(ids.begin(), ids.begin() + 6), tail(ids.begin() + 6, ids.end());
  m.forward_cached(head, a, false, AttnPath::Naive);
  m.forward_cached(head, b, false, AttnPath::Naive);
  Tensor naive = m.forward_cached(tail, a, false, AttnPath::Naive);
  Tensor absorbed = m.forward_cached(tail, b, false, AttnPath::Absorbed);
  test::Diff d = test::diff(absorbed, naive);
  EXPECT_LE(d.rel, tol) << test::str(d);
  // The caches hold the same latents.
  for (int64_t l = 0; l < m.cfg.num_hidden_layers; ++l) EXPECT_LE(test::diff(a.rows(l), b.rows(l)).rel, tol);
}

TEST(Cache, TinyV3PrefillDecodeMatchesFull) {
  Model m = Model::load(test::data("tiny-v3"), {.dtype = DType::F32});
  check_cache_matches_full(m, 24, 7, 1e-5);
  check_paths_agree(m, 1e-5);
}

TEST(Cache, TinyV2PrefillDecodeMatchesFull) {
  Model m = Model::load(test::data("tiny-v2"), {.dtype = DType::F32});
  check_cache_matches_full(m, 20, 1, 1e-5);
  check_paths_agree(m, 1e-5);
}

TEST(Cache, RandomBf16ModelPathsAgree) {
  ModelConfig c = ModelConfig::load(test::data("tiny-v3"));
  Model m = Model::from_weights(c, init_weights(c, DType::BF16, 42, false));
  EXPECT_EQ(m.w.layers[0].attn.kv_b_proj.dtype(), DType::BF16);
  check_cache_matches_full(m, 30, 9, 1e-5);
  check_paths_agree(m, 1e-5);
}

TEST(Cache, BatchRowsAreIndependent) {
  Model m = Model::load(test::data("tiny-v3"), {.dtype = DType::F32});
  auto ids = random_ids(20, m.cfg.vocab_size, 9);
  Tensor two = Tensor::empty({2, 10}, DType::I64), one = Tensor::empty({1, 10}, DType::I64);
  std::copy(ids.begin(), ids.end(), two.data<int64_t>());
  std::copy(ids.begin() + 10, ids.end(), one.data<int64_t>());
  Tensor a = m.forward(two), b = m.forward(one);
  EXPECT_LE(test::diff(a[1], b[0]).rel, 1e-6);
}

}  // namespace
}  // namespace dseek
