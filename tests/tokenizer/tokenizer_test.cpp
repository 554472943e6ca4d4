// tokenizer_test.cpp — the DeepSeek-V3 tokenizer against Hugging Face tokenizers 0.23's own encodings
// (tests/data/tokenizer/encodings.json) and the spec's examples (model.md §7.1), plus the project's
// own cases: invalid UTF-8, empty text, 1 MB without spaces, every added token, parallel = serial,
// streaming decode = decode.
#include <gtest/gtest.h>

#include <chrono>

#include "tok_test_util.h"
#include "tokenizer/sample_text.h"
#include "tokenizer/utf8.h"

namespace dseek {
namespace {

using test::ids_of;
using tok::EncodeOptions;
using tok::Tokenizer;

std::vector<std::string> piece_texts(const Tokenizer& t, const std::string& text) {
  tok::Arena arena;
  std::vector<std::string> out;
  for (const tok::Piece& p : t.pre_tokenize(text, arena)) out.emplace_back(p.p, p.n);
  return out;
}

std::string concat_bytes(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += t.token_bytes(id);
  return s;
}

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
    EXPECT_EQ(t->encode_parallel(text, {}, 4), ids_of(c["ids"])) << "text: " << text;
  }
}

TEST(TokenizerV3, SpecExamples) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->encode("Hello, world!"), (std::vector<int32_t>{19923, 14, 2058, 3}));
  EXPECT_EQ(t->encode("1234567 apples"), (std::vector<int32_t>{6895, 18009, 25, 37679}));
  EXPECT_EQ(t->encode("你好，世界。"), (std::vector<int32_t>{30594, 303, 3427, 320}));
  EXPECT_EQ(t->encode("  leading spaces\n\nnew"), (std::vector<int32_t>{223, 6646, 13564, 271, 2839}));
  EXPECT_EQ(piece_texts(*t, "1234567 apples"), (std::vector<std::string>{"123", "456", "7", " apples"}));
  EXPECT_EQ(piece_texts(*t, "  leading spaces\n\nnew"),
            (std::vector<std::string>{" ", " leading", " spaces", "\n\n", "new"}));
  // Config (model.md §7.2).
  EXPECT_EQ(t->bos_id(), 0);
  EXPECT_EQ(t->eos_id(), 1);
  EXPECT_TRUE(t->config().add_bos_token);
  EXPECT_EQ(t->encode("Hi", EncodeOptions{.add_bos = true}), (std::vector<int32_t>{0, 23166}));
  EXPECT_EQ(t->num_ids(), 128815);
  EXPECT_EQ(t->added_tokens().size(), 818u);
  EXPECT_EQ(t->model().vocab_size(), 128000u);
  EXPECT_EQ(t->model().merges().size(), 127741u);
}

TEST(TokenizerV3, EveryAddedToken) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  size_t specials = 0;
  for (const tok::AddedToken& a : t->added_tokens()) {
    EXPECT_EQ(t->encode(a.content), std::vector<int32_t>{a.id}) << a.content;
    EXPECT_EQ(t->encode("x" + a.content + " y").size(), 3u) << a.content;
    EXPECT_EQ(t->decode({a.id}), a.content);
    EXPECT_EQ(t->token_to_id(a.content), a.id);
    EXPECT_EQ(t->is_special(a.id), a.special);
    const std::vector<int32_t> plain = t->encode(a.content, EncodeOptions{.parse_special = false});
    if (a.special) {
      ++specials;
      EXPECT_GT(plain.size(), 1u) << a.content << " must be plain text when specials are not parsed";
      EXPECT_EQ(t->decode(plain), a.content);
      EXPECT_EQ(t->decode({a.id}, /*skip_special=*/true), "");
    } else {
      EXPECT_EQ(plain, std::vector<int32_t>{a.id}) << a.content << " is not special: always recognised";
      EXPECT_EQ(t->decode({a.id}, /*skip_special=*/true), a.content);
    }
  }
  EXPECT_EQ(specials, 804u);
  // Adjacent tokens, longest match first, ASCII-pipe <|EOT|>.
  EXPECT_EQ(t->encode("<｜User｜><｜Assistant｜><|EOT|>"), (std::vector<int32_t>{128803, 128804, 128805}));
  EXPECT_EQ(t->encode("<｜User｜"), t->encode("<｜User｜", EncodeOptions{.parse_special = false}));
}

TEST(TokenizerV3, EmptyAndTiny) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->encode("").empty());
  EXPECT_TRUE(t->encode_parallel("", {}, 4).empty());
  EXPECT_EQ(t->decode({}), "");
  EXPECT_EQ(t->decode({-5, 999999}), "");  // unknown ids are skipped, as Hugging Face does
  for (int c = 0; c < 256; ++c) {
    const std::string s(1, char(c));
    const std::vector<int32_t> ids = t->encode(s);
    ASSERT_EQ(ids.size(), 1u) << c;
    EXPECT_EQ(t->token_bytes(ids[0]), s) << c;
  }
}

