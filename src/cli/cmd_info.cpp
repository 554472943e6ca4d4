// cmd_info.cpp — `dseek info MODEL_DIR`: config summary, parameter counts (total / active per token),
// latent-cache bytes per token (spec/model.md §2.5, §2.7).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/weights.h"

namespace dseek::cli {

namespace {
std::string human(double n) {
  char buf[32];
  if (n >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  } else if (n >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  } else if (n >= 1e3) {
    std::snprintf(buf, sizeof buf, "%.2f K", n / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", n);
  }
  return buf;
}
const char* method_name(TopkMethod m) {
  return m == TopkMethod::NoauxTc ? "noaux_tc" : m == TopkMethod::Greedy ? "greedy" : "group_limited_greedy";
}
}  // namespace

Runner add_info(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  app.add_option("MODEL_DIR", *dir, "Model directory (config.json + safetensors) or a config.json")
      ->required();
  app.add_flag("--json", *as_json, "Print one JSON object");
  return [=]() {
    ModelConfig c = ModelConfig::load(*dir);
    ParamCounts pc = count_params(c);
    const int64_t L = c.num_hidden_layers;
    const int64_t per_layer = c.cache_width();
    int64_t n_moe = 0;
    for (int64_t l = 0; l < L; ++l) n_moe += c.is_moe_layer(l);
    std::string weights = "absent";
    if (std::filesystem::is_directory(*dir)) {
      try {
        io::TensorSource src = io::TensorSource::open_dir(*dir);
        weights = std::to_string(src.names().size()) + " tensors";
      } catch (const Error& e) {
        weights = std::string("unreadable: ") + e.what();
      }
    }
    nlohmann::json j = {
        {"model_type", c.model_type},
        {"layers", L},
        {"dense_layers", L - n_moe},
        {"moe_layers", n_moe},
        {"hidden_size", c.hidden_size},
        {"vocab_size", c.vocab_size},
        {"heads", c.num_attention_heads},
        {"q_lora_rank", c.q_lora_rank},
        {"kv_lora_rank", c.kv_lora_rank},
        {"qk_nope_head_dim", c.qk_nope_head_dim},
        {"qk_rope_head_dim", c.qk_rope_head_dim},
        {"v_head_dim", c.v_head_dim},
        {"routed_experts", c.n_routed_experts},
        {"shared_experts", c.n_shared_experts},
        {"experts_per_token", c.num_experts_per_tok},
        {"scoring_func", c.scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax"},
        {"topk_method", method_name(c.topk_method)},
        {"mtp_modules", c.num_nextn_predict_layers},
        {"rope", c.rope.type},
        {"softmax_scale", c.softmax_scale()},
        {"fp8", c.quant.fp8},
        {"params_total", pc.total},
        {"params_active_per_token", pc.active},
        {"params_mtp", pc.mtp},
        {"cache_values_per_token_per_layer", per_layer},
        {"cache_bytes_per_token_bf16", per_layer * L * 2},
        {"cache_bytes_per_token_f32", per_layer * L * 4},
        {"weights", weights},
    };
    if (*as_json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("model        %s, %lld layers (%lld dense, %lld MoE), hidden %lld, vocab %lld\n",
                c.model_type.c_str(), (long long)L, (long long)(L - n_moe), (long long)n_moe,
                (long long)c.hidden_size, (long long)c.vocab_size);
    std::printf(
        "attention    MLA, %lld heads, q rank %s, kv rank %lld, nope %lld + rope %lld, v %lld, rope %s, "
        "scale %.8f\n",
        (long long)c.num_attention_heads, c.q_lora_rank ? std::to_string(c.q_lora_rank).c_str() : "none",
        (long long)c.kv_lora_rank, (long long)c.qk_nope_head_dim, (long long)c.qk_rope_head_dim,
        (long long)c.v_head_dim, c.rope.type.c_str(), c.softmax_scale());
    std::printf(
        "moe          %lld routed (top-%lld, %s, %s, groups %lld keep %lld) + %lld shared, width %lld\n",
        (long long)c.n_routed_experts, (long long)c.num_experts_per_tok,
        c.scoring_func == ScoringFunc::Sigmoid ? "sigmoid" : "softmax", method_name(c.topk_method),
        (long long)c.n_group, (long long)c.topk_group, (long long)c.n_shared_experts,
        (long long)c.moe_intermediate_size);
    std::printf("mtp          %lld module(s), %s parameters\n", (long long)c.num_nextn_predict_layers,
                human(double(pc.mtp)).c_str());
    std::printf("parameters   %s total, %s active per token (embedding excluded)\n",
                human(double(pc.total)).c_str(), human(double(pc.active)).c_str());
    std::printf("latent cache %lld values per token per layer: %lld bytes per token in bf16 (%lld in f32)\n",
                (long long)per_layer, (long long)(per_layer * L * 2), (long long)(per_layer * L * 4));
    std::printf("weights      %s%s\n", weights.c_str(), c.quant.fp8 ? " (fp8 block-scaled)" : "");
    return 0;
  };
}

}  // namespace dseek::cli
