// regex.cpp — PCRE2 wrapper for the pre-tokenizer regexes (model.md §7.1): Oniguruma → PCRE2 rewrite,
// JIT compile, per-thread match data and JIT stack.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <cstdint>

#include "core/error.h"

namespace dseek::tok {

namespace {

// Oniguruma's \s in Unicode mode: U+0009..U+000D, U+0085 and the Z categories (= White_Space).
constexpr const char* kSpaceSet = "\\t-\\r\\x{85}\\p{Z}";
constexpr const char* kWordSet = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexSet = "0-9a-fA-F";

struct ThreadState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    if (!md || !mc || !stack) fail("PCRE2: out of memory creating match data");
    pcre2_jit_stack_assign(mc, nullptr, stack);
    pcre2_set_match_limit(mc, UINT32_MAX);
    pcre2_set_depth_limit(mc, UINT32_MAX);
  }
  ~ThreadState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};

ThreadState& thread_state() {
  thread_local ThreadState st;
  return st;
}

}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  int in_class = 0;  // nesting depth of [...] (Oniguruma allows nested classes)
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[++i];
      auto set = [&](const char* s, bool negate) {
        if (in_class) {
          if (negate) {  // a negated set inside a class has no plain spelling; keep PCRE2's escape
            out += '\\';
            out += e;
          } else {
            out += s;
          }
        } else {
          out += negate ? "[^" : "[";
          out += s;
          out += ']';
        }
      };
      switch (e) {
        case 's':
          set(kSpaceSet, false);
          break;
        case 'S':
          set(kSpaceSet, true);
          break;
        case 'w':
          set(kWordSet, false);
          break;
        case 'W':
          set(kWordSet, true);
          break;
        case 'h':
          set(kHexSet, false);
          break;
        case 'H':
          set(kHexSet, true);
          break;
        case 'u':  // Oniguruma's \uHHHH
          if (i + 4 < p.size() && std::all_of(p.begin() + long(i) + 1, p.begin() + long(i) + 5,
                                              [](char h) { return std::isxdigit((unsigned char)h); })) {
            out += "\\x{" + p.substr(i + 1, 4) + "}";
            i += 4;
          } else {
            out += "\\u";
          }
          break;
        default:
          out += '\\';
          out += e;
      }
      continue;
    }
    if (c == '[') {
      ++in_class;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both dialects.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) --in_class;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, bool literal, const std::string& what) : pattern_(pattern) {
  std::string pat = literal ? pattern : onig_to_pcre2(pattern);
  const uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), opts, &err, &off, cc);
  pcre2_compile_context_free(cc);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(what, ": cannot compile regex \"", pattern, "\" (at offset ", off,
         "): ", reinterpret_cast<char*>(msg));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  uint32_t minlen = 0;
  pcre2_pattern_info(code, PCRE2_INFO_MINLENGTH, &minlen);
  chunkable_ = minlen > 0 && (literal || pattern.find("\\G") == std::string::npos);
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

bool Regex::find(const char* subject, size_t n, size_t from, Match& m) const {
  ThreadState& st = thread_state();
  auto code = static_cast<const pcre2_code*>(code_);
  auto s = reinterpret_cast<PCRE2_SPTR>(subject);
  int rc = jit_ ? pcre2_jit_match(code, s, n, from, PCRE2_NO_UTF_CHECK, st.md, st.mc)
                : pcre2_match(code, s, n, from, PCRE2_NO_UTF_CHECK, st.md, st.mc);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    fail("regex \"", pattern_, "\": match failed: ", reinterpret_cast<char*>(msg));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  m.start = ov[0];
  m.end = ov[1];
  return true;
}

}  // namespace dseek::tok
