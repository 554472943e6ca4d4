// train_test.cpp — the training pieces: schedules, AdamW against torch.optim.AdamW's update written out
// independently, token shards (round trip, malformed files), the loader's determinism and position,
// the bias update and exact resume (N steps + save + resume + N steps == 2N steps, bitwise).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "ops/adamw.h"
#include "test_util.h"
#include "train/compute_copy.h"
#include "train/data.h"
#include "train/schedule.h"
#include "train/trainer.h"

namespace dseek::train {
namespace {

namespace fs = std::filesystem;

struct Tmp {
  fs::path dir;
  Tmp()
      : dir(fs::temp_directory_path() /
            ("dseek-train-" + std::to_string(::getpid()) + "-" + std::to_string(n++))) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Tmp() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
  static inline int n = 0;
};

TEST(Schedule, CosineAndWsd) {
  Schedule c{.kind = "cosine", .lr = 1.0, .min_lr = 0.1, .warmup_steps = 10, .total_steps = 110};
  EXPECT_DOUBLE_EQ(c.at(0), 0.1);
  EXPECT_DOUBLE_EQ(c.at(9), 1.0);
  EXPECT_DOUBLE_EQ(c.at(10), 1.0);
  EXPECT_NEAR(c.at(60), 0.55, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(c.at(110), 0.1, 1e-12);
  Schedule w{
      .kind = "wsd", .lr = 1.0, .min_lr = 0.0, .warmup_steps = 5, .total_steps = 100, .decay_fraction = 0.2};
  EXPECT_DOUBLE_EQ(w.at(50), 1.0);
  EXPECT_DOUBLE_EQ(w.at(79), 1.0);
  EXPECT_NEAR(w.at(90), 0.5, 1e-12);
  EXPECT_LT(w.at(99), 0.01);
  Schedule bad = w;
  bad.min_lr = 2;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(AdamW, MatchesTorchFormula) {
  // torch.optim.AdamW: p *= 1 - lr·wd; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
  // p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps).
  const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  Tensor p = Tensor::empty({3}, DType::F32), g = Tensor::empty({3}, DType::F32);
  Tensor m = Tensor::zeros({3}, DType::F32), v = Tensor::zeros({3}, DType::F32);
  double rp[3] = {0.5, -1.0, 2.0}, rm[3] = {0, 0, 0}, rv[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i) p.data<float>()[i] = float(rp[i]);
  for (int t = 1; t <= 5; ++t) {
    for (int i = 0; i < 3; ++i) g.data<float>()[i] = float(0.1 * (i + 1) * (t % 2 ? 1 : -1));
    ops::adamw_step(p, g, m, v,
                    {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd, .step = t});
    for (int i = 0; i < 3; ++i) {
      const double gi = g.data<float>()[i];
      rp[i] *= 1 - lr * wd;
      rm[i] = b1 * rm[i] + (1 - b1) * gi;
      rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
      rp[i] -= lr / (1 - std::pow(b1, t)) * rm[i] / (std::sqrt(rv[i]) / std::sqrt(1 - std::pow(b2, t)) + eps);
      EXPECT_NEAR(p.data<float>()[i], rp[i], 1e-6) << "step " << t;
    }
  }
  // bf16 moments: the same trajectory within bf16 rounding of the moments.
  Tensor p2 = Tensor::empty({3}, DType::F32), mb = Tensor::zeros({3}, DType::BF16),
         vb = Tensor::zeros({3}, DType::BF16);
  for (int i = 0; i < 3; ++i) p2.data<float>()[i] = float(0.5 - 1.5 * (i == 1) + 1.5 * (i == 2));
  for (int t = 1; t <= 5; ++t) {
    for (int i = 0; i < 3; ++i) g.data<float>()[i] = float(0.1 * (i + 1) * (t % 2 ? 1 : -1));
    ops::adamw_step(p2, g, mb, vb,
                    {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd, .step = t});
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p2.data<float>()[i], rp[i], 2e-4);
}

TEST(Data, ShardRoundTripAndMalformed) {
  Tmp t;
  std::vector<uint32_t> small = {5, 6, 7, 1, 8}, big = {70000, 3, 1};
  write_shard(t / "a.tok", small, 1);
  write_shard(t / "b.tok", big, 1);
  auto a = Shard::open(t / "a.tok"), b = Shard::open(t / "b.tok");
  EXPECT_EQ(a->size(), 5);
  EXPECT_EQ(a->at(2), 7u);
  EXPECT_EQ(b->at(0), 70000u);
  EXPECT_EQ(fs::file_size(t / "a.tok"), 32u + 5 * 2);
  EXPECT_EQ(fs::file_size(t / "b.tok"), 32u + 3 * 4);
  std::string bytes = io::read_text_file(t / "a.tok");
  auto refused = [&](const std::string& img, const std::string& what) {
    std::ofstream(t / "bad.tok", std::ios::binary) << img;
    try {
      Shard::open(t / "bad.tok");
      ADD_FAILURE() << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad.tok"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  refused(bytes.substr(0, 20), "truncated");
  refused("XXXXXXXX" + bytes.substr(8), "magic");
  refused(bytes.substr(0, bytes.size() - 1), "data bytes");
  std::string v = bytes;
  v[12] = 3;
  refused(v, "width");
}

// A data directory from generated text, encoded byte-wise (ids = bytes + 2; eos 1).
std::string make_data(const Tmp& t, int docs) {
  std::ofstream f(t / "in.jsonl");
  for (int i = 0; i < docs; ++i)
    f << "{\"text\": \"document " << i << " says hello to the loader and the trainer\"}\n";
  f.close();
  Encoder enc = [](const std::string& s) {
    std::vector<int64_t> ids;
    for (unsigned char c : s) ids.push_back(int64_t(c) % 62 + 2);
    return ids;
  };
  prepare_data({t / "in.jsonl"}, t / "data", enc, 1, 64, "", {.val_fraction = 0.1, .seed = 3});
  return t / "data";
}

TEST(Data, LoaderIsDeterministicAndSeekable) {
  Tmp t;
  std::string d = make_data(t, 80);
  Loader a(d, "train", 16, 3, 42), b(d, "train", 16, 3, 42), c(d, "train", 16, 3, 43);
  Tensor i1, t1, i2, t2, i3, t3;
  a.next(i1, t1);
  b.next(i2, t2);
  c.next(i3, t3);
  EXPECT_EQ(test::diff(i1.to(DType::F64), i2.to(DType::F64)).max_abs, 0.0);
  EXPECT_GT(test::diff(i1.to(DType::F64), i3.to(DType::F64)).max_abs, 0.0);
  for (int64_t r = 0; r < 3; ++r)  // targets are the ids shifted by one
    for (int64_t k = 0; k + 1 < 16; ++k)
      EXPECT_EQ(t1.data<int64_t>()[r * 16 + k], i1.data<int64_t>()[r * 16 + k + 1]);
  // Run a far past an epoch, remember the position, and check a second loader seeked there continues alike.
  for (int s = 0; s < 200; ++s) a.next(i1, t1);
  auto pos = a.position();
  EXPECT_GT(pos.epoch, 0);
  Loader e(d, "train", 16, 3, 42);
  e.seek(pos);
  a.next(i1, t1);
  e.next(i2, t2);
  EXPECT_EQ(test::diff(i1.to(DType::F64), i2.to(DType::F64)).max_abs, 0.0);
  Loader v(d, "val", 8, 2, 0);
  EXPECT_GT(v.windows(), 0);
  EXPECT_THROW(Loader(d, "test", 8, 1, 0), Error);
  EXPECT_THROW(Loader(t / "nowhere", "train", 8, 1, 0), Error);
}

TrainConfig tiny_cfg(const std::string& data, const std::string& out, int64_t steps) {
  TrainConfig c;
  c.model = "tiny";
  c.data = data;
  c.out = out;
  c.seq_len = 16;
  c.batch_size = 2;
  c.grad_accum = 2;
  c.steps = steps;
  c.schedule = {.kind = "cosine", .lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 2, .total_steps = steps};
  c.eval_every = 3;
  c.eval_batches = 2;
  c.save_every = 3;
  c.keep_last = 2;
  c.sample_tokens = 0;
  c.balance_alpha = 0.01;
  c.seed = 9;
  return c;
}

std::vector<std::string> metric_lines(const std::string& run) {
  std::ifstream f(run + "/metrics.jsonl");
  std::vector<std::string> v;
  std::string l;
  while (std::getline(f, l)) {
    auto j = nlohmann::json::parse(l);
    j.erase("step_seconds");
    j.erase("tokens_per_second");
    v.push_back(j.dump());
  }
  return v;
}

TEST(Trainer, ResumeIsBitwiseExact) {
  Tmp t;
  std::string d = make_data(t, 120);
  TrainSummary full = run_training(tiny_cfg(d, t / "full", 12), "", {}, {});
  EXPECT_EQ(full.steps_done, 12);
  EXPECT_LT(full.last_loss, full.first_loss) << "the loss should fall";
  // The same 12-step run stopped after 6 steps, then resumed from its run directory.
  TrainSummary half = run_training(tiny_cfg(d, t / "split", 12), "", {}, {}, /*stop_after=*/6);
  EXPECT_EQ(half.steps_done, 6);
  TrainSummary rest = run_training(tiny_cfg(d, t / "split", 12), t / "split", {}, {});
  EXPECT_EQ(rest.steps_done, 12);
  auto a = io::SafetensorsFile::open(full.last_checkpoint + "/model.safetensors");
  auto b = io::SafetensorsFile::open(rest.last_checkpoint + "/model.safetensors");
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  for (const auto& ti : a->tensors()) {
    Tensor x = a->get(ti.name), y = b->get(ti.name);
    ASSERT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << "weights differ in " << ti.name;
  }
  auto oa = io::read_text_file(full.last_checkpoint + "/optimizer.safetensors");
  auto ob = io::read_text_file(rest.last_checkpoint + "/optimizer.safetensors");
  EXPECT_EQ(oa, ob) << "optimizer state differs";
  EXPECT_EQ(metric_lines(t / "full"), metric_lines(t / "split"));
  // The checkpoint is a model directory dseek (and transformers) loads; the MTP module is in it.
  EXPECT_NE(b->find("model.layers.2.eh_proj.weight"), nullptr);
  EXPECT_NE(b->find("model.layers.1.mlp.gate.e_score_correction_bias"), nullptr);
  EXPECT_TRUE(fs::exists(t / "split/loss.svg"));
  // keep_last = 2: checkpoints 9 and 12 remain.
  int n = 0;
  for (auto& e : fs::directory_iterator(t.dir / "split"))
    n += e.path().filename().string().rfind("checkpoint-", 0) == 0;
  EXPECT_EQ(n, 2);
}

TEST(Trainer, BiasUpdateRule) {
  Tensor b = Tensor::zeros({4}, DType::F32);
  update_router_bias(b, {10, 2, 4, 4}, 0.5);  // mean 5: overloaded expert 0 goes down, the rest up
  EXPECT_EQ(b.data<float>()[0], -0.5f);
  EXPECT_EQ(b.data<float>()[1], 0.5f);
  EXPECT_EQ(b.data<float>()[2], 0.5f);
  update_router_bias(b, {5, 5, 5, 5}, 0.5);  // balanced: no change
  EXPECT_EQ(b.data<float>()[3], 0.5f);
  EXPECT_THROW(update_router_bias(b, {1, 2}, 0.5), Error);
}

TEST(Trainer, BiasUpdateMovesTowardsBalance) {
  Tmp t;
  std::string d = make_data(t, 60);
  TrainConfig c = tiny_cfg(d, t / "run", 5);
  c.bias_update_speed = 0.01;
  TrainSummary s = run_training(c, "", {}, {});
  auto f = io::SafetensorsFile::open(s.last_checkpoint + "/model.safetensors");
  Tensor b = f->get("model.layers.1.mlp.gate.e_score_correction_bias");
  double sum = 0, nz = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const float x = b.data<float>()[i];
    sum += x;
    nz += x != 0;
    // γ · (±1 or 0) per step: multiples of 0.01 within 6 steps.
    EXPECT_NEAR(std::round(double(x) / 0.01) * 0.01, double(x), 1e-6);
    EXPECT_LE(std::fabs(x), 0.05 + 1e-6);
  }
  EXPECT_GT(nz, 0) << "the bias never moved";
  std::ifstream m(t / "run/metrics.jsonl");
  std::string line;
  std::getline(m, line);
  auto j = nlohmann::json::parse(line);
  ASSERT_TRUE(j.contains("expert_load_max_over_mean"));
  EXPECT_GE(j["expert_load_max_over_mean"][0].get<double>(), 1.0);
}

TEST(Trainer, BadConfigIsRefused) {
  EXPECT_THROW(TrainConfig::from_json({{"stepz", 3}}, "t.json"), Error);
  EXPECT_THROW(TrainConfig::from_json({{"steps", "many"}}, "t.json"), Error);
  EXPECT_THROW(TrainConfig::from_json({{"moments", "f16"}}, "t.json"), Error);
  TrainConfig c;
  EXPECT_THROW(c.validate(), Error);  // no model, no data
  EXPECT_THROW(preset_model_config("huge", 100, 0, 1), Error);
  c.model = "demo";
  c.data = "d";
  c.validate();
  c.dtype = "f16";
  EXPECT_THROW(c.validate(), Error);
  c.dtype = "bf16";  // bf16 compute copies are a GPU feature; on the CPU: a clear refusal
  try {
    c.validate();
    ADD_FAILURE() << "dtype bf16 on the cpu was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
  }
  c.device = "cuda";
  c.validate();
}

// ComputeCopy: f32 is the master itself; bf16 needs the master on the GPU.
TEST(Trainer, ComputeCopyF32IsTheMasterAndBf16NeedsTheGpu) {
  ModelConfig mc = ModelConfig::from_json(preset_model_config("tiny", 64, 0, 1), "tiny");
  Model m = Model::from_weights(mc, init_weights(mc, DType::F32, 1, true));
  ComputeCopy f32(m, DType::F32);
  EXPECT_EQ(&f32.model(), &m);
  f32.refresh();
  EXPECT_THROW(ComputeCopy(m, DType::BF16), Error);
  EXPECT_THROW(ComputeCopy(m, DType::F16), Error);
}

}  // namespace
}  // namespace dseek::train
