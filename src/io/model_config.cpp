// model_config.cpp — parse and validate HF config.json (spec/model.md §1; YaRN §3; softmax scale §2.3).
#include "io/model_config.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"

namespace dseek {

using json = nlohmann::json;

namespace {

struct Reader {
  const json& j;
  const std::string& what;

  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  [[noreturn]] void bad(const char* k, const char* expect) const {
    fail(what, ": field \"", k, "\" must be ", expect, " (got ", j.contains(k) ? j[k].dump() : "nothing",
         ")");
  }
  int64_t integer(const char* k) const {
    if (!has(k)) fail(what, ": missing required field \"", k, "\"");
    return integer_or(k, 0);
  }
  int64_t integer_or(const char* k, int64_t def) const {
    if (!has(k)) return def;
    const json& v = j[k];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())
      return int64_t(v.get<double>());
    bad(k, "an integer");
  }
  double number_or(const char* k, double def) const {
    if (!has(k)) return def;
    if (!j[k].is_number()) bad(k, "a number");
    return j[k].get<double>();
  }
  bool boolean_or(const char* k, bool def) const {
    if (!has(k)) return def;
    if (!j[k].is_boolean()) bad(k, "true or false");
    return j[k].get<bool>();
  }
  std::string string_or(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j[k].is_string()) bad(k, "a string");
    return j[k].get<std::string>();
  }
};

