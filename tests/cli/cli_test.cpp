// cli_test.cpp — the dseek command end to end, in the exact forms other checks rely on: info, init,
// logits, generate; and bad flags, files and tokens give a clear message and a nonzero exit.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"

namespace dseek {
namespace {

namespace fs = std::filesystem;

struct CmdResult {
  int code;
  std::string out;  // stdout and stderr together
};

CmdResult run(const std::string& args) {
  std::string cmd = std::string(DSEEK_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

struct Tmp {
  fs::path dir = fs::temp_directory_path() / ("dseek-cli-" + std::to_string(::getpid()));
  Tmp() {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Tmp() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
};

std::string ids_csv(const nlohmann::json& a) {
  std::string s;
  for (auto& x : a) {
    if (!s.empty()) s += ',';
    s += std::to_string(x.get<int64_t>());
  }
  return s;
}

TEST(Cli, HelpForEverySubcommand) {
  EXPECT_EQ(run("--help").code, 0);
  for (const char* sub : {"info", "init", "logits", "generate"}) {
    CmdResult r = run(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  }
  EXPECT_NE(run("").code, 0);
  EXPECT_NE(run("frobnicate").code, 0);
}

TEST(Cli, Info) {
  CmdResult r = run("info " + test::data("tiny-v3"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("active per token"), std::string::npos) << r.out;
  CmdResult j = run("info --json " + test::data("tiny-v3"));
  ASSERT_EQ(j.code, 0) << j.out;
  auto o = nlohmann::json::parse(j.out);
  EXPECT_EQ(o["cache_values_per_token_per_layer"], 40);  // kv_lora_rank 32 + rope 8
  EXPECT_EQ(o["cache_bytes_per_token_bf16"], 40 * 3 * 2);
  EXPECT_EQ(o["moe_layers"], 2);
}

TEST(Cli, LogitsMatchReference) {
  Tmp t;
  CmdResult r = run("logits " + test::data("tiny-v3") + " --input-ids " +
                    test::data("tiny-v3/ref.safetensors") + " --out " + t / "out.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  auto got = io::SafetensorsFile::open(t / "out.safetensors");
  auto ref = io::SafetensorsFile::open(test::data("tiny-v3/ref.safetensors"));
  Tensor l = got->get("logits");
  EXPECT_EQ(l.dtype(), DType::F32);
  EXPECT_EQ(l.shape(), (Shape{2, 16, 512}));
  EXPECT_LE(test::diff(l, ref->get("logits")).rel, 1e-5);
}

TEST(Cli, GenerateGreedyJson) {
  std::ifstream f(test::data("tiny-v2/ref.json"));
  auto j = nlohmann::json::parse(f);
  CmdResult r = run("generate " + test::data("tiny-v2") + " --prompt-ids " + ids_csv(j["prompt_ids"]) +
                    " --max-new-tokens 16 --greedy --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto o = nlohmann::json::parse(r.out);
  EXPECT_EQ(o["ids"], j["greedy_ids"]);
}

TEST(Cli, SampledGenerationIsSeeded) {
  std::string base = "generate " + test::data("tiny-v3") +
                     " --prompt-ids 5,6,7 --max-new-tokens 12 --temperature 1.2 "
                     "--top-p 0.95 --top-k 50 --json --seed ";
  CmdResult a = run(base + "4"), b = run(base + "4"), c = run(base + "5");
  ASSERT_EQ(a.code, 0) << a.out;
  auto ia = nlohmann::json::parse(a.out)["ids"], ib = nlohmann::json::parse(b.out)["ids"],
       ic = nlohmann::json::parse(c.out)["ids"];
  EXPECT_EQ(ia, ib);
  EXPECT_NE(ia, ic);
  EXPECT_EQ(ia.size(), 12u);
}

TEST(Cli, InitWritesALoadableModel) {
  Tmp t;
  std::string out = t / "m";
  CmdResult r =
      run("init --config " + test::data("tiny-v3/config.json") + " --out " + out + " --dtype bf16 --seed 3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  auto st = io::SafetensorsFile::open(out + "/model.safetensors");
  EXPECT_EQ(st->find("model.layers.0.self_attn.q_a_proj.weight")->dtype, DType::BF16);
  EXPECT_EQ(st->find("model.layers.1.mlp.gate.e_score_correction_bias")->dtype, DType::F32);
  EXPECT_NE(st->find("model.layers.3.eh_proj.weight"), nullptr);  // MTP module at num_hidden_layers
  // Statistics of a big matrix match the configured initializer_range (0.02).
  Tensor w = st->get("model.layers.0.mlp.gate_proj.weight").to(DType::F64);
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    s += w.data<double>()[i];
    s2 += w.data<double>()[i] * w.data<double>()[i];
  }
  EXPECT_NEAR(std::sqrt(s2 / double(w.numel())), 0.02, 0.001);
  EXPECT_NEAR(s / double(w.numel()), 0.0, 0.001);
  CmdResult g = run("generate " + out + " --prompt-ids 1,2,3 --max-new-tokens 4 --greedy --json");
  ASSERT_EQ(g.code, 0) << g.out;
  CmdResult again = run("init --config " + test::data("tiny-v3/config.json") + " --out " + out);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("already holds a model"), std::string::npos) << again.out;
  // Same seed, same weights.
  CmdResult forced = run("init --config " + test::data("tiny-v3/config.json") + " --out " + out +
                         " --dtype bf16 --seed 3 --force");
  ASSERT_EQ(forced.code, 0) << forced.out;
  auto st2 = io::SafetensorsFile::open(out + "/model.safetensors");
  EXPECT_EQ(test::diff(st2->get("model.layers.0.mlp.gate_proj.weight"), w).max_abs, 0.0);
}

TEST(Cli, BadInputGivesClearErrors) {
  Tmp t;
  auto expect = [](const CmdResult& r, const std::string& what) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(what), std::string::npos) << "expected \"" << what << "\" in: " << r.out;
  };
  const std::string m = test::data("tiny-v3");
  expect(run("generate " + m + " --prompt-ids 1,x,3"), "\"x\" is not a token id");
  expect(run("generate " + m + " --prompt-ids 1,99999"), "outside the vocabulary");
  expect(run("generate " + m + " --prompt-ids 1 --top-p 2 --temperature 1"), "--top-p");
  expect(run("generate " + t / "missing" + " --prompt-ids 1"), "missing");
  expect(run("info " + t / "nothing"), "nothing");
  expect(run("logits " + m + " --input-ids " + m + "/model.safetensors --out " + t / "o.safetensors"),
         "no tensor named \"input_ids\"");
  expect(run("generate " + m + " --prompt-ids 1 --dtype f16"), "f16");
  {
    std::ofstream(t / "bad.json") << "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 10}";
    expect(run("init --config " + t / "bad.json" + " --out " + t / "x"), "missing required field");
    EXPECT_FALSE(fs::exists(t / "x"));
  }
  {
    std::ofstream(t / "trunc.safetensors") << "12345678";
    expect(run("logits " + m + " --input-ids " + t / "trunc.safetensors" + " --out " + t / "o.safetensors"),
           "trunc.safetensors");
  }
}

}  // namespace
}  // namespace dseek
