// bpe_trainer.h — learns byte-level BPE merges from text (model.md §7.1: DeepSeek-V3's pre-tokenizer,
// byte alphabet), for the project's own small models. Words are counted once; each merge then updates
// the pair counts of only the words that contain the merged pair (no recount).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer_writer.h"

namespace dseek::tok {

struct TrainOptions {
  size_t vocab_size = 0;  // total ids: 256 bytes + merged tokens + special tokens
  std::vector<SpecialToken> specials = {};
  int64_t min_frequency = 2;  // a pair seen fewer times is never merged
  int threads = 0;            // pre-tokenization threads (0 = all)
};

struct TrainStats {
  size_t words = 0, unique_words = 0, merges = 0;
  double seconds = 0;
};

// Learns merges until the vocabulary (with the specials) has vocab_size ids or no pair is frequent
// enough. Special tokens in the text are recognised and not learned from.
BpeVocab train_bpe(const std::vector<std::string>& texts, const TrainOptions& opt,
                   TrainStats* stats = nullptr);

}  // namespace dseek::tok