void parse_rope(ModelConfig& c, const json& j, const std::string& what) {
  Reader r{j, what};
  c.rope.theta = r.number_or("rope_theta", 10000.0);
  const json* p = nullptr;
  std::string field;
  if (r.has("rope_parameters")) {
    p = &j["rope_parameters"];
    field = "rope_parameters";
  } else if (r.has("rope_scaling")) {
    p = &j["rope_scaling"];
    field = "rope_scaling";
  }
  if (!p) return;
  if (!p->is_object()) fail(what, ": field \"", field, "\" must be an object or null");
  std::string sub = what + " (" + field + ")";
  Reader q{*p, sub};
  std::string type =
      q.has("rope_type") ? q.string_or("rope_type", "default") : q.string_or("type", "default");
  if (q.has("rope_theta")) c.rope.theta = q.number_or("rope_theta", c.rope.theta);
  if (type == "default") return;
  if (type != "yarn")
    fail(what, ": ", field, " type \"", type, "\" is not supported (DeepSeek models use \"yarn\")");
  c.rope.type = "yarn";
  c.rope.original_max_position_embeddings =
      q.integer_or("original_max_position_embeddings", c.max_position_embeddings);
  double derived = double(c.max_position_embeddings) /
                   double(std::max<int64_t>(c.rope.original_max_position_embeddings, 1));
  c.rope.factor = q.number_or("factor", derived);
  c.rope.beta_fast = q.number_or("beta_fast", 32.0);
  c.rope.beta_slow = q.number_or("beta_slow", 1.0);
  c.rope.mscale = q.number_or("mscale", 0.0);
  c.rope.mscale_all_dim = q.number_or("mscale_all_dim", 0.0);
  c.rope.attention_factor = q.number_or("attention_factor", 0.0);
  c.rope.truncate = q.boolean_or("truncate", true);
  if (!(c.rope.factor > 0)) fail(what, ": ", field, ".factor must be positive");
  if (c.rope.original_max_position_embeddings <= 0)
    fail(what, ": ", field, ".original_max_position_embeddings must be positive");
  if (!(c.rope.beta_fast > 0) || !(c.rope.beta_slow > 0))
    fail(what, ": ", field, ".beta_fast/beta_slow must be positive");
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& what) {
  if (!j.is_object()) fail(what, ": config is not a JSON object");
  Reader r{j, what};
  ModelConfig c;
  c.raw = j;
  c.model_type = r.string_or("model_type", "");
  if (c.model_type != "deepseek_v3" && c.model_type != "deepseek_v2")
    fail(what, ": model_type \"", c.model_type,
         "\" is not supported (expected \"deepseek_v3\" or \"deepseek_v2\")");
  const bool v3 = c.model_type == "deepseek_v3";
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.kv_lora_rank = r.integer("kv_lora_rank");
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim");
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim");
  c.v_head_dim = r.integer("v_head_dim");
  if (!j.contains("q_lora_rank"))
    fail(what, ": missing required field \"q_lora_rank\" (null for a plain q_proj)");
  c.q_lora_rank = r.integer_or("q_lora_rank", 0);
  if (!j.contains("n_routed_experts"))
    fail(what, ": missing required field \"n_routed_experts\" (null for a dense model)");
  c.n_routed_experts = r.integer_or("n_routed_experts", 0);
  c.num_nextn_predict_layers = r.integer_or("num_nextn_predict_layers", 0);
  c.first_k_dense_replace = r.integer_or("first_k_dense_replace", 0);
  c.moe_layer_freq = r.integer_or("moe_layer_freq", 1);
  c.intermediate_size = r.integer_or("intermediate_size", 0);
  c.moe_intermediate_size = r.integer_or("moe_intermediate_size", 0);
  c.n_shared_experts = r.integer_or("n_shared_experts", 0);
  c.num_experts_per_tok = r.integer_or("num_experts_per_tok", 0);
  c.routed_scaling_factor = r.number_or("routed_scaling_factor", 1.0);
  c.n_group = r.integer_or("n_group", 1);
  c.topk_group = r.integer_or("topk_group", 1);
  c.norm_topk_prob = r.boolean_or("norm_topk_prob", v3);
  std::string sf = r.string_or("scoring_func", v3 ? "sigmoid" : "softmax");
  if (sf == "sigmoid") {
    c.scoring_func = ScoringFunc::Sigmoid;
  } else if (sf == "softmax") {
    c.scoring_func = ScoringFunc::Softmax;
  } else {
    fail(what, ": scoring_func \"", sf, "\" is not supported (sigmoid or softmax)");
  }
  std::string tm = r.string_or("topk_method", v3 ? "noaux_tc" : "greedy");
  if (tm == "noaux_tc") {
    c.topk_method = TopkMethod::NoauxTc;
  } else if (tm == "greedy") {
    c.topk_method = TopkMethod::Greedy;
  } else if (tm == "group_limited_greedy") {
    c.topk_method = TopkMethod::GroupLimitedGreedy;
  } else {
    fail(what, ": topk_method \"", tm, "\" is not supported (noaux_tc, greedy or group_limited_greedy)");
  }
  c.aux_loss_alpha = r.number_or("aux_loss_alpha", 0.0);
  c.seq_aux = r.boolean_or("seq_aux", true);
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 4096);
  c.initializer_range = r.number_or("initializer_range", 0.02);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.bos_token_id = r.integer_or("bos_token_id", 0);
  if (r.has("eos_token_id")) {
    const json& e = j["eos_token_id"];
    if (e.is_array()) {
      for (auto& x : e) {
        if (!x.is_number_integer()) r.bad("eos_token_id", "an integer or a list of integers");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(r.integer_or("eos_token_id", 1));
    }
  }
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") fail(what, ": hidden_act \"", act, "\" is not supported (DeepSeek uses \"silu\")");
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", "bfloat16"));
  parse_rope(c, j, what);

  if (r.has("quantization_config")) {
    const json& qj = j["quantization_config"];
    if (!qj.is_object()) fail(what, ": quantization_config must be an object");
    std::string qw = what + " (quantization_config)";
    Reader q{qj, qw};
    std::string method = q.string_or("quant_method", "");
    if (method != "fp8")
      fail(what, ": quantization_config.quant_method \"", method, "\" is not supported (only \"fp8\")");
    std::string fmt = q.string_or("fmt", "e4m3");
    if (fmt != "e4m3") fail(what, ": quantization_config.fmt \"", fmt, "\" is not supported (only \"e4m3\")");
    c.quant.fp8 = true;
    c.quant.activation_scheme = q.string_or("activation_scheme", "dynamic");
    if (q.has("weight_block_size")) {
      const json& b = qj["weight_block_size"];
      if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
          b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0)
        fail(what, ": quantization_config.weight_block_size must be two positive integers (got ", b.dump(),
             ")");
      c.quant.block_rows = b[0].get<int64_t>();
      c.quant.block_cols = b[1].get<int64_t>();
    }
  }
  c.validate(what);
  return c;
}

