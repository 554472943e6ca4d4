// pretokenizer.h — Hugging Face pre-tokenizers for byte-level BPE (model.md §7.1): a Sequence of
// Split (regex or literal; Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous; invert),
// Digits and ByteLevel stages, each applied to every piece the previous stage produced. Pieces are
// spans of the input; a stage that adds a prefix space writes the new text into an Arena.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/regex.h"

namespace dseek::tok {

// A span of the input: text to pre-tokenize (id == kTextPiece), bytes that are not valid UTF-8 and go
// to the BPE model as one pre-token (kRawPiece), or an added token already recognised (id >= 0).
constexpr int32_t kTextPiece = -1, kRawPiece = -2;
struct Piece {
  const char* p;
  size_t n;
  int32_t id;
};

// Owns text that stages create (prefix spaces); pieces point into it.
struct Arena {
  std::deque<std::string> strings;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStage {
  std::unique_ptr<Regex> re;  // null for a ByteLevel stage without its regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool prefix_space = false;  // ByteLevel add_prefix_space
};

class PreTokenizer {
 public:
  // Parses tokenizer.json's "pre_tokenizer" (null allowed). Unknown types are an error naming `file`.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& file);

  bool byte_level() const { return byte_level_; }
  size_t num_stages() const { return stages_.size(); }

  // Runs every stage over the text pieces of `pieces` in place (other pieces pass through). `threads` > 1
  // splits the work over OpenMP threads — large pieces are cut into chunks whose regex matches are stitched
  // back exactly as one sequential scan would find them.
  void run(std::vector<Piece>& pieces, Arena& arena, int threads) const;

  // One stage over one text piece, appending the resulting pieces (exposed for tests).
  void split_one(const PreTokenizerStage& st, const Piece& in, std::vector<Piece>& out, Arena& arena) const;
  const PreTokenizerStage& stage(size_t i) const { return *stages_[i]; }

 private:
  std::vector<std::unique_ptr<PreTokenizerStage>> stages_;
  bool byte_level_ = false;

  void add_stage(const nlohmann::json& j, const std::string& file);
  void run_stage_parallel(const PreTokenizerStage& st, const std::vector<Piece>& in, std::vector<Piece>& out,
                          Arena& arena, int threads) const;
};

// All matches of `re` in subject[0, n), as Hugging Face's find_iter yields them (an empty match right
// after the previous match is skipped by one character).
void find_all(const Regex& re, const char* s, size_t n, std::vector<Match>& out);

// Applies invert + behavior to the matches of one piece and appends the non-empty pieces.
void apply_behavior(const Piece& in, const std::vector<Match>& matches, SplitBehavior b, bool invert,
                    std::vector<Piece>& out);

// GPT-2's regex, which a ByteLevel pre-tokenizer applies when use_regex is true.
extern const char* const kGpt2Pattern;

}  // namespace dseek::tok
