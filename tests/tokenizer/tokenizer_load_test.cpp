// tokenizer_load_test.cpp — tokenizer.json variants made by hand: both merge forms, Split behaviors
// (Hugging Face's documented examples), ByteLevel with its GPT-2 regex and prefix space, added-token
// options and ids; and malformed files that must fail with a message naming the problem.
#include <gtest/gtest.h>

#include <algorithm>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

using nlohmann::json;
using tok::Tokenizer;

// A small byte-level tokenizer: the 256 byte tokens, then "he", "ll", "hell", "hello", " w" merges.
json tiny(bool pair_merges = false) {
  const tok::ByteLevelMap& bl = tok::ByteLevelMap::get();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[bl.byte_to_utf8[b]] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}};
  json m = json::array();
  int id = 256;
  for (auto& [a, b] : merges) {
    vocab[a + b] = id++;
    if (pair_merges)
      m.push_back(json::array({a, b}));
    else
      m.push_back(a + " " + b);
  }
  json j;
  j["version"] = "1.0";
  j["added_tokens"] =
      json::array({json{{"id", 261}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                   json{{"id", 262}, {"content", "[X]"}, {"special", false}, {"normalized", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["decoder"] = json{{"type", "ByteLevel"}};
  j["model"] = json{{"type", "BPE"}, {"vocab", vocab}, {"merges", m}};
  return j;
}

Tokenizer load(const json& j) {
  return Tokenizer::from_json_text(j.dump(), "t/tokenizer.json");
}

std::string load_error(const json& j) {
  try {
    load(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

std::vector<std::string> pieces(const Tokenizer& t, const std::string& s) {
  tok::Arena a;
  std::vector<std::string> out;
  for (const tok::Piece& p : t.pre_tokenize(s, a)) out.emplace_back(p.p, p.n);
  return out;
}

TEST(TokenizerLoad, BothMergeFormsGiveTheSameModel) {
  for (bool pairs : {false, true}) {
    Tokenizer t = load(tiny(pairs));
    EXPECT_EQ(t.encode("hello world"), (std::vector<int32_t>{259, 260, 'o', 'r', 'l', 'd'})) << pairs;
    EXPECT_EQ(t.encode("hell<s>[X]"), (std::vector<int32_t>{258, 261, 262}));
    EXPECT_EQ(t.decode({259, 261, 262}), "hello<s>[X]");
    EXPECT_EQ(t.decode({259, 261, 262}, true), "hello[X]");
    EXPECT_EQ(t.num_ids(), 263);
  }
}

TEST(TokenizerLoad, ByteLevelPrefixSpaceAndGpt2Regex) {
  json j = tiny();
  j["pre_tokenizer"]["add_prefix_space"] = true;
  Tokenizer t = load(j);
  EXPECT_EQ(pieces(t, "hello world's  x"), (std::vector<std::string>{" hello", " world", "'s", " ", " x"}));
  EXPECT_EQ(t.encode("hello")[0], 32);  // the prefix space
}

TEST(TokenizerLoad, SplitBehaviorsAsDocumented) {
  // Hugging Face's SplitDelimiterBehavior examples for "the-final--countdown" split on "-".
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"Removed", {"the", "final", "countdown"}},
      {"Isolated", {"the", "-", "final", "-", "-", "countdown"}},
      {"MergedWithPrevious", {"the-", "final-", "-", "countdown"}},
      {"MergedWithNext", {"the", "-final", "-", "-countdown"}},
      {"Contiguous", {"the", "-", "final", "--", "countdown"}}};
  for (auto& [behavior, want] : cases) {
    for (bool literal : {false, true}) {
      json j = tiny();
      json pat = literal ? json{{"String", "-"}} : json{{"Regex", "-"}};
      j["pre_tokenizer"] =
          json{{"type", "Sequence"},
               {"pretokenizers",
                {json{{"type", "Split"}, {"pattern", pat}, {"behavior", behavior}, {"invert", false}},
                 json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
      Tokenizer t = load(j);
      EXPECT_EQ(pieces(t, "the-final--countdown"), want) << behavior;
    }
  }
  // invert: the matches become the gaps.
  json j = tiny();
  j["pre_tokenizer"] = json{
      {"type", "Sequence"},
      {"pretokenizers",
       {json{
            {"type", "Split"}, {"pattern", {{"Regex", "[a-z]+"}}}, {"behavior", "Removed"}, {"invert", true}},
        json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  EXPECT_EQ(pieces(load(j), "ab, cd!"), (std::vector<std::string>{"ab", "cd"}));
  // Digits.
  j["pre_tokenizer"]["pretokenizers"][0] = json{{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(pieces(load(j), "a12b"), (std::vector<std::string>{"a", "1", "2", "b"}));
  j["pre_tokenizer"]["pretokenizers"][0] = json{{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(pieces(load(j), "a12b"), (std::vector<std::string>{"a", "12", "b"}));
}

TEST(TokenizerLoad, AddedTokenOptions) {
  json j = tiny();
  j["added_tokens"] = json::array(
      {json{{"id", 261}, {"content", "my"}, {"special", false}, {"lstrip", true}, {"rstrip", true}},
       json{{"id", 262}, {"content", "ony"}, {"special", false}, {"single_word", true}},
       json{{"id", 263}, {"content", "<sep>"}, {"special", true}, {"normalized", false}}});
  Tokenizer t = load(j);
  // Hugging Face's own example: lstrip/rstrip swallow the spaces, single_word refuses "Anthony".
  tok::Arena a;
  std::vector<tok::Piece> p = t.pre_tokenize("<sep> my name is Anthony <sep>", a);
  std::vector<std::pair<std::string, int32_t>> got;
  for (auto& x : p) got.emplace_back(std::string(x.p, x.n), x.id);
  ASSERT_GE(got.size(), 3u);
  EXPECT_EQ(got[0], (std::pair<std::string, int32_t>{"<sep>", 263}));
  EXPECT_EQ(got[1], (std::pair<std::string, int32_t>{" my ", 261}));
  EXPECT_EQ(got.back(), (std::pair<std::string, int32_t>{"<sep>", 263}));
  for (auto& [s, id] : got) EXPECT_NE(id, 262) << "single_word token matched inside a word";
  EXPECT_EQ(t.encode("ony")[0], 262);
  const std::vector<int32_t> ids = t.encode("x ony y");
  EXPECT_NE(std::find(ids.begin(), ids.end(), 262), ids.end());
}

TEST(TokenizerLoad, AddedTokenIdsFollowHuggingFaceRules) {
  json j = tiny();
  j["added_tokens"] = json::array({json{{"id", 256}, {"content", "he"}, {"special", true}},  // in the vocab
                                   json{{"id", 261}, {"content", "<a>"}, {"special", true}},
                                   json{{"id", 262}, {"content", "<b>"}, {"special", true}}});
  EXPECT_NO_THROW(load(j));
  j["added_tokens"][2]["id"] = 300;
  EXPECT_NE(load_error(j).find("added token \"<b>\" has id 300 but its place gives it id 262"),
            std::string::npos)
      << load_error(j);
}

TEST(TokenizerLoad, MalformedFilesFailClearly) {
  auto expect = [](const json& j, const std::string& what) {
    const std::string e = load_error(j);
    EXPECT_NE(e.find(what), std::string::npos) << "expected \"" << what << "\" in: " << e;
    EXPECT_NE(e.find("t/tokenizer.json"), std::string::npos) << e;
  };
  json j = tiny();
  j.erase("model");
  expect(j, "missing \"model\"");
  j = tiny();
  j["model"]["merges"][1] = "ll";
  expect(j, "merges[1] = \"ll\" is not two tokens separated by a space");
  j = tiny();
  j["model"]["merges"][0] = "h zz";
  expect(j, "merges[0]: token \"zz\" is not in the vocab");
  j = tiny();
  j["model"]["merges"][0] = json::array({"h", "e", "x"});
  expect(j, "merges[0]");
  j = tiny();
  j["model"]["vocab"].erase("hell");
  expect(j, "the merged token \"hell\" is not in the vocab");
  j = tiny();
  j["model"].erase("merges");
  expect(j, "no \"merges\" array");
  j = tiny();
  j["model"]["type"] = "WordPiece";
  expect(j, "model type \"WordPiece\" is not supported");
  j = tiny();
  j["pre_tokenizer"] = json{{"type", "Whitespace"}};
  expect(j, "pre_tokenizer type \"Whitespace\" is not supported");
  j = tiny();
  j["pre_tokenizer"] =
      json{{"type", "Sequence"},
           {"pretokenizers", {json{{"type", "Split"}, {"pattern", {{"Regex", "\\p{Bogus}"}}}}}}};
  expect(j, "cannot compile regex");
  j = tiny();
  j["pre_tokenizer"] =
      json{{"type", "Sequence"},
           {"pretokenizers",
            {json{{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}},
             json{{"type", "ByteLevel"}}}}};
  expect(j, "unknown behavior \"Sideways\"");
  j = tiny();
  j["pre_tokenizer"] = nullptr;
  expect(j, "not a byte-level BPE tokenizer");
  j = tiny();
  j["normalizer"] = json{{"type", "NFKC"}};
  expect(j, "normalizer");
  j = tiny();
  j["decoder"] = json{{"type", "WordPiece"}};
  expect(j, "decoder");
  j = tiny();
  j["model"]["byte_fallback"] = true;
  expect(j, "byte_fallback");
  EXPECT_NE(std::string([] {
              try {
                Tokenizer::from_json_text("{\"model\": ", "t/tokenizer.json");
              } catch (const Error& e) {
                return std::string(e.what());
              }
              return std::string();
            }())
                .find("t/tokenizer.json: not valid JSON"),
            std::string::npos);
  EXPECT_THROW(Tokenizer::load("/nonexistent/dir"), Error);
}

}  // namespace
}  // namespace dseek
