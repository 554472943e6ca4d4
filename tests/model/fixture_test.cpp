// fixture_test.cpp — the forward pass against transformers' float64 reference (tests/data, copied from
// ../shared/fixtures): logits, hidden states, router choices, loss, and greedy generation through the
// latent cache, for tiny-v3 (V3 layout), tiny-v3-fp8 (DeepSeek's fp8 block layout) and tiny-v2.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test_util.h"

namespace dseek {
namespace {

nlohmann::json read_json(const std::string& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

double ce_loss(const Tensor& logits, const Tensor& ids) {
  const int64_t B = ids.size(0), T = ids.size(1), V = logits.size(2);
  double total = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* l = logits.data<float>() + (b * T + t) * V;
      double mx = *std::max_element(l, l + V), z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      total += std::log(z) + mx - l[ids.data<int64_t>()[b * T + t + 1]];
    }
  return total / double(B * (T - 1));
}

void check_logits(const std::string& name, bool check_hidden, bool check_router) {
  const std::string dir = test::data(name);
  Model m = Model::load(dir, {.dtype = DType::F32});
  auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
  Tensor ids = ref->get("input_ids");
  ForwardTrace tr;
  Tensor logits = m.forward(ids, &tr);
  test::Diff d = test::diff(logits, ref->get("logits"));
  EXPECT_FALSE(d.nan);
  EXPECT_LE(d.max_abs, 1e-3) << name << ": " << test::str(d);
  EXPECT_LE(d.rel, 1e-5) << name << ": " << test::str(d);
  std::printf("[%s] logits %s\n", name.c_str(), test::str(d).c_str());
  if (check_hidden) {
    ASSERT_EQ(int64_t(tr.hidden.size()), m.cfg.num_hidden_layers + 1);
    for (size_t i = 0; i < tr.hidden.size(); ++i) {
      test::Diff h = test::diff(tr.hidden[i], ref->get("hidden." + std::to_string(i)));
      EXPECT_LE(h.rel, 1e-5) << name << " hidden." << i << ": " << test::str(h);
    }
    Tensor loss = ref->get("loss");
    EXPECT_NEAR(ce_loss(logits, ids), double(loss.data<float>()[0]), 1e-5);
  }
  if (check_router) {
    ASSERT_EQ(tr.routers.size(), 2u);
    for (size_t j = 0; j < tr.routers.size(); ++j) {
      Tensor want = ref->get("router_topk." + std::to_string(j));
      const Tensor& got = tr.routers[j].topk_idx;
      ASSERT_EQ(got.shape(), want.shape());
      for (int64_t i = 0; i < want.numel(); ++i)
        ASSERT_EQ(got.data<int32_t>()[i], want.data<int32_t>()[i]) << "router_topk." << j << " element " << i;
    }
  }
}

void check_greedy(const std::string& name) {
  const std::string dir = test::data(name);
  Model m = Model::load(dir, {.dtype = DType::F32});
  auto j = read_json(dir + "/ref.json");
  std::vector<int64_t> prompt = j["prompt_ids"], want = j["greedy_ids"];
  infer::GenerateOptions go;
  go.max_new_tokens = int64_t(want.size());
  go.stop_at_eos = false;
  infer::GenerateResult r = infer::generate(m, prompt, go);
  EXPECT_EQ(r.ids, want) << name;
}

TEST(Fixture, TinyV3Logits) {
  check_logits("tiny-v3", true, true);
}
TEST(Fixture, TinyV3Fp8Logits) {
  check_logits("tiny-v3-fp8", false, false);
}
TEST(Fixture, TinyV2Logits) {
  check_logits("tiny-v2", true, false);
}
TEST(Fixture, TinyV3GreedyThroughCache) {
  check_greedy("tiny-v3");
}
TEST(Fixture, TinyV2GreedyThroughCache) {
  check_greedy("tiny-v2");
}

TEST(Fixture, Fp8DequantizesBlockwise) {
  // The fp8 model dequantized must differ from the f32 original (the quantization is real) while every
  // dequantized weight equals fp8 value × its 32×32 block scale exactly.
  const std::string dir = test::data("tiny-v3-fp8");
  Model m = Model::load(dir, {.dtype = DType::F32});
  io::TensorSource src = io::TensorSource::open_dir(dir);
  const std::string n = "model.layers.1.self_attn.q_b_proj.weight";  // [96, 48]: a partial block column
  Tensor q = src.get(n), s = src.get("model.layers.1.self_attn.q_b_proj.weight_scale_inv");
  ASSERT_EQ(q.dtype(), DType::F8E4M3);
  ASSERT_EQ(s.shape(), (Shape{3, 2}));
  const Tensor& w = m.w.layers[1].attn.q_b_proj;
  for (int64_t r = 0; r < 96; ++r)
    for (int64_t c = 0; c < 48; ++c) {
      float want = f8e4m3_to_f32(static_cast<const uint8_t*>(q.raw())[r * 48 + c]) *
                   s.data<float>()[(r / 32) * 2 + c / 32];
      ASSERT_EQ(w.data<float>()[r * 48 + c], want) << r << "," << c;
    }
  // A bf16 load of the same checkpoint stays within bf16 rounding of the f32 one.
  Model b = Model::load(dir, {.dtype = DType::BF16});
  EXPECT_EQ(b.w.layers[1].attn.q_b_proj.dtype(), DType::BF16);
  EXPECT_LE(test::diff(b.w.layers[1].attn.q_b_proj, w).rel, 4e-3);
  EXPECT_GT(test::diff(b.w.layers[1].attn.q_b_proj, w).max_abs, 0.0);
}

TEST(Fixture, MissingOrMisshapenTensorsAreNamed) {
  ModelConfig c = ModelConfig::load(test::data("tiny-v3"));
  io::TensorSource src = io::TensorSource::open_dir(test::data("tiny-v3"));
  nlohmann::json j = c.raw;
  j["kv_lora_rank"] = 16;  // the checkpoint was made with 32
  ModelConfig bad = ModelConfig::from_json(j, "edited");
  try {
    load_weights(src, bad, {});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_a_proj_with_mqa"), std::string::npos) << e.what();
  }
  j = c.raw;
  j["num_hidden_layers"] = 4;
  ModelConfig more = ModelConfig::from_json(j, "edited");
  try {
    load_weights(src, more, {.dtype = DType::F32, .load_mtp = false});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3."), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dseek
