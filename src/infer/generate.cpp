// generate.cpp — prefill + decode with the latent cache.
#include "infer/generate.h"

#include <algorithm>
#include <chrono>

namespace dseek::infer {

GenerateResult generate(const Model& m, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int64_t)>& on_token) {
  DSEEK_CHECK(!prompt.empty(), "generate: the prompt is empty");
  DSEEK_CHECK(opt.max_new_tokens >= 0, "generate: --max-new-tokens must be ≥ 0");
  const int64_t V = m.cfg.vocab_size;
  for (int64_t id : prompt)
    DSEEK_CHECK(id >= 0 && id < V, "prompt token id ", id, " is outside the vocabulary (", V, ")");
  GenerateResult res;
  res.finish_reason = "length";
  if (opt.max_new_tokens == 0) return res;
  Sampler sampler(opt.sampling);
  LatentCache cache = m.make_cache(int64_t(prompt.size()) + opt.max_new_tokens);
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  Tensor logits = m.forward_cached(prompt, cache);
  auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  const auto& eos = m.cfg.eos_token_ids;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const int64_t tok = sampler.sample(logits.data<float>(), V);
    res.ids.push_back(tok);
    if (on_token) on_token(tok);
    if (opt.stop_at_eos && std::find(eos.begin(), eos.end(), tok) != eos.end()) {
      res.finish_reason = "stop";
      break;
    }
    if (i + 1 == opt.max_new_tokens) break;
    logits = m.forward_cached({tok}, cache);
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

}  // namespace dseek::infer
