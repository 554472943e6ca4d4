// config_test.cpp — config.json parsing for V3 / V2 / V2-Lite, both RoPE spellings, fp8 quantization
// blocks, YaRN numbers from spec/model.md §2.3 and §3, and clear errors for missing or inconsistent fields.
#include <gtest/gtest.h>

#include <cmath>

#include "io/model_config.h"
#include "test_util.h"

namespace dseek {
namespace {

using json = nlohmann::json;

json v3_full() {
  return json::parse(R"({
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
    "routed_scaling_factor": 2.5, "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
    "first_k_dense_replace": 3, "moe_layer_freq": 1, "norm_topk_prob": true, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "max_position_embeddings": 163840, "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]}})");
}

json v2_lite() {
  return json::parse(R"({
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
    "scoring_func": "softmax", "norm_topk_prob": false, "routed_scaling_factor": 1.0, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "bos_token_id": 100000, "eos_token_id": 100001,
    "torch_dtype": "bfloat16"})");
}

void expect_error(const json& j, std::initializer_list<std::string> parts) {
  try {
    ModelConfig::from_json(j, "cfg.json");
    ADD_FAILURE() << "accepted " << j.dump();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cfg.json"), std::string::npos) << m;
    for (const auto& p : parts)
      EXPECT_NE(m.find(p), std::string::npos) << "missing \"" << p << "\" in: " << m;
  }
}

TEST(Config, DeepSeekV3) {
  ModelConfig c = ModelConfig::from_json(v3_full(), "v3");
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.cache_width(), 576);
  EXPECT_TRUE(c.quant.fp8);
  EXPECT_EQ(c.quant.block_rows, 128);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_NEAR(c.softmax_scale(), 0.13523378, 1e-8);  // spec §2.3
  EXPECT_DOUBLE_EQ(c.rope_attention_factor(), 1.0);
  auto f = c.rope_inv_freq();
  ASSERT_EQ(f.size(), 32u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_NEAR(f[31], 3.33380e-6, 1e-10);
  // Pairs up to 10 keep the original frequency, from 23 they are divided by 40 (low 10, high 23).
  EXPECT_FLOAT_EQ(f[10], std::pow(10000.0f, -20.0f / 64.0f));
  EXPECT_FLOAT_EQ(f[23], std::pow(10000.0f, -46.0f / 64.0f) / 40.0f);
  const float orig16 = std::pow(10000.0f, -32.0f / 64.0f);
  EXPECT_NEAR(f[16], orig16 * (1 - 6.0f / 13) + orig16 / 40 * (6.0f / 13), 1e-9);
}

TEST(Config, V2LiteAndNewRopeParameters) {
  ModelConfig c = ModelConfig::from_json(v2_lite(), "v2");
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.scoring_func, ScoringFunc::Softmax);
  EXPECT_EQ(c.topk_method, TopkMethod::Greedy);
  EXPECT_FALSE(c.has_bias_correction());
  EXPECT_NEAR(c.softmax_scale(), 0.1147214, 1e-6);  // spec §2.3
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{100001});
  // transformers v5 spelling: rope_parameters with rope_type and rope_theta inside.
  json j = v2_lite();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0},
                          {"factor", 40.0},      {"original_max_position_embeddings", 4096},
                          {"beta_fast", 32.0},   {"beta_slow", 1.0},
                          {"mscale", 0.707},     {"mscale_all_dim", 0.707}};
  ModelConfig d = ModelConfig::from_json(j, "v2new");
  EXPECT_EQ(d.rope_inv_freq(), c.rope_inv_freq());
  EXPECT_DOUBLE_EQ(d.softmax_scale(), c.softmax_scale());
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500.0}};
  ModelConfig e = ModelConfig::from_json(j, "v2plain");
  EXPECT_EQ(e.rope.type, "default");
  EXPECT_FLOAT_EQ(e.rope_inv_freq()[1], std::pow(500.0f, -2.0f / 64.0f));
  EXPECT_NEAR(e.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
}

TEST(Config, Fixtures) {
  ModelConfig a = ModelConfig::load(test::data("tiny-v3"));
  EXPECT_EQ(a.n_group, 4);
  EXPECT_EQ(a.rope.type, "yarn");
  EXPECT_EQ(a.rope.factor, 4.0);
  ModelConfig b = ModelConfig::load(test::data("tiny-v3-fp8/config.json"));
  EXPECT_EQ(b.quant.block_rows, 32);
  EXPECT_EQ(b.quant.block_cols, 32);
  ModelConfig v2 = ModelConfig::load(test::data("tiny-v2"));
  EXPECT_EQ(v2.rope.type, "default");
  EXPECT_EQ(v2.n_shared_experts, 2);
  EXPECT_THROW(ModelConfig::load(test::data("nope")), Error);
}

TEST(Config, ClearErrors) {
  json j = v3_full();
  j.erase("hidden_size");
  expect_error(j, {"hidden_size", "missing"});
  j = v3_full();
  j.erase("q_lora_rank");
  expect_error(j, {"q_lora_rank"});
  j = v3_full();
  j["model_type"] = "llama";
  expect_error(j, {"model_type", "llama"});
  j = v3_full();
  j["n_group"] = 7;
  expect_error(j, {"n_group"});
  j = v3_full();
  j["topk_group"] = 9;
  expect_error(j, {"topk_group"});
  j = v3_full();
  j["num_experts_per_tok"] = 300;
  expect_error(j, {"num_experts_per_tok"});
  j = v3_full();
  j["qk_rope_head_dim"] = 63;
  expect_error(j, {"qk_rope_head_dim", "even"});
  j = v3_full();
  j["scoring_func"] = "relu";
  expect_error(j, {"scoring_func", "relu"});
  j = v3_full();
  j["topk_method"] = "magic";
  expect_error(j, {"topk_method"});
  j = v3_full();
  j["hidden_size"] = "big";
  expect_error(j, {"hidden_size", "integer"});
  j = v3_full();
  j["quantization_config"]["quant_method"] = "gptq";
  expect_error(j, {"quant_method", "gptq"});
  j = v3_full();
  j["quantization_config"]["weight_block_size"] = {128};
  expect_error(j, {"weight_block_size"});
  j = v3_full();
  j["rope_scaling"]["type"] = "dynamic";
  expect_error(j, {"rope_scaling", "dynamic"});
  j = v3_full();
  j["eos_token_id"] = 200000;
  expect_error(j, {"eos_token_id"});
  j = v3_full();
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act"});
  j = v3_full();
  j.erase("moe_intermediate_size");
  expect_error(j, {"moe_intermediate_size"});
  expect_error(json::array(), {"not a JSON object"});
}

}  // namespace
}  // namespace dseek
