// tokenizer_cli_test.cpp — dseek tokenize / detokenize / tokenizer bytes|train and generate --prompt /
// --chat end to end: outputs against the fixture ids, round trips through the written tokenizers, and
// clear errors for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/atomic_file.h"
#include "test_util.h"

namespace dseek {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct CmdResult {
  int code;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

CmdResult run(const std::string& args) {
  static int n = 0;
  const std::string errf = (fs::temp_directory_path() /
                            ("dseek-tokcli-err-" + std::to_string(::getpid()) + "-" + std::to_string(n++)))
                               .string();
  std::string cmd = std::string(DSEEK_BIN) + " " + args + " 2>" + errf;
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t k;
  while ((k = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), k);
  int st = pclose(p);
  std::string err = fs::exists(errf) ? io::read_text_file(errf) : "";
  fs::remove(errf);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out, err};
}

struct Tmp {
  fs::path dir = fs::temp_directory_path() / ("dseek-tokcli-" + std::to_string(::getpid()));
  Tmp() {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Tmp() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
};

const std::string kV3 = DSEEK_TOKENIZER_DIR;

std::string csv(const json& a) {
  std::string s;
  for (auto& x : a) {
    if (!s.empty()) s += ',';
    s += std::to_string(x.get<int64_t>());
  }
  return s;
}

TEST(TokenizerCli, TokenizeAndDetokenizeMatchTheFixture) {
  ASSERT_TRUE(fs::exists(kV3 + "/tokenizer.json")) << "run scripts/fetch-tokenizers";
  std::ifstream f(test::data("tokenizer/encodings.json"));
  const json fx = json::parse(f);
  // Every fourth case (the library test covers them all; each run here loads the 7.8 MB file).
  for (size_t i = 0; i < fx["cases"].size(); i += 4) {
    const auto& c = fx["cases"][i];
    const std::string text = c["text"];
    if (text.empty()) continue;
    CmdResult r = run("tokenize " + kV3 + " --text " + quote(text));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["ids"], c["ids"]) << text;
    CmdResult d = run("detokenize " + kV3 + " --ids " + csv(c["ids"]));
    ASSERT_EQ(d.code, 0) << d.err;
    EXPECT_EQ(d.out, c["decoded"].get<std::string>());
  }
  // --special: special tokens in the text are recognised only on request.
  EXPECT_EQ(json::parse(run("tokenize " + kV3 + " --special --text '<｜begin▁of▁sentence｜>hi'").out)["ids"],
            json::parse("[0, 6366]"));
  EXPECT_GT(json::parse(run("tokenize " + kV3 + " --text '<｜begin▁of▁sentence｜>hi'").out)["ids"].size(),
            2u);
  EXPECT_EQ(json::parse(run("tokenize " + kV3 + " --add-bos --text Hi").out)["ids"],
            json::parse("[0, 23166]"));
  CmdResult j = run("detokenize " + kV3 + " --json --skip-special --ids 0,19923,1");
  EXPECT_EQ(json::parse(j.out)["text"], "Hello");
}

TEST(TokenizerCli, ChatWithAndWithoutGenerationPrompt) {
  Tmp t;
  std::ofstream(t / "chat.json")
      << R"([{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi"},
      {"role":"assistant","content":"Hello!"},{"role":"user","content":"2+2?"}])";
  CmdResult r = run("tokenize " + kV3 + " --chat " + t / "chat.json" + " --add-generation-prompt");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(
      json::parse(r.out)["ids"],
      json::parse(
          "[0, 3476, 477, 11502, 16, 128803, 23166, 128804, 19923, 3, 1, 128803, 20, 13, 20, 33, 128804]"));
  CmdResult n = run("tokenize " + kV3 + " --chat " + t / "chat.json");
  EXPECT_EQ(json::parse(n.out)["ids"].size(), 16u);
  CmdResult r1 =
      run("tokenize " + kV3 + " --chat " + t / "chat.json" + " --add-generation-prompt --template r1");
  auto ids = json::parse(r1.out)["ids"];
  CmdResult txt = run("detokenize " + kV3 + " --ids " + csv(ids));
  EXPECT_EQ(txt.out.substr(txt.out.size() - std::string("<｜Assistant｜><think>\n").size()),
            "<｜Assistant｜><think>\n");
}

TEST(TokenizerCli, BytesAndTrainWriteTokenizersThatRoundTrip) {
  Tmp t;
  CmdResult b = run("tokenizer bytes --out " + t / "bytes");
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(json::parse(run("tokenize " + t / "bytes" + " --text hé").out)["ids"],
            json::parse("[104, 195, 169]"));
  CmdResult again = run("tokenizer bytes --out " + t / "bytes");
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.err.find("already holds a tokenizer.json"), std::string::npos) << again.err;
  EXPECT_EQ(run("tokenizer bytes --force --special '<a>' '<b>' --out " + t / "bytes").code, 0);
  EXPECT_EQ(json::parse(run("tokenize " + t / "bytes" + " --special --text '<b>x'").out)["ids"],
            json::parse("[257, 120]"));

  std::string corpus;
  for (int i = 0; i < 3000; ++i)
    corpus += "the quick brown fox " + std::to_string(i) + " jumps over the lazy dog; 速い茶色の狐\n";
  std::ofstream(t / "corpus.txt") << corpus;
  CmdResult tr =
      run("tokenizer train --input " + t / "corpus.txt" + " --vocab-size 400 --out " + t / "trained");
  ASSERT_EQ(tr.code, 0) << tr.err;
  EXPECT_NE(tr.out.find("400 ids"), std::string::npos) << tr.out;
  const std::string text = "the lazy fox jumps, 狐!";
  CmdResult enc = run("tokenize " + t / "trained" + " --text " + quote(text));
  ASSERT_EQ(enc.code, 0) << enc.err;
  auto ids = json::parse(enc.out)["ids"];
  EXPECT_LT(ids.size(), text.size() / 2);
  EXPECT_EQ(run("detokenize " + t / "trained" + " --ids " + csv(ids)).out, text);
}

