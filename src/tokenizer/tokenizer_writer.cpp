// tokenizer_writer.cpp — tokenizer.json / tokenizer_config.json for dseek's own tokenizers
// (model.md §7.1–7.2).
#include "tokenizer/tokenizer_writer.h"

#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "tokenizer/utf8.h"

namespace dseek::tok {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {
const char* const kBosText = "<｜begin▁of▁sentence｜>";
const char* const kEosText = "<｜end▁of▁sentence｜>";
}  // namespace

std::vector<SpecialToken> default_special_tokens() {
  return special_tokens_from_names({kBosText, kEosText, "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>",
                                    "<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
                                    "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
                                    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
                                    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>"});
}

std::vector<SpecialToken> special_tokens_from_names(const std::vector<std::string>& names) {
  // In V3 (and R1, for <think>/</think>) the turn and tool markers are added but not special.
  static const std::set<std::string> kNotSpecial = {"<｜User｜>",
                                                    "<｜Assistant｜>",
                                                    "<think>",
                                                    "</think>",
                                                    "<｜tool▁calls▁begin｜>",
                                                    "<｜tool▁calls▁end｜>",
                                                    "<｜tool▁call▁begin｜>",
                                                    "<｜tool▁call▁end｜>",
                                                    "<｜tool▁outputs▁begin｜>",
                                                    "<｜tool▁outputs▁end｜>",
                                                    "<｜tool▁output▁begin｜>",
                                                    "<｜tool▁output▁end｜>",
                                                    "<｜tool▁sep｜>",
                                                    "<｜fim▁hole｜>",
                                                    "<｜fim▁begin｜>",
                                                    "<｜fim▁end｜>"};
  std::vector<SpecialToken> out;
  std::set<std::string> seen;
  for (const std::string& n : names) {
    DSEEK_CHECK(!n.empty(), "special tokens: an empty token");
    DSEEK_CHECK(utf8_is_valid(n), "special tokens: \"", n, "\" is not valid UTF-8");
    DSEEK_CHECK(seen.insert(n).second, "special tokens: \"", n, "\" is given twice");
    out.push_back({n, !kNotSpecial.count(n)});
  }
  return out;
}

json v3_pre_tokenizer_json() {
  auto split = [](const std::string& re) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  return json{{"type", "Sequence"},
              {"pretokenizers",
               {split("\\p{N}{1,3}"), split("[一-龥぀-ゟ゠-ヿ]+"),
                split("[!\"#$%&'()*+,\\-./"
                      ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
                      "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
                json{{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", false}}}}};
}

BpeVocab byte_vocab() {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(std::string(1, char(b)));
  return v;
}

std::string tokenizer_json_text(const BpeVocab& v, const std::vector<SpecialToken>& specials) {
  const ByteLevelMap& bl = ByteLevelMap::get();
  ordered_json vocab = ordered_json::object();
  std::vector<std::string> names;
  names.reserve(v.tokens.size());
  std::set<std::string> seen;
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    names.push_back(bl.from_bytes(v.tokens[id]));
    DSEEK_CHECK(seen.insert(names.back()).second, "tokenizer vocab: token ", id, " repeats an earlier token");
    vocab[names.back()] = id;
  }
  ordered_json merges = ordered_json::array();
  for (auto [a, b] : v.merges) merges.push_back(names[size_t(a)] + " " + names[size_t(b)]);
  ordered_json added = ordered_json::array();
  for (size_t i = 0; i < specials.size(); ++i) {
    DSEEK_CHECK(!seen.count(specials[i].content), "special token \"", specials[i].content,
                "\" is also a vocab token");
    added.push_back(ordered_json{{"id", v.tokens.size() + i},
                                 {"content", specials[i].content},
                                 {"single_word", false},
                                 {"lstrip", false},
                                 {"rstrip", false},
                                 {"normalized", !specials[i].special},
                                 {"special", specials[i].special}});
  }
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = ordered_json{{"type", "Sequence"}, {"normalizers", ordered_json::array()}};
  j["pre_tokenizer"] = ordered_json::parse(v3_pre_tokenizer_json().dump());
  j["post_processor"] = ordered_json{
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = ordered_json{
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["vocab"] = vocab;
  model["merges"] = merges;
  j["model"] = model;
  return j.dump(1) + "\n";
}

std::string tokenizer_config_text(const std::vector<SpecialToken>& specials) {
  auto has = [&](const char* s) {
    for (auto& t : specials)
      if (t.content == s) return true;
    return false;
  };
  ordered_json c;
  c["add_bos_token"] = has(kBosText);
  c["add_eos_token"] = false;
  c["bos_token"] = has(kBosText) ? ordered_json(kBosText) : ordered_json(nullptr);
  c["eos_token"] = has(kEosText) ? ordered_json(kEosText) : ordered_json(nullptr);
  c["pad_token"] = has(kEosText) ? ordered_json(kEosText) : ordered_json(nullptr);
  c["unk_token"] = nullptr;
  c["clean_up_tokenization_spaces"] = false;
  c["legacy"] = true;
  c["model_max_length"] = 131072;
  c["tokenizer_class"] = "LlamaTokenizerFast";
  if (has(kBosText) && has(kEosText) && has("<｜User｜>") && has("<｜Assistant｜>"))
    c["chat_template"] = kV3ChatTemplate;
  return c.dump(2) + "\n";
}

void write_tokenizer_dir(const std::string& dir, const BpeVocab& v,
                         const std::vector<SpecialToken>& specials) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create directory: ", ec.message());
  const std::string tj = tokenizer_json_text(v, specials), tc = tokenizer_config_text(specials);
  io::atomic_write_text(dir + "/tokenizer.json", tj);
  io::atomic_write_text(dir + "/tokenizer_config.json", tc);
}

}  // namespace dseek::tok
