// gradcheck_test.cpp — every module's backward (MLA with and without the q low-rank path and YaRN,
// dense MLP, MoE with shared experts and the balance loss, decoder layer, MTP modules, the whole model's
// loss) against central finite differences in f64.
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/model.h"
#include "test_util.h"

namespace dseek {
namespace {

using test::dot;
using test::expect_grad;
using test::randn;

ModelConfig config(const std::string& fixture, double init_std) {
  ModelConfig c = ModelConfig::load(test::data(fixture));
  nlohmann::json j = c.raw;
  j["initializer_range"] = init_std;
  return ModelConfig::from_json(j, fixture + " (test)");
}

struct Seqs {
  Tensor positions;
  std::vector<SeqChunk> chunks;
  Seqs(int64_t B, int64_t L) : positions(Tensor::empty({B * L}, DType::I64)) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < L; ++t) positions.data<int64_t>()[b * L + t] = t + 5;  // RoPE beyond 0
      chunks.push_back({.row0 = b * L, .len = L, .pos0 = 0, .cache = nullptr});
    }
  }
};

void check_mla(const std::string& fixture, bool recompute) {
  ModelConfig c = config(fixture, 0.3);
  Weights w = init_weights(c, DType::F64, 3, false);
  Rope rope = Rope::from(c);
  std::mt19937 rng(12);
  const int64_t B = 2, L = 5, N = B * L, D = c.hidden_size;
  Seqs s(B, L);
  Tensor x = randn({N, D}, rng), r = randn({N, D}, rng), y = Tensor::empty({N, D}, DType::F64);
  MlaWeights& a = w.layers[0].attn;
  MlaSaved saved;
  saved.recompute = recompute;
  mla_fwd(y, x, a, c, rope, s.positions, s.chunks, 0, AttnPath::Naive, &saved);
  Weights g = zero_grads(w, c, DType::F64);
  Tensor dx = Tensor::empty({N, D}, DType::F64);
  mla_bwd(dx, g.layers[0].attn, r, a, c, rope, s.positions, s.chunks, saved);
  auto f = [&] {
    mla_fwd(y, x, a, c, rope, s.positions, s.chunks, 0, AttnPath::Naive, nullptr);
    return dot(r, y);
  };
  expect_grad("mla dx", x, dx, f);
  MlaWeights& ga = g.layers[0].attn;
  if (c.q_lora_rank > 0) {
    expect_grad("mla q_a_proj", a.q_a_proj, ga.q_a_proj, f);
    expect_grad("mla q_a_layernorm", a.q_a_layernorm, ga.q_a_layernorm, f);
    expect_grad("mla q_b_proj", a.q_b_proj, ga.q_b_proj, f);
  } else {
    expect_grad("mla q_proj", a.q_proj, ga.q_proj, f);
  }
  expect_grad("mla kv_a_proj_with_mqa", a.kv_a_proj_with_mqa, ga.kv_a_proj_with_mqa, f, 40);
  expect_grad("mla kv_a_layernorm", a.kv_a_layernorm, ga.kv_a_layernorm, f);
  expect_grad("mla kv_b_proj", a.kv_b_proj, ga.kv_b_proj, f);
  expect_grad("mla o_proj", a.o_proj, ga.o_proj, f);
}

TEST(ModuleGradCheck, MlaQLoraYarn) {
  check_mla("tiny-v3", false);
}
TEST(ModuleGradCheck, MlaQLoraYarnRecompute) {
  check_mla("tiny-v3", true);
}
TEST(ModuleGradCheck, MlaPlainQ) {
  check_mla("tiny-v2", false);
}

void check_ffn(const std::string& fixture, int layer, double alpha) {
  ModelConfig c = config(fixture, 0.3);
  Weights w = init_weights(c, DType::F64, 4, false);
  std::mt19937 rng(13);
  const int64_t N = 12, D = c.hidden_size;
  Tensor x = randn({N, D}, rng), r = randn({N, D}, rng), y = Tensor::empty({N, D}, DType::F64);
  Weights g = zero_grads(w, c, DType::F64);
  Tensor dx = Tensor::empty({N, D}, DType::F64);
  LayerWeights& L = w.layers[size_t(layer)];
  LayerWeights& G = g.layers[size_t(layer)];
  const MoeOptions mo{.balance_alpha = alpha, .seq_len = 6};
  if (!L.is_moe) {
    MlpSaved s;
    mlp_fwd(y, x, L.mlp, &s);
    mlp_bwd(dx, G.mlp, r, L.mlp, s);
    auto f = [&] {
      mlp_fwd(y, x, L.mlp);
      return dot(r, y);
    };
    expect_grad("mlp dx", x, dx, f);
    expect_grad("mlp gate_proj", L.mlp.gate_proj, G.mlp.gate_proj, f);
    expect_grad("mlp up_proj", L.mlp.up_proj, G.mlp.up_proj, f);
    expect_grad("mlp down_proj", L.mlp.down_proj, G.mlp.down_proj, f);
    return;
  }
  MoeSaved s;
  RouterTrace tr;
  moe_fwd(y, x, L.moe, c, &tr, &s, mo);
  moe_bwd(dx, G.moe, r, L.moe, c, s, mo);
  auto f = [&] {
    RouterTrace t2;
    MoeSaved s2;
    moe_fwd(y, x, L.moe, c, &t2, &s2, mo);
    for (int64_t i = 0; i < tr.topk_idx.numel(); ++i)
      EXPECT_EQ(t2.topk_idx.data<int32_t>()[i], tr.topk_idx.data<int32_t>()[i]) << "routing changed";
    return dot(r, y) + s2.balance_loss;
  };
  expect_grad("moe dx", x, dx, f, 40);
  expect_grad("moe router gate", L.moe.gate, G.moe.gate, f, 40);
  for (int e : {0, 3, 7}) {
    if (s.plan.rows(e) == 0) continue;
    expect_grad("moe expert gate_proj", L.moe.experts[size_t(e)].gate_proj,
                G.moe.experts[size_t(e)].gate_proj, f);
    expect_grad("moe expert down_proj", L.moe.experts[size_t(e)].down_proj,
                G.moe.experts[size_t(e)].down_proj, f);
  }
  expect_grad("moe shared up_proj", L.moe.shared.up_proj, G.moe.shared.up_proj, f);
}