TEST(TokenizerCli, GenerateFromTextAndChat) {
  Tmp t;
  const std::string m = t / "model";
  fs::create_directories(m);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy(test::data("tiny-v3/") + f, m + "/" + f);
  CmdResult none = run("generate " + m + " --prompt hi --max-new-tokens 2 --greedy");
  EXPECT_NE(none.code, 0);
  EXPECT_NE(none.err.find("has no tokenizer.json"), std::string::npos) << none.err;
  ASSERT_EQ(run("tokenizer bytes --out " + m).code, 0);  // 272 ids < the model's 512

  // --prompt is the tokenizer's ids (BOS first, as add_bos_token says) fed to the same generator.
  CmdResult g = run("generate " + m + " --prompt 'Hello there' --max-new-tokens 6 --greedy --json");
  ASSERT_EQ(g.code, 0) << g.err;
  const json gj = json::parse(g.out);
  auto ids = json::parse(run("tokenize " + m + " --add-bos --text 'Hello there'").out)["ids"];
  EXPECT_EQ(ids[0], 256);
  const json pj = json::parse(
      run("generate " + m + " --prompt-ids " + csv(ids) + " --max-new-tokens 6 --greedy --json").out);
  EXPECT_EQ(gj["ids"], pj["ids"]);
  EXPECT_FALSE(pj.contains("text")) << "--prompt-ids output is unchanged";
  json known = json::array();  // the model's vocabulary (512) is larger than the tokenizer's (272)
  for (auto& id : gj["ids"])
    if (id.get<int64_t>() < 272) known.push_back(id);
  EXPECT_EQ(gj["text"], run("detokenize " + m + " --skip-special --ids " + csv(known)).out);
  // Streamed text (no --json) is the same text.
  CmdResult s = run("generate " + m + " --prompt 'Hello there' --max-new-tokens 6 --greedy");
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out, gj["text"].get<std::string>() + "\n");
  EXPECT_NE(s.err.find("tokens"), std::string::npos);

  std::ofstream(t / "chat.json") << R"([{"role":"user","content":"Hi"}])";
  CmdResult c = run("generate " + m + " --chat " + t / "chat.json" + " --max-new-tokens 3 --greedy --json");
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(json::parse(c.out)["prompt_tokens"], 1 + 1 + 2 + 1);  // BOS, <｜User｜>, "Hi", <｜Assistant｜>
  CmdResult both = run("generate " + m + " --prompt hi --prompt-ids 1,2 --max-new-tokens 2");
  EXPECT_NE(both.code, 0);
  EXPECT_NE(run("generate " + m + " --max-new-tokens 2").code, 0);
}

TEST(TokenizerCli, Help) {
  for (const char* sub : {"tokenize", "detokenize", "tokenizer", "tokenizer bytes", "tokenizer train"}) {
    CmdResult r = run(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  }
  EXPECT_NE(run("tokenizer").code, 0);
  EXPECT_NE(run("generate --help").out.find("--chat"), std::string::npos);
}

TEST(TokenizerCli, BadInputGivesClearErrors) {
  Tmp t;
  auto expect = [](const CmdResult& r, const std::string& what) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.err.find(what), std::string::npos) << "expected \"" << what << "\" in: " << r.err;
  };
  expect(run("tokenize " + t / "nothing" + " --text hi"), "nothing: no such directory");
  expect(run("detokenize " + kV3 + " --ids 1,x"), "\"x\" is not a token id");
  expect(run("detokenize " + kV3 + " --ids 1,999999"), "token 999999 is not in the tokenizer");
  std::ofstream(t / "bad.json") << "[{\"role\": \"robot\", \"content\": \"x\"}]";
  expect(run("tokenize " + kV3 + " --chat " + t / "bad.json"), "unknown role \"robot\"");
  std::ofstream(t / "broken.json") << "[{";
  expect(run("tokenize " + kV3 + " --chat " + t / "broken.json"), "broken.json: not valid JSON");
  fs::create_directories(t / "tk");
  std::ofstream(t / "tk/tokenizer.json") << R"({"version": "1.0", "added_tokens": []})";
  expect(run("tokenize " + t / "tk" + " --text hi"), "tokenizer.json: missing \"model\"");
  expect(run("tokenizer train --input " + t / "bad.json" + " --vocab-size 10 --out " + t / "o"),
         "--vocab-size 10 is too small");
  expect(run("tokenize " + kV3 + " --chat " + t / "bad.json" + " --template v9"), "\"v9\"");
}

}  // namespace
}  // namespace dseek
