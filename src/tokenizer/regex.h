// regex.h — the pre-tokenizer's regular expressions on PCRE2 (UTF + UCP, JIT-compiled), with the
// pattern rewritten so that PCRE2 matches what Hugging Face's Oniguruma matches (model.md §7.1):
// `\s` is Oniguruma's Unicode White_Space set (PCRE2's lacks U+0085), `\w` includes marks, `\h` is a
// hex digit, `\uHHHH` is a code point, and `^`/`$` are line anchors (Oniguruma's default syntax).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace dseek::tok {

struct Match {
  size_t start, end;  // byte offsets into the subject
};

class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern (literal = true: the pattern is a plain string). `what`
  // names the pattern in error messages.
  Regex(const std::string& pattern, bool literal, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The leftmost match in subject[0, n) that starts at or after `from`; false when none. The subject
  // must be valid UTF-8 and `from` a character boundary (the caller checks; PCRE2 does not).
  bool find(const char* subject, size_t n, size_t from, Match& m) const;

  // True when no match can be empty (then matches found from different start positions agree; the
  // parallel splitter needs that) and the pattern does not use \G.
  bool chunkable() const { return chunkable_; }
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false, chunkable_ = false;
};

// The Oniguruma → PCRE2 pattern rewrite described above (exposed for tests).
std::string onig_to_pcre2(const std::string& pattern);

}  // namespace dseek::tok