void ModelConfig::validate(const std::string& what) const {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail(what, ": field \"", name, "\" must be positive (got ", v, ")");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(kv_lora_rank, "kv_lora_rank");
  positive(qk_nope_head_dim, "qk_nope_head_dim");
  positive(qk_rope_head_dim, "qk_rope_head_dim");
  positive(v_head_dim, "v_head_dim");
  if (qk_rope_head_dim % 2) fail(what, ": qk_rope_head_dim must be even (got ", qk_rope_head_dim, ")");
  if (q_lora_rank < 0) fail(what, ": q_lora_rank must be positive or null");
  if (num_nextn_predict_layers < 0) fail(what, ": num_nextn_predict_layers must not be negative");
  if (moe_layer_freq < 1) fail(what, ": moe_layer_freq must be at least 1");
  if (first_k_dense_replace < 0) fail(what, ": first_k_dense_replace must not be negative");
  if (!(rms_norm_eps > 0)) fail(what, ": rms_norm_eps must be positive");
  if (!(rope.theta > 0)) fail(what, ": rope_theta must be positive");
  if (max_position_embeddings <= 0) fail(what, ": max_position_embeddings must be positive");
  bool any_dense = false, any_moe = false;
  for (int64_t l = 0; l < num_hidden_layers + num_nextn_predict_layers; ++l) {
    bool moe = is_moe_layer(l) || (l >= num_hidden_layers && n_routed_experts > 0);
    (moe ? any_moe : any_dense) = true;
  }
  if (any_dense) positive(intermediate_size, "intermediate_size");
  if (any_moe) {
    positive(moe_intermediate_size, "moe_intermediate_size");
    positive(num_experts_per_tok, "num_experts_per_tok");
    if (n_shared_experts < 0) fail(what, ": n_shared_experts must not be negative");
    if (num_experts_per_tok > n_routed_experts)
      fail(what, ": num_experts_per_tok (", num_experts_per_tok, ") exceeds n_routed_experts (",
           n_routed_experts, ")");
    if (topk_method != TopkMethod::Greedy) {
      if (n_group < 1 || n_routed_experts % n_group != 0)
        fail(what, ": n_routed_experts (", n_routed_experts, ") must divide into n_group (", n_group,
             ") equal groups");
      if (topk_group < 1 || topk_group > n_group)
        fail(what, ": topk_group (", topk_group, ") must be between 1 and n_group (", n_group, ")");
      if (num_experts_per_tok > topk_group * (n_routed_experts / n_group))
        fail(what, ": num_experts_per_tok (", num_experts_per_tok, ") exceeds the experts in topk_group (",
             topk_group, ") groups");
    }
  }
  auto check_tok = [&](int64_t id, const char* name) {
    if (id < 0 || id >= vocab_size)
      fail(what, ": ", name, " ", id, " is outside the vocabulary (", vocab_size, ")");
  };
  check_tok(bos_token_id, "bos_token_id");
  for (int64_t e : eos_token_ids) check_tok(e, "eos_token_id");
}

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope.type == "yarn" && rope.mscale_all_dim != 0.0) {
    double m = yarn_get_mscale(rope.factor, rope.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

double ModelConfig::rope_attention_factor() const {
  if (rope.type != "yarn") return 1.0;
  if (rope.attention_factor != 0.0) return rope.attention_factor;
  if (rope.mscale != 0.0 && rope.mscale_all_dim != 0.0)
    return yarn_get_mscale(rope.factor, rope.mscale) / yarn_get_mscale(rope.factor, rope.mscale_all_dim);
  return yarn_get_mscale(rope.factor, 1.0);
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  const int64_t dim = qk_rope_head_dim;
  const float base = float(rope.theta);
  std::vector<float> inv(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) inv[size_t(i)] = 1.0f / std::pow(base, float(2 * i) / float(dim));
  if (rope.type != "yarn") return inv;
  const double L0 = double(rope.original_max_position_embeddings);
  auto correction_dim = [&](double rot) {
    return double(dim) * std::log(L0 / (rot * 2.0 * M_PI)) / (2.0 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  const float factor = float(rope.factor);
  for (int64_t i = 0; i < dim / 2; ++i) {
    float ramp = std::clamp((float(i) - float(low)) / (float(high) - float(low)), 0.0f, 1.0f);
    float extrap = 1.0f - ramp;  // weight of the original frequency
    float orig = inv[size_t(i)];
    float interp = 1.0f / (factor * std::pow(base, float(2 * i) / float(dim)));
    inv[size_t(i)] = interp * (1.0f - extrap) + orig * extrap;
  }
  return inv;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "config.json").string();
  std::string text = io::read_text_file(file);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(file, ": not valid JSON: ", e.what());
  }
  return from_json(j, file);
}

json ModelConfig::to_json() const {
  json j = raw;
  j["torch_dtype"] = torch_dtype;
  return j;
}

}  // namespace dseek
