// engine_test.cpp — batched generation over the paged latent cache (infer/engine.h, model_paged.cpp)
// against the one-sequence contiguous-cache path (Model::forward_cached, itself checked against the full
// forward and the fixtures): logits of a batched prefill and of batched decode steps of prompts of
// different lengths equal each prompt run alone (≤ 1e-5), and the engine's tokens for a batch equal
// each prompt generated alone, greedy and sampled, also when sequences end at different steps.
#include <gtest/gtest.h>

#include <random>

#include "infer/engine.h"
#include "infer/sampler.h"
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

std::vector<std::vector<int64_t>> prompts_of(const std::vector<int64_t>& lens, int64_t V) {
  std::vector<std::vector<int64_t>> p;
  for (size_t i = 0; i < lens.size(); ++i) p.push_back(random_ids(lens[i], V, uint32_t(11 + i)));
  return p;
}

// Prefill of several prompts in one forward, then decode steps for all (one random token each): each
// sequence's logits equal those of its own contiguous cache.
TEST(Engine, PagedForwardMatchesContiguousCache) {
  Model m = Model::load(test::data("tiny-v3"), {.dtype = DType::F32});
  const int64_t V = m.cfg.vocab_size;
  const std::vector<int64_t> lens = {5, 70, 1, 33};    // 70 crosses a block boundary
  const int64_t B = int64_t(lens.size()), steps = 66;  // the 1-token prompt grows past 64
  auto prompts = prompts_of(lens, V);
  int64_t blocks = 0;
  for (int64_t L : lens) blocks += (L + steps + 63) / 64;
  PagedLatentCache paged = m.make_paged_cache(blocks);
  std::vector<int64_t> seqs;
  std::vector<LatentCache> alone;
  for (int64_t b = 0; b < B; ++b) {
    seqs.push_back(paged.add_sequence());
    alone.push_back(m.make_cache(lens[size_t(b)] + steps));
  }
  Tensor got = m.forward_paged(prompts, seqs, paged);
  ASSERT_EQ(got.shape(), (Shape{B, V}));
  double worst = 0;
  for (int64_t step = 0; step <= steps; ++step) {
    std::vector<std::vector<int64_t>> next;
    for (int64_t b = 0; b < B; ++b) {
      Tensor want = m.forward_cached(
          step == 0 ? prompts[size_t(b)] : std::vector<int64_t>{random_ids(1, V, uint32_t(step * 31 + b))[0]},
          alone[size_t(b)]);
      test::Diff d = test::diff(got.slice(b, 1), want);
      worst = std::max(worst, d.rel);
      ASSERT_LE(d.rel, 1e-5) << "step " << step << " sequence " << b << ": " << test::str(d);
      next.push_back(random_ids(1, V, uint32_t((step + 1) * 31 + b)));
    }
    if (step == steps) break;
    got = m.forward_paged(next, seqs, paged);
  }
  for (int64_t b = 0; b < B; ++b) EXPECT_EQ(paged.length(seqs[size_t(b)]), lens[size_t(b)] + steps);
  RecordProperty("worst_rel", std::to_string(worst));
  // A step that mixes a prompt with a decode token is refused.
  const int64_t fresh = paged.add_sequence();
  EXPECT_THROW(m.forward_paged({{1}, {1, 2}}, {seqs[0], fresh}, paged), Error);
}

// The reference: one prompt through the contiguous cache with its own Sampler.
std::vector<int64_t> reference_tokens(const Model& m, const std::vector<int64_t>& prompt,
                                      const infer::GenerateOptions& opt) {
  LatentCache cache = m.make_cache(int64_t(prompt.size()) + opt.max_new_tokens);
  infer::Sampler s(opt.sampling);
  Tensor logits = m.forward_cached(prompt, cache);
  std::vector<int64_t> out;
  const auto& eos = m.cfg.eos_token_ids;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const int64_t t = s.sample(logits.data<float>(), m.cfg.vocab_size);
    out.push_back(t);
    if (opt.stop_at_eos && std::find(eos.begin(), eos.end(), t) != eos.end()) break;
    if (i + 1 < opt.max_new_tokens) logits = m.forward_cached({t}, cache);
  }
  return out;
}

void check_batch_equals_alone(const Model& m, const infer::GenerateOptions& opt) {
  auto prompts = prompts_of({9, 1, 67, 20, 3}, m.cfg.vocab_size);
  infer::Engine engine(m);
  std::vector<std::vector<int64_t>> seen(prompts.size());
  auto batch = engine.generate(prompts, opt, [&](size_t i, int64_t t) { seen[i].push_back(t); });
  ASSERT_EQ(batch.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto alone = engine.generate({prompts[i]}, opt).front();
    const auto ref = reference_tokens(m, prompts[i], opt);
    EXPECT_EQ(batch[i].ids, ref) << "prompt " << i;
    EXPECT_EQ(alone.ids, ref) << "prompt " << i;
    EXPECT_EQ(seen[i], batch[i].ids);
    EXPECT_EQ(batch[i].finish_reason, int64_t(ref.size()) < opt.max_new_tokens ? "stop" : "length");
  }
}

TEST(Engine, BatchEqualsAloneGreedy) {
  Model m = Model::load(test::data("tiny-v3"), {.dtype = DType::F32});
  infer::GenerateOptions opt;
  opt.max_new_tokens = 20;
  opt.stop_at_eos = false;
  check_batch_equals_alone(m, opt);
}

TEST(Engine, BatchEqualsAloneSampled) {
  Model m = Model::load(test::data("tiny-v2"), {.dtype = DType::F32});
  infer::GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.stop_at_eos = false;
  opt.sampling = {.greedy = false, .temperature = 0.8, .top_k = 20, .top_p = 0.9, .seed = 7};
  check_batch_equals_alone(m, opt);
}

TEST(Engine, SequencesEndAtDifferentSteps) {
  Model m = Model::load(test::data("tiny-v3"), {.dtype = DType::F32});
  infer::GenerateOptions opt;
  opt.max_new_tokens = 16;
  // Make a token that one prompt produces early an EOS, so that sequence leaves the batch while the
  // others go on (and its blocks are reused).
  auto prompts = prompts_of({9, 1, 67, 20, 3}, m.cfg.vocab_size);
  opt.stop_at_eos = false;
  const auto first = reference_tokens(m, prompts[2], opt);
  m.cfg.eos_token_ids = {first[3]};
  opt.stop_at_eos = true;
  int stopped = 0;
  for (const auto& p : prompts) stopped += int64_t(reference_tokens(m, p, opt).size()) < opt.max_new_tokens;
  EXPECT_GE(stopped, 1);
  check_batch_equals_alone(m, opt);
}

TEST(Engine, RandomBf16WeightsPagedMatchesContiguous) {
  ModelConfig c = ModelConfig::load(test::data("tiny-v3"));
  Model m = Model::from_weights(c, init_weights(c, DType::BF16, 42, false));
  infer::GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.stop_at_eos = false;
  check_batch_equals_alone(m, opt);
}

}  // namespace
}  // namespace dseek
