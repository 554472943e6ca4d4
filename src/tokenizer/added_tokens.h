// added_tokens.h — added tokens (model.md §7.1): matched in the raw text before pre-tokenization,
// leftmost-longest, first those with normalized=false, then those with normalized=true in the gaps
// (Hugging Face's AddedVocabulary::extract_and_normalize; the normalizers dseek accepts are no-ops).
// Honours single_word, lstrip and rstrip; special tokens can be left as plain text on request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/pretokenizer.h"

namespace dseek::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, normalized = true, single_word = false, lstrip = false, rstrip = false;
};

// A byte trie over token contents with leftmost-longest scanning.
class TokenTrie {
 public:
  void add(const std::string& s, int32_t index);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest token starting at s[0..n): its index and length, or false.
  bool longest_at(const char* s, size_t n, int32_t& index, size_t& len) const;
  bool may_start(unsigned char c) const { return first_[c]; }
  int single_first_byte() const { return single_first_; }  // the only first byte, or -1

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int32_t index = -1;
  };
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
  int single_first_ = -1, n_first_ = 0;
};

class AddedVocab {
 public:
  void build(std::vector<AddedToken> tokens);
  const std::vector<AddedToken>& tokens() const { return tokens_; }

  // Splits one text piece into text pieces and added-token pieces (id >= 0), appending to `out`.
  // parse_special = false leaves special tokens as text (Hugging Face's encode_special_tokens).
  void split(const Piece& in, bool parse_special, std::vector<Piece>& out) const;

 private:
  std::vector<AddedToken> tokens_;
  TokenTrie raw_, normalized_;
  void split_with(const TokenTrie& trie, const Piece& in, bool parse_special, std::vector<Piece>& out) const;
};

}  // namespace dseek::tok
