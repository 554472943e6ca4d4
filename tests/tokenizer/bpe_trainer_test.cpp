// bpe_trainer_test.cpp — BPE training: the incremental trainer against a naive recount-everything
// trainer (same tie-break), the files it writes (Hugging Face layout, loadable back), the byte-level
// tokenizer, and that trained tokenizers round-trip and compress.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>

#include "io/atomic_file.h"
#include "tok_test_util.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/sample_text.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Recount all pairs after every merge; highest count wins, ties to the smallest (left id, right id).
std::vector<std::pair<int32_t, int32_t>> naive_merges(const std::vector<std::string>& texts,
                                                      size_t n_merges) {
  const tok::Tokenizer pre = tok::Tokenizer::from_json_text(
      tok::tokenizer_json_text(tok::byte_vocab(), tok::default_special_tokens()), "x");
  std::map<std::string, int64_t> counts;
  for (const std::string& t : texts) {
    tok::Arena a;
    for (const tok::Piece& p : pre.pre_tokenize(t, a))
      if (p.id < 0) ++counts[std::string(p.p, p.n)];
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (auto& [w, c] : counts) {
    std::vector<int32_t> s;
    for (unsigned char ch : w) s.push_back(ch);
    words.emplace_back(s, c);
  }
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(std::string(1, char(b)));
  std::map<std::string, int32_t> ids;
  for (int b = 0; b < 256; ++b) ids[tokens[size_t(b)]] = b;
  std::vector<std::pair<int32_t, int32_t>> merges;
  while (merges.size() < n_merges) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pc[{s[i], s[i + 1]}] += c;
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t bc = 0;
    for (auto& [p, c] : pc)
      if (c > bc) {  // std::map iterates in (left, right) order, so the first max is the smallest pair
        bc = c;
        best = p;
      }
    if (bc < 2) break;
    const std::string joined = tokens[size_t(best.first)] + tokens[size_t(best.second)];
    auto [it, fresh] = ids.try_emplace(joined, int32_t(tokens.size()));
    if (fresh) tokens.push_back(joined);
    merges.push_back(best);
    for (auto& [s, c] : words) {
      std::vector<int32_t> o;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) {
          o.push_back(it->second);
          ++i;
        } else {
          o.push_back(s[i]);
        }
      }
      s = o;
    }
  }
  return merges;
}

TEST(BpeTrainer, IncrementalCountsMatchANaiveTrainer) {
  const std::vector<std::string> texts = {
      tok::sample_documents(60000, 21)[0] + tok::sample_documents(60000, 22)[1],
      "aaaa aaaa abab abab ababab aaa  \n\n 1234 1234 你好你好"};
  tok::TrainOptions o{.vocab_size = 256 + 300 + 16, .specials = tok::default_special_tokens()};
  tok::BpeVocab v = tok::train_bpe(texts, o);
  const auto naive = naive_merges(texts, 300);
  ASSERT_EQ(v.merges.size(), naive.size());
  EXPECT_EQ(v.merges, naive);
  EXPECT_EQ(tok::train_bpe(texts, o).merges, v.merges) << "training is deterministic";
}

TEST(BpeTrainer, WritesLoadableHuggingFaceFilesThatRoundTrip) {
  const std::vector<std::string> docs = tok::sample_documents(1 << 20, 4);
  std::vector<std::string> texts = {std::string()};
  for (auto& d : docs) texts[0] += d;
  tok::TrainOptions o{.vocab_size = 2000, .specials = tok::default_special_tokens()};
  tok::TrainStats st;
  const auto t0 = std::chrono::steady_clock::now();
  tok::BpeVocab v = tok::train_bpe(texts, o, &st);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(sec, 30.0);
  EXPECT_EQ(v.tokens.size() + o.specials.size(), 2000u);
  const fs::path dir = fs::temp_directory_path() / ("dseek-train-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  tok::write_tokenizer_dir(dir.string(), v, o.specials);
  const tok::Tokenizer t = tok::Tokenizer::load(dir.string());
  EXPECT_EQ(t.num_ids(), 2000);
  EXPECT_EQ(t.bos_id(), 1984);
  EXPECT_EQ(t.eos_id(), 1985);
  EXPECT_EQ(tok::detect_template_kind(t.config().chat_template, "trained"), tok::ChatTemplateKind::kV3);
  // Hugging Face's layout: string merges "a b" of vocab tokens, vocab ids 0..n-1, added tokens after.
  const json j = json::parse(io::read_text_file((dir / "tokenizer.json").string()));
  EXPECT_EQ(j["model"]["merges"][0].get<std::string>().find(' ') != std::string::npos, true);
  EXPECT_EQ(j["model"]["vocab"].size(), v.tokens.size());
  EXPECT_EQ(j["added_tokens"][0]["id"], v.tokens.size());
  const tok::Tokenizer* v3 = test::v3_tokenizer();
  ASSERT_TRUE(v3);
  const json v3j = json::parse(io::read_text_file(test::v3_tokenizer_dir() + "/tokenizer.json"));
  for (const char* k : {"normalizer", "pre_tokenizer", "post_processor", "decoder"})
    EXPECT_EQ(j[k], v3j[k]) << k;
  const json cfg = json::parse(io::read_text_file((dir / "tokenizer_config.json").string()));
  const json v3cfg = json::parse(io::read_text_file(test::v3_tokenizer_dir() + "/tokenizer_config.json"));
  EXPECT_EQ(cfg["chat_template"], v3cfg["chat_template"]);
  // Encoding compresses the text and decodes back exactly; fresh text too.
  const std::vector<int32_t> ids = t.encode(texts[0]);
  EXPECT_LT(ids.size() * 2, texts[0].size());
  EXPECT_EQ(t.decode(ids), texts[0]);
  const std::string other = tok::sample_documents(50000, 99)[0] + "\xff\xfe bad bytes";
  std::string back;
  for (int32_t id : t.encode(other)) back += t.token_bytes(id);
  EXPECT_EQ(back, other);
  // The first merge is the most frequent pair, counted the slow way.
  EXPECT_EQ(v.merges[0], naive_merges(texts, 1).at(0));
  fs::remove_all(dir);
}

TEST(BpeTrainer, ByteTokenizerAndSpecials) {
  const fs::path dir = fs::temp_directory_path() / ("dseek-bytes-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  tok::write_tokenizer_dir(dir.string(), tok::byte_vocab(),
                           tok::special_tokens_from_names({"<bos>", "<｜User｜>"}));
  const tok::Tokenizer t = tok::Tokenizer::load(dir.string());
  EXPECT_EQ(t.num_ids(), 258);
  EXPECT_EQ(t.encode("hé"), (std::vector<int32_t>{'h', 0xC3, 0xA9}));
  EXPECT_EQ(t.encode("<bos>x<｜User｜>"), (std::vector<int32_t>{256, 'x', 257}));
  EXPECT_TRUE(t.is_special(256));
  EXPECT_FALSE(t.is_special(257));
  EXPECT_EQ(t.bos_id(), -1);  // no DeepSeek BOS among the specials
  EXPECT_TRUE(t.config().chat_template.empty());
  EXPECT_THROW(tok::special_tokens_from_names({"<a>", "<a>"}), Error);
  EXPECT_THROW(tok::train_bpe({"abc"}, tok::TrainOptions{.vocab_size = 100}), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dseek
