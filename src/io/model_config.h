// model_config.h — HF config.json for deepseek_v3 and deepseek_v2 (V2-Lite included) as a validated
// ModelConfig (spec/model.md §1, §2.3, §3, §4). Legacy `rope_scaling` and newer `rope_parameters` are
// both read; every field the architecture uses is checked, and errors name the file and the field.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dseek {

enum class ScoringFunc { Sigmoid, Softmax };
enum class TopkMethod { NoauxTc, Greedy, GroupLimitedGreedy };

struct RopeConfig {
  std::string type = "default";  // "default" or "yarn"
  double theta = 10000.0;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // 0 = absent
  double attention_factor = 0.0;              // 0 = derive
  bool truncate = true;
};

struct QuantConfig {
  bool fp8 = false;
  int64_t block_rows = 128, block_cols = 128;  // weight_block_size
  std::string activation_scheme = "dynamic";
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_nextn_predict_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t n_shared_experts = 0;
  int64_t n_routed_experts = 0;  // 0: no MoE (every layer dense)
  double routed_scaling_factor = 1.0;
  int64_t q_lora_rank = 0;  // 0: plain q_proj (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  int64_t n_group = 1, topk_group = 1;
  int64_t num_experts_per_tok = 0;
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense_replace = 0;
  bool norm_topk_prob = true;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  double aux_loss_alpha = 0.0;
  bool seq_aux = true;
  int64_t max_position_embeddings = 4096;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  int64_t bos_token_id = 0;
  std::vector<int64_t> eos_token_ids;
  bool tie_word_embeddings = false;
  RopeConfig rope;
  QuantConfig quant;
  std::string torch_dtype = "bfloat16";
  nlohmann::json raw;  // the parsed file, kept for round-tripping unknown fields

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  bool has_bias_correction() const { return topk_method == TopkMethod::NoauxTc; }
  // softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (§2.3).
  double softmax_scale() const;
  // cos/sin amplitude under YaRN (§3); 1 otherwise.
  double rope_attention_factor() const;
  // inv_freq[i], i < qk_rope_head_dim/2, computed in f32 as transformers does (§3).
  std::vector<float> rope_inv_freq() const;
  // Cached values per token per layer in the absorbed form: kv_lora_rank + qk_rope_head_dim.
  int64_t cache_width() const { return kv_lora_rank + qk_rope_head_dim; }

  static ModelConfig from_json(const nlohmann::json& j, const std::string& what);
  static ModelConfig load(const std::string& path);  // a config.json file or a directory holding one
  void validate(const std::string& what) const;
  // The config as HF config.json (the original fields kept, ours updated).
  nlohmann::json to_json() const;
};

double yarn_get_mscale(double scale, double mscale);

}  // namespace dseek
