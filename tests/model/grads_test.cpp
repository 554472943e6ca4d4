// grads_test.cpp — the training backward against transformers' float64 gradients of tiny-v3 and
// tiny-v2 (loss within 1e-5, every parameter's gradient within ‖Δ‖/‖ref‖ ≤ 1e-4), with and without
// recomputation (which also gives the same bits).
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "test_util.h"

namespace dseek {
namespace {

void check_grads(const std::string& name, bool recompute) {
  const std::string dir = test::data(name);
  Model m = Model::load(dir, {.dtype = DType::F32});
  auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
  Tensor ids = ref->get("input_ids");
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor targets = Tensor::empty({B, T}, DType::I64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      targets.data<int64_t>()[b * T + t] = t + 1 < T ? ids.data<int64_t>()[b * T + t + 1] : -1;
  Weights g = zero_grads(m.w, m.cfg, DType::F32);
  TrainResult r = m.forward_backward(ids, targets, {.recompute = recompute}, &g);
  EXPECT_NEAR(r.loss, double(ref->get("loss").data<float>()[0]), 1e-5) << name;
  int checked = 0;
  double worst = 0;
  std::string worst_name;
  for (auto& p : param_table(g, m.cfg, false)) {
    if (p.kind == ParamKind::Bias) {
      EXPECT_EQ(ref->find("grad." + p.name), nullptr)
          << "the reference has a gradient for the bias " << p.name;
      continue;
    }
    const io::TensorInfo* info = ref->find("grad." + p.name);
    ASSERT_NE(info, nullptr) << "no reference gradient for " << p.name;
    test::Diff d = test::diff(*p.tensor, ref->get("grad." + p.name));
    EXPECT_FALSE(d.nan) << p.name;
    EXPECT_LE(d.rel, 1e-4) << name << " " << p.name << ": " << test::str(d);
    if (d.rel > worst) {
      worst = d.rel;
      worst_name = p.name;
    }
    ++checked;
  }
  std::printf("[%s%s] %d gradients, worst ‖Δ‖/‖ref‖ = %.2e (%s), loss %.8f\n", name.c_str(),
              recompute ? " recompute" : "", checked, worst, worst_name.c_str(), r.loss);
  EXPECT_GT(checked, 50);
  // The gradients are views of one buffer, and zero_grads_ clears every one of them.
  ASSERT_TRUE(g.storage.defined());
  zero_grads_(g);
  for (auto& p : param_table(g, m.cfg, false)) {
    if (!p.tensor->defined()) continue;
    EXPECT_EQ(test::diff(*p.tensor, Tensor::zeros(p.shape, DType::F32)).max_abs, 0.0) << p.name;
  }
}

TEST(Grads, TinyV3MatchesTransformers) {
  check_grads("tiny-v3", false);
}
TEST(Grads, TinyV3WithRecompute) {
  check_grads("tiny-v3", true);
}
TEST(Grads, TinyV2MatchesTransformers) {
  check_grads("tiny-v2", false);
}

// Recompute rebuilds the norms, MLA's up-projections and the MoE's permuted rows and gate/up products
// through the forward's own code: the same gradients bit for bit, with and without MTP.
TEST(Grads, RecomputeGivesTheSameBits) {
  for (const char* name : {"tiny-v3", "tiny-v2"}) {
    const std::string dir = test::data(name);
    Model m = Model::load(dir, {.dtype = DType::F32});
    auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
    Tensor ids = ref->get("input_ids");
    Tensor targets = ids.clone();  // any targets: the same on both sides
    const double mtp = m.w.has_mtp ? 0.3 : 0.0;
    Weights g0 = zero_grads(m.w, m.cfg, DType::F32), g1 = zero_grads(m.w, m.cfg, DType::F32);
    const TrainResult r0 = m.forward_backward(ids, targets, {.mtp_lambda = mtp, .recompute = false}, &g0);
    const TrainResult r1 = m.forward_backward(ids, targets, {.mtp_lambda = mtp, .recompute = true}, &g1);
    EXPECT_EQ(r0.loss, r1.loss) << name;
    auto p0 = param_table(g0, m.cfg, false), p1 = param_table(g1, m.cfg, false);
    ASSERT_EQ(p0.size(), p1.size());
    for (size_t i = 0; i < p0.size(); ++i) {
      if (!p0[i].tensor->defined()) continue;
      EXPECT_EQ(test::diff(*p1[i].tensor, *p0[i].tensor).max_abs, 0.0) << name << " " << p0[i].name;
    }
  }
}

}  // namespace
}  // namespace dseek
