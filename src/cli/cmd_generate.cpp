// cmd_generate.cpp — `dseek generate MODEL_DIR (--prompt-ids 1,2,3 | --prompt TEXT | --chat MESSAGES.json
// [--template v3|r1|auto]) --max-new-tokens N [--greedy | --temperature X --top-p P --top-k K --seed S]
// [--json]`. --prompt and --chat use the model directory's tokenizer (model.md §7): the prompt gets BOS
// when tokenizer_config.json says add_bos_token, the chat is rendered with its template and a generation
// prompt; the new tokens are then printed as text (streamed), or as "text" next to "ids" with --json.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "infer/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {

Runner add_generate(CLI::App& app) {
  struct Opts {
    std::string dir, prompt_ids, prompt, chat, tmpl = "auto", dtype, device = "cpu";
    int64_t max_new = 16;
    bool greedy = false, json = false;
    double temperature = 1.0, top_p = 1.0;
    int64_t top_k = 0;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("MODEL_DIR", o->dir, "Model directory")->required();
  auto* ids_opt = app.add_option("--prompt-ids", o->prompt_ids, "Prompt as comma-separated token ids");
  auto* text_opt = app.add_option("--prompt", o->prompt, "Prompt as text (needs the model's tokenizer.json)");
  auto* chat_opt = app.add_option("--chat", o->chat,
                                  "Chat messages (JSON file) to answer (needs the model's tokenizer.json)");
  ids_opt->excludes(text_opt)->excludes(chat_opt);
  text_opt->excludes(chat_opt);
  app.add_option("--template", o->tmpl,
                 "Chat template for --chat: v3, r1 or auto (from tokenizer_config.json)")
      ->capture_default_str()
      ->needs(chat_opt);
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
  app.add_option("--dtype", o->dtype,
                 "Weights in memory: f32 or bf16 (default: the checkpoint's; bf16 on cuda)");
  app.add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object with the new token ids");
  return [o, ids_opt, text_opt, chat_opt]() {
    DSEEK_CHECK(ids_opt->count() + text_opt->count() + chat_opt->count() == 1,
                "generate: give one of --prompt-ids, --prompt, --chat");
    ModelConfig cfg = ModelConfig::load(o->dir);
    std::vector<int64_t> prompt;
    std::optional<tok::Tokenizer> tk;
    if (ids_opt->count()) {
      prompt = parse_id_list(o->prompt_ids, "--prompt-ids");
    } else {
      const std::string tj = (std::filesystem::path(o->dir) / "tokenizer.json").string();
      DSEEK_CHECK(std::filesystem::exists(tj), o->dir,
                  " has no tokenizer.json, which --prompt and --chat need ",
                  "(give --prompt-ids, or write one with `dseek tokenizer bytes --out ", o->dir, "`)");
      tk.emplace(tok::Tokenizer::load(o->dir));
      std::vector<int32_t> ids =
          text_opt->count()
              ? tk->encode(o->prompt,
                           tok::EncodeOptions{.add_bos = tk->config().add_bos_token && tk->bos_id() >= 0})
              : tok::encode_chat(*tk, read_chat_file(o->chat), /*add_generation_prompt=*/true,
                                 tok::parse_template_kind(o->tmpl));
      prompt.assign(ids.begin(), ids.end());
    }
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
      DSEEK_CHECK(id < cfg.vocab_size, ids_opt->count() ? "--prompt-ids" : "the tokenized prompt", ": token ",
                  id, " is outside the vocabulary (", cfg.vocab_size, ")");
    Model m = load_model(o->dir, o->dtype, o->device);
    // With a tokenizer and no --json, the text is streamed as the tokens arrive.
    std::optional<tok::StreamDecoder> stream;
    if (tk && !o->json) stream.emplace(*tk, /*skip_special=*/true);
    auto on_token = [&](int64_t id) {
      if (!stream) return;
      const std::string piece = stream->put(int32_t(id));
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    infer::GenerateResult r = infer::generate(m, prompt, go, on_token);
    const double tps =
        r.decode_seconds > 0 && r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0;
    if (o->json) {
      nlohmann::json j = {{"ids", r.ids},
                          {"finish_reason", r.finish_reason},
                          {"prompt_tokens", prompt.size()},
                          {"prefill_seconds", r.prefill_seconds},
                          {"decode_tokens_per_second", tps}};
      if (tk) j["text"] = tk->decode(std::vector<int32_t>(r.ids.begin(), r.ids.end()), /*skip_special=*/true);
      std::printf("%s\n", j.dump().c_str());
    } else if (stream) {
      const std::string rest = stream->finish();
      std::fwrite(rest.data(), 1, rest.size(), stdout);
      std::printf("\n");
      std::fprintf(stderr, "%zu tokens (%s), prefill %.3f s, decode %.1f tokens/s\n", r.ids.size(),
                   r.finish_reason.c_str(), r.prefill_seconds, tps);
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