TEST(TokenizerV3, InvalidUtf8IsEncodedBytewise) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  const std::vector<std::string> bad = {"\xff",
                                        "abc\xe4\xbd",
                                        "\xc0\xaf overlong",
                                        "a\xed\xa0\x80 surrogate",
                                        "\xf4\x90\x80\x80 too big",
                                        "\x80\x80\x80",
                                        "ok \xe4\xbd\xa0 then \xe4 cut<｜User｜>\xfe\xff<|EOT|>",
                                        std::string("nul\0byte", 8)};
  for (const std::string& s : bad) {
    const std::vector<int32_t> ids = t->encode(s);
    EXPECT_EQ(concat_bytes(*t, ids), s) << "bytes must round-trip";
    EXPECT_EQ(t->decode(ids), tok::utf8_lossy(s));
    EXPECT_EQ(t->encode_parallel(s, {}, 4), ids);
  }
  // The definition (tokenizer.h): an invalid run is its own pre-token; valid text around it is
  // pre-tokenized alone.
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const std::vector<int32_t> ff = t->encode("\xff");
  EXPECT_EQ(t->encode("hello\xffworld"), cat(cat(t->encode("hello"), ff), t->encode("world")));
  EXPECT_EQ(t->encode("  \xff  "), cat(cat(t->encode("  "), ff), t->encode("  ")));
  // Random bytes never crash and always round-trip.
  uint64_t x = 12345;
  for (int k = 0; k < 50; ++k) {
    std::string s;
    for (int i = 0; i < 300; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      s += char(x >> 56);
    }
    EXPECT_EQ(concat_bytes(*t, t->encode(s)), s);
  }
}

TEST(TokenizerV3, OneMegabyteWithoutSpaces) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  std::string letters;
  uint64_t x = 7;
  while (letters.size() < (1u << 20)) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    letters += char('a' + (x >> 33) % 26);
  }
  const std::vector<std::string> texts = {letters,
                                          std::string(1 << 20, 'a'),
                                          std::string(1 << 20, ' '),
                                          std::string(1 << 20, '!'),
                                          std::string(1 << 20, '\n'),
                                          std::string(1 << 20, '7')};
  for (const std::string& s : texts) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = t->encode(s);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(sec, 20.0) << "1 MB of '" << s[0] << "' took " << sec << " s";
    EXPECT_EQ(t->decode(ids), s);
    EXPECT_LT(ids.size(), s.size());
    EXPECT_EQ(t->encode_parallel(s, {}, 4), ids) << "1 MB of '" << s[0] << "'";
  }
  // The heap merge (long words) and the scan merge (short words) agree.
  for (size_t len : {2, 5, 17, 64, 65, 300, 2000}) {
    std::vector<int32_t> a, b;
    t->model().merge_word_heap(letters.data(), len, a);
    t->model().merge_word_scan(letters.data(), len, b);
    EXPECT_EQ(a, b) << len;
  }
}

TEST(TokenizerV3, ParallelEqualsSerial) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  std::string mixed;
  for (const std::string& d : tok::sample_documents(3 << 20, 5)) mixed += d;
  // Pieces far longer than one parallel chunk (32 KB), so chunk boundaries fall inside regex matches.
  std::string prose;
  for (const std::string& d : tok::sample_documents(400 << 10, 9)) {
    for (char c : d)
      if (!(c >= '0' && c <= '9') && static_cast<unsigned char>(c) < 0x80) prose += c;
  }
  std::string runs;
  for (int i = 0; i < 40; ++i) {
    runs += std::string(5000 + 37 * i, i % 3 ? ' ' : '\t') + "word" + std::string(3000 + i, '\n') + "x" +
            std::string(7000, '.') + "y\r\n" + std::string(4000, ' ');
  }
  for (const std::string* s : {&mixed, &prose, &runs}) {
    const std::vector<int32_t> serial = t->encode(*s);
    for (int threads : {2, 3, 8}) EXPECT_EQ(t->encode_parallel(*s, {}, threads), serial) << threads;
    tok::Arena a1, a2;
    std::vector<tok::Piece> p1 = t->pre_tokenize(*s, a1, {}, 1), p4 = t->pre_tokenize(*s, a2, {}, 4);
    ASSERT_EQ(p1.size(), p4.size());
    size_t diffs = 0;
    for (size_t i = 0; i < p1.size(); ++i) diffs += p1[i].p != p4[i].p || p1[i].n != p4[i].n;
    EXPECT_EQ(diffs, 0u);
    EXPECT_EQ(t->decode(serial), *s);
  }
  const std::vector<std::string> docs = tok::sample_documents(1 << 20, 3);
  const auto batch = t->encode_batch(docs, {}, 4);
  ASSERT_EQ(batch.size(), docs.size());
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(batch[i], t->encode(docs[i]));
}

