// sample_text.cpp — the generator behind sample_documents(); word lists are the project's own.
#include "tokenizer/sample_text.h"

// GCC 12 reports a false -Wrestrict inside std::string's operator+ (GCC bug 105329).
#pragma GCC diagnostic ignored "-Wrestrict"

#include <array>

#include "tokenizer/utf8.h"

namespace dseek::tok {

namespace {

struct Rng {  // splitmix64
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return size_t(next() % n); }
  template <typename T, size_t N>
  const T& pick(const std::array<T, N>& a) {
    return a[below(N)];
  }
};

const std::array<const char*, 64> kWords = {
    "the",     "model",   "token",    "of",       "and",     "a",       "to",       "in",
    "is",      "that",    "for",      "it",       "with",    "as",      "was",      "on",
    "layer",   "expert",  "routing",  "cache",    "latent",  "weight",  "gradient", "sequence",
    "between", "because", "although", "whenever", "quickly", "quietly", "river",    "mountain",
    "library", "window",  "garden",   "morning",  "evening", "journey", "question", "answer",
    "people",  "history", "science",  "language", "number",  "system",  "program",  "result",
    "we",      "they",    "you",      "could",    "would",   "should",  "never",    "always",
    "bright",  "small",   "ancient",  "careful",  "strange", "simple",  "hidden",   "golden"};
const std::array<const char*, 16> kCapWords = {"The",  "However", "In",    "When",   "We",       "This",
                                               "Each", "After",   "Model", "Tokens", "Although", "It",
                                               "Our",  "Today",   "Some",  "Every"};
const std::array<const char*, 12> kIdents = {"x",     "value", "count",   "buffer",    "token_id", "numHeads",
                                             "scale", "idx",   "out_ptr", "maxSeqLen", "kv_cache", "row"};
const std::array<const char*, 10> kKeywords = {"if",    "for",  "return", "while", "def",
                                               "const", "auto", "int",    "else",  "struct"};
const std::array<const char*, 16> kOps = {" = ",  " + ",  " * ",  " - ", " / ", " == ", " != ", " <= ",
                                          " >= ", " && ", " || ", "->",  "::",  ".",    ", ",   " += "};
const std::array<const char*, 12> kForeign = {"Привет", "мир",  "данные", "модель", "αβγ",    "λόγος",
                                              "naïve",  "café", "résumé", "Straße", "façade", "über"};
const std::array<const char*, 8> kEmoji = {"😀", "🚀", "🎉", "👍", "🔥", "✨", "🤖", "📚"};
const std::array<const char*, 10> kPunct = {"!!!", "?!", "...", "—", "--", "***", "(", ")", "\"", "'"};

void cjk(Rng& r, std::string& out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const size_t k = r.below(10);
    uint32_t cp;
    if (k < 6)
      cp = 0x4E00 + uint32_t(r.below(0x9FA5 - 0x4E00));  // CJK ideographs
    else if (k < 8)
      cp = 0x3041 + uint32_t(r.below(0x3096 - 0x3041));  // hiragana
    else if (k < 9)
      cp = 0x30A1 + uint32_t(r.below(0x30FA - 0x30A1));  // katakana
    else
      cp = r.below(2) ? 0x3002 : 0xFF0C;  // 。，
    utf8_append(out, cp);
  }
}

void prose(Rng& r, std::string& out) {
  out += r.pick(kCapWords);
  const size_t n = 6 + r.below(14);
  for (size_t i = 0; i < n; ++i) {
    out += ' ';
    const size_t k = r.below(40);
    if (k == 0)
      out += std::to_string(1900 + r.below(200));
    else if (k == 1)
      out += std::to_string(r.below(1000)) + "." + std::to_string(r.below(100000));
    else if (k == 2)
      out += r.pick(kForeign);
    else if (k == 3)
      out += r.pick(kEmoji);
    else if (k == 4)
      out += std::string(r.pick(kWords)) + "'s";
    else if (k == 5)
      out += std::string("(") + r.pick(kWords) + ")";
    else
      out += r.pick(kWords);
    if (r.below(12) == 0) out += ',';
  }
  out += r.below(8) == 0 ? r.pick(kPunct) : ".";
}

void code(Rng& r, std::string& out) {
  const size_t lines = 3 + r.below(8);
  int indent = 0;
  for (size_t l = 0; l < lines; ++l) {
    out.append(size_t(indent) * 4, ' ');
    out += r.pick(kKeywords);
    out += ' ';
    out += r.pick(kIdents);
    const size_t terms = 1 + r.below(4);
    for (size_t t = 0; t < terms; ++t) {
      out += r.pick(kOps);
      out += r.below(3) == 0 ? std::to_string(r.below(100000)) : r.pick(kIdents);
    }
    if (r.below(4) == 0) {
      out += ":  # ";
      out += r.pick(kWords);
      indent = std::min(indent + 1, 4);
    } else {
      out += r.below(2) ? ";" : "";
      if (indent > 0 && r.below(3) == 0) --indent;
    }
    out += r.below(10) == 0 ? "\r\n" : "\n";
  }
  if (r.below(5) == 0) out += "\t" + std::to_string(r.below(1u << 30)) + "\t0x1f2e\n";
}

}  // namespace

std::vector<std::string> sample_documents(size_t total_bytes, uint64_t seed, size_t doc_bytes) {
  Rng r{seed * 0x2545F4914F6CDD1Dull + 1};
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < total_bytes) {
    std::string d;
    const size_t want = doc_bytes / 2 + r.below(doc_bytes);
    while (d.size() < want) {
      const size_t k = r.below(20);
      if (k < 10) {
        prose(r, d);
        d += r.below(4) == 0 ? "\n\n" : " ";
      } else if (k < 14) {
        d += "\n";
        code(r, d);
      } else if (k < 17) {
        cjk(r, d, 8 + r.below(60));
        d += r.below(3) == 0 ? "\n" : "";
      } else if (k == 17) {
        d += "https://example.org/" + std::string(r.pick(kWords)) + "?id=" + std::to_string(r.below(99999)) +
             "&lang=en ";
      } else if (k == 18) {
        d += std::to_string(r.next() % 100000000000ull) + " " + r.pick(kPunct) + r.pick(kPunct) + " ";
      } else {
        d += "    ";
        d += r.pick(kForeign);
        d += " — ";
        d += r.pick(kEmoji);
        d += r.pick(kEmoji);
        d += "\n";
      }
    }
    total += d.size();
    docs.push_back(std::move(d));
  }
  return docs;
}

}  // namespace dseek::tok
