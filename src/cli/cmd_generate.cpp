// cmd_generate.cpp — `dseek generate MODEL_DIR --prompt-ids 1,2,3 --max-new-tokens N [--greedy |
// --temperature X --top-p P --top-k K --seed S] [--json]`.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "infer/generate.h"

namespace dseek::cli {

Runner add_generate(CLI::App& app) {
  struct Opts {
    std::string dir, prompt_ids, dtype;
    int64_t max_new = 16;
    bool greedy = false, json = false;
    double temperature = 1.0, top_p = 1.0;
    int64_t top_k = 0;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("MODEL_DIR", o->dir, "Model directory")->required();
  app.add_option("--prompt-ids", o->prompt_ids, "Prompt as comma-separated token ids")->required();
  app.add_option("--max-new-tokens", o->max_new, "Most tokens to generate")->capture_default_str();
  auto* g = app.add_flag("--greedy", o->greedy, "Always take the most likely token");
  app.add_option("--temperature", o->temperature, "Sampling temperature (0 = greedy)")
      ->excludes(g)
      ->capture_default_str();
  app.add_option("--top-p", o->top_p, "Nucleus sampling mass")->excludes(g)->capture_default_str();
  app.add_option("--top-k", o->top_k, "Sample among the k most likely (0 = all)")
      ->excludes(g)
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  app.add_option("--dtype", o->dtype, "Weights in memory: f32 or bf16 (default: the checkpoint's)");
  app.add_flag("--json", o->json, "Print one JSON object with the new token ids");
  return [o]() {
    std::vector<int64_t> prompt = parse_id_list(o->prompt_ids, "--prompt-ids");
    ModelConfig cfg = ModelConfig::load(o->dir);
    LoadOptions lo{.dtype = o->dtype.empty() ? default_weight_dtype(cfg)
                                             : parse_weight_dtype(o->dtype, "--dtype")};
    infer::GenerateOptions go;
    go.max_new_tokens = o->max_new;
    go.sampling = {.greedy = o->greedy,
                   .temperature = o->temperature,
                   .top_k = o->top_k,
                   .top_p = o->top_p,
                   .seed = o->seed};
    go.sampling.validate();
    DSEEK_CHECK(o->max_new >= 0, "--max-new-tokens must be ≥ 0");
    for (int64_t id : prompt)
      DSEEK_CHECK(id < cfg.vocab_size, "--prompt-ids: token ", id, " is outside the vocabulary (",
                  cfg.vocab_size, ")");
    Model m = Model::load(o->dir, lo);
    infer::GenerateResult r = infer::generate(m, prompt, go);
    const double tps =
        r.decode_seconds > 0 && r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0;
    if (o->json) {
      nlohmann::json j = {{"ids", r.ids},
                          {"finish_reason", r.finish_reason},
                          {"prompt_tokens", prompt.size()},
                          {"prefill_seconds", r.prefill_seconds},
                          {"decode_tokens_per_second", tps}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      for (size_t i = 0; i < r.ids.size(); ++i) std::printf("%s%lld", i ? "," : "", (long long)r.ids[i]);
      std::printf("\n");
      std::fprintf(stderr, "%zu tokens (%s), prefill %.3f s, decode %.1f tokens/s\n", r.ids.size(),
                   r.finish_reason.c_str(), r.prefill_seconds, tps);
    }
    return 0;
  };
}

}  // namespace dseek::cli