TEST(TokenizerV3, StreamingDecodeNeverSplitsACharacter) {
  const Tokenizer* t = test::v3_tokenizer();
  ASSERT_TRUE(t);
  std::vector<std::vector<int32_t>> seqs;
  const nlohmann::json fx = test::encodings_fixture();
  for (const auto& c : fx["cases"]) seqs.push_back(ids_of(c["ids"]));
  seqs.push_back(t->encode(tok::sample_documents(20000, 11)[0]));
  seqs.push_back(
      t->encode("\xe4\xbd"
                "A\xf0\x9f\x98"
                "b\xe4"));  // incomplete sequences in between
  seqs.push_back({t->encode("\xe4")[0], t->encode("\xbd")[0], t->encode("\xa0")[0]});  // 你 byte by byte
  for (const auto& ids : seqs) {
    tok::StreamDecoder sd(*t);
    std::string all;
    for (int32_t id : ids) {
      const std::string piece = sd.put(id);
      EXPECT_TRUE(tok::utf8_is_valid(piece));
      all += piece;
    }
    all += sd.finish();
    EXPECT_EQ(all, t->decode(ids));
  }
  tok::StreamDecoder sd(*t);
  EXPECT_EQ(sd.put(t->encode("\xe4")[0]), "");
  EXPECT_EQ(sd.put(t->encode("\xbd")[0]), "");
  EXPECT_EQ(sd.put(t->encode("\xa0")[0]), "你");
  EXPECT_EQ(sd.put(t->encode("\xe4")[0]), "");
  EXPECT_EQ(sd.finish(), "\xef\xbf\xbd");
}

TEST(Utf8, LossyMatchesRustFromUtf8Lossy) {
  EXPECT_EQ(tok::utf8_lossy("ab"), "ab");
  EXPECT_EQ(tok::utf8_lossy("\xf0\x9f\x98"
                            "A"),
            "\xef\xbf\xbd"
            "A");  // one U+FFFD per maximal subpart
  EXPECT_EQ(tok::utf8_lossy("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate: 3
  EXPECT_EQ(tok::utf8_lossy("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(tok::utf8_lossy("\xe4\xbd\xa0\xff"), "你\xef\xbf\xbd");
  EXPECT_EQ(tok::utf8_incomplete_tail("a\xe4\xbd", 3), 2u);
  EXPECT_EQ(tok::utf8_incomplete_tail("a\xed\xa0", 3), 0u);  // can never complete
  EXPECT_EQ(tok::utf8_incomplete_tail("\xf0\x9f\x98", 3), 3u);
  EXPECT_EQ(tok::utf8_incomplete_tail("\xf0\x9f\x98\x80", 4), 0u);
  const tok::ByteLevelMap& m = tok::ByteLevelMap::get();
  EXPECT_EQ(m.byte_to_utf8[' '], "Ġ");
  EXPECT_EQ(m.byte_to_utf8['\n'], "Ċ");
  EXPECT_EQ(m.byte_to_utf8['a'], "a");
  std::string b;
  EXPECT_TRUE(m.to_bytes("Ġworld", b));
  EXPECT_EQ(b, " world");
  EXPECT_FALSE(m.to_bytes("<｜User｜>", b));
}

TEST(Regex, OnigurumaRewrite) {
  EXPECT_EQ(tok::onig_to_pcre2("\\s+(?!\\S)"), "[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])");
  EXPECT_EQ(tok::onig_to_pcre2("[\\s\\p{L}]"), "[\\t-\\r\\x{85}\\p{Z}\\p{L}]");
  EXPECT_EQ(tok::onig_to_pcre2("\\h\\u00e9[]a]"), "[0-9a-fA-F]\\x{00e9}[]a]");
  tok::Regex ws("\\s+", false, "test");
  tok::Match m;
  const std::string nel =
      "a\xc2\x85\xe3\x80\x80"
      "b";  // U+0085 and U+3000 are Oniguruma whitespace
  ASSERT_TRUE(ws.find(nel.data(), nel.size(), 0, m));
  EXPECT_EQ(m.start, 1u);
  EXPECT_EQ(m.end, 6u);
  tok::Regex eol("a$", false, "test");  // Oniguruma: $ is end of line
  const std::string two = "a\nb";
  ASSERT_TRUE(eol.find(two.data(), two.size(), 0, m));
  EXPECT_EQ(m.start, 0u);
}

}  // namespace
}  // namespace dseek
