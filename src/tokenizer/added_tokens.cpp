// added_tokens.cpp — leftmost-longest added-token matching with Hugging Face's options (model.md §7.1).
#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "tokenizer/regex.h"

namespace dseek::tok {

void TokenTrie::add(const std::string& s, int32_t index) {
  if (s.empty()) return;
  int32_t node = 0;
  for (unsigned char c : s) {
    int32_t child = -1;
    for (auto& [k, v] : nodes_[size_t(node)].kids)
      if (k == c) child = v;
    if (child < 0) {
      child = int32_t(nodes_.size());
      nodes_[size_t(node)].kids.emplace_back(c, child);
      nodes_.emplace_back();
    }
    node = child;
  }
  nodes_[size_t(node)].index = index;
  const unsigned char f = static_cast<unsigned char>(s[0]);
  if (!first_[f]) {
    first_[f] = true;
    ++n_first_;
    single_first_ = n_first_ == 1 ? f : -1;
  }
}

bool TokenTrie::longest_at(const char* s, size_t n, int32_t& index, size_t& len) const {
  int32_t node = 0;
  index = -1;
  for (size_t i = 0; i < n; ++i) {
    const auto& kids = nodes_[size_t(node)].kids;
    int32_t child = -1;
    const unsigned char c = static_cast<unsigned char>(s[i]);
    for (auto& [k, v] : kids)
      if (k == c) {
        child = v;
        break;
      }
    if (child < 0) break;
    node = child;
    if (nodes_[size_t(node)].index >= 0) {
      index = nodes_[size_t(node)].index;
      len = i + 1;
    }
  }
  return index >= 0;
}

void AddedVocab::build(std::vector<AddedToken> tokens) {
  tokens_ = std::move(tokens);
  raw_ = TokenTrie();
  normalized_ = TokenTrie();
  for (size_t i = 0; i < tokens_.size(); ++i)
    (tokens_[i].normalized ? normalized_ : raw_).add(tokens_[i].content, int32_t(i));
}

namespace {

// Hugging Face uses Rust regex's Unicode \w and \s for single_word / lstrip / rstrip.
const Regex& word_start_re() {
  static const Regex r("\\A[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", false, "single_word");
  return r;
}
const Regex& word_end_re() {
  static const Regex r("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]\\z", false, "single_word");
  return r;
}
const Regex& space_run_end_re() {
  static const Regex r("\\p{White_Space}*\\z", false, "lstrip");
  return r;
}
const Regex& space_run_start_re() {
  static const Regex r("\\A\\p{White_Space}*", false, "rstrip");
  return r;
}

}  // namespace

void AddedVocab::split_with(const TokenTrie& trie, const Piece& in, bool parse_special,
                            std::vector<Piece>& out) const {
  if (trie.empty() || in.n == 0) {
    if (in.n) out.push_back(in);
    return;
  }
  const char* s = in.p;
  const size_t n = in.n;
  size_t start_offset = 0;  // end of the last emitted added token
  size_t i = 0;
  const int only = trie.single_first_byte();
  while (i < n) {
    if (only >= 0) {
      const void* f = std::memchr(s + i, only, n - i);
      if (!f) break;
      i = size_t(static_cast<const char*>(f) - s);
    } else if (!trie.may_start(static_cast<unsigned char>(s[i]))) {
      ++i;
      continue;
    }
    int32_t idx;
    size_t len;
    if (!trie.longest_at(s + i, n - i, idx, len)) {
      ++i;
      continue;
    }
    const AddedToken& t = tokens_[size_t(idx)];
    size_t start = i, stop = i + len;
    i = stop;  // the scan resumes after the match, as Aho-Corasick's find_iter does
    if (t.special && !parse_special) continue;
    Match m;
    if (t.single_word) {
      const bool start_ok = start == 0 || !word_end_re().find(s, start, 0, m);
      const bool stop_ok = stop == n || !word_start_re().find(s + stop, n - stop, 0, m);
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip && space_run_end_re().find(s, start, 0, m)) start = std::max(m.start, start_offset);
    if (t.rstrip && space_run_start_re().find(s + stop, n - stop, 0, m)) stop += m.end;
    if (start_offset < start) out.push_back(Piece{s + start_offset, start - start_offset, -1});
    out.push_back(Piece{s + start, stop - start, t.id});
    start_offset = stop;
    i = std::max(i, stop);
  }
  if (start_offset < n) out.push_back(Piece{s + start_offset, n - start_offset, -1});
}

void AddedVocab::split(const Piece& in, bool parse_special, std::vector<Piece>& out) const {
  if (normalized_.empty()) {
    split_with(raw_, in, parse_special, out);
    return;
  }
  thread_local std::vector<Piece> first;
  first.clear();
  split_with(raw_, in, parse_special, first);
  for (const Piece& pc : first) {
    if (pc.id >= 0)
      out.push_back(pc);
    else
      split_with(normalized_, pc, parse_special, out);
  }
}

}  // namespace dseek::tok