TEST(ModuleGradCheck, DenseMlp) {
  check_ffn("tiny-v3", 0, 0);
}
TEST(ModuleGradCheck, MoeSigmoidWithBalanceLoss) {
  check_ffn("tiny-v3", 1, 0.1);
}
TEST(ModuleGradCheck, MoeSoftmaxTwoSharedExperts) {
  check_ffn("tiny-v2", 2, 0.05);
}

// The whole model: embedding, layers, final norm, LM head, and the MTP module (embedding-first
// concatenation, its own layer and shared-head norm), with the balance loss.
void check_model(const std::string& fixture, double mtp_lambda, bool recompute) {
  ModelConfig c = config(fixture, 0.2);
  Model m = Model::from_weights(c, init_weights(c, DType::F64, 5, true));
  std::mt19937 rng(14);
  const int64_t B = 2, T = 7;
  Tensor ids = Tensor::empty({B, T}, DType::I64), tg = Tensor::empty({B, T}, DType::I64);
  for (int64_t i = 0; i < B * T; ++i) {
    ids.data<int64_t>()[i] = int64_t(rng() % uint32_t(c.vocab_size));
    tg.data<int64_t>()[i] = i % T == T - 1 ? -1 : int64_t(rng() % uint32_t(c.vocab_size));
  }
  const TrainOptions opt{.mtp_lambda = mtp_lambda, .balance_alpha = 0.05, .recompute = recompute};
  Weights g = zero_grads(m.w, m.cfg, DType::F64);
  TrainResult r0 = m.forward_backward(ids, tg, opt, &g);
  if (mtp_lambda > 0) {
    EXPECT_EQ(r0.mtp_losses.size(), 1u);
  }
  auto f = [&] { return m.forward_backward(ids, tg, opt, nullptr).loss; };
  Weights& w = m.w;
  for (int64_t i : {0, 5, 9})  // rows of tokens in the batch (other rows have no gradient)
    expect_grad("model embed_tokens row", w.embed_tokens[ids.data<int64_t>()[i]],
                g.embed_tokens[ids.data<int64_t>()[i]], f);
  expect_grad("model lm_head", w.lm_head, g.lm_head, f);
  expect_grad("model norm", w.norm, g.norm, f);
  expect_grad("model layer0 input_layernorm", w.layers[0].input_layernorm, g.layers[0].input_layernorm, f);
  expect_grad("model layer1 post_attention_layernorm", w.layers[1].post_attention_layernorm,
              g.layers[1].post_attention_layernorm, f);
  expect_grad("model layer2 router", w.layers[2].moe.gate, g.layers[2].moe.gate, f);
  expect_grad("model layer2 kv_b_proj", w.layers[2].attn.kv_b_proj, g.layers[2].attn.kv_b_proj, f);
  if (mtp_lambda > 0) {
    MtpWeights& M = w.mtp[0];
    MtpWeights& G = g.mtp[0];
    expect_grad("mtp enorm", M.enorm, G.enorm, f);
    expect_grad("mtp hnorm", M.hnorm, G.hnorm, f);
    expect_grad("mtp eh_proj", M.eh_proj, G.eh_proj, f, 40);
    expect_grad("mtp shared_head.norm", M.shared_head_norm, G.shared_head_norm, f);
    expect_grad("mtp layer o_proj", M.layer.attn.o_proj, G.layer.attn.o_proj, f);
    expect_grad("mtp layer router", M.layer.moe.gate, G.layer.moe.gate, f);
    expect_grad("mtp layer shared expert", M.layer.moe.shared.down_proj, G.layer.moe.shared.down_proj, f);
  }
}

TEST(ModelGradCheck, V3WithMtpAndBalanceLoss) {
  check_model("tiny-v3", 0.3, false);
}
TEST(ModelGradCheck, V3WithMtpRecompute) {
  check_model("tiny-v3", 0.3, true);
}
TEST(ModelGradCheck, V2) {
  check_model("tiny-v2", 0.0, false);
}

}  // namespace
}  // namespace dseek
