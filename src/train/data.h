// data.h — training data: token shards with a header, their preparation from text or JSONL documents,
// and a deterministic loader that packs documents (EOS between them) into fixed windows and whose
// position is part of the checkpoint.
//
// Shard file (little-endian): magic "DSKTOK01" (8 bytes), u32 version (1), u32 bytes per token (2 or 4),
// u64 token count, u32 eos id, u32 reserved (0); then the tokens.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dseek::train {

constexpr char kShardMagic[8] = {'D', 'S', 'K', 'T', 'O', 'K', '0', '1'};

// Writes tokens atomically; u16 when every id fits.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t eos);

// A read-only shard (mmap), validated on open; errors name the file.
class Shard {
 public:
  static std::shared_ptr<Shard> open(const std::string& path);
  int64_t size() const { return count_; }
  uint32_t eos() const { return eos_; }
  uint32_t at(int64_t i) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<Storage> map_;
  const uint8_t* data_ = nullptr;
  int64_t count_ = 0;
  uint32_t width_ = 2, eos_ = 0;
};

struct PrepareOptions {
  double val_fraction = 0.01;
  uint64_t seed = 0;
  int64_t shard_tokens = int64_t(1) << 27;
  std::string format = "auto";  // auto (by extension), text (documents split at blank lines), jsonl
};

struct PrepareStats {
  int64_t documents = 0, train_tokens = 0, val_tokens = 0, val_documents = 0;
};

using Encoder = std::function<std::vector<int64_t>(const std::string&)>;

// Tokenizes every document of `inputs` with `encode`, appends `eos` after each, splits documents into
// train and validation by a seeded hash, and writes `out_dir`/{train-NNNNN.tok, val.tok, meta.json}.
PrepareStats prepare_data(const std::vector<std::string>& inputs, const std::string& out_dir,
                          const Encoder& encode, int64_t eos, int64_t vocab_size,
                          const std::string& tokenizer_dir, const PrepareOptions& opt);

// The documents of one input file (text split at blank lines, or JSONL "text" fields).
std::vector<std::string> read_documents(const std::string& path, const std::string& format);

// The windows of one split, in a seeded order per epoch: window w covers tokens [w·T, w·T + T + 1) of the
// split's shards concatenated; ids = the first T, targets = the last T.
class Loader {
 public:
  struct Position {
    int64_t epoch = 0, cursor = 0;
  };
  Loader(const std::string& data_dir, const std::string& split, int64_t seq_len, int64_t batch,
         uint64_t seed);
  // ids, targets: [batch, seq_len] I64 (allocated here).
  void next(Tensor& ids, Tensor& targets);
  Position position() const { return pos_; }
  void seek(Position p);
  int64_t windows() const { return windows_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t eos() const { return eos_; }

 private:
  uint32_t token(int64_t i) const;
  void shuffle();
  std::vector<std::shared_ptr<Shard>> shards_;
  std::vector<int64_t> starts_;  // first global token index of each shard
  int64_t total_ = 0, seq_len_, batch_, windows_ = 0, vocab_size_ = 0, eos_ = 0;
  uint64_t seed_;
  Position pos_;
  std::vector<int64_t> order_;
};

}  // namespace dseek::train
