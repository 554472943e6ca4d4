// paged_cache.h — the latent cache in a paged layout (spec/model.md §2.5 for what a row holds,
// spec/serving.md for vLLM's paged cache): per layer one pool of fixed blocks of 64 token rows,
// [num_blocks, 64, C + R]; each sequence owns a block table (its blocks in position order) and a length.
// Blocks are taken from a free list as sequences grow and returned when they end, so sequences of any
// lengths share one pool. The CPU pool is the reference for the GPU one.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "ops/decode.h"

namespace dseek {

class PagedLatentCache {
 public:
  static constexpr int64_t kBlock = ops::kCacheBlock;

  PagedLatentCache() = default;
  // `layers` pools of `num_blocks` blocks of 64 rows of width C + R, activations of `dtype`.
  PagedLatentCache(const ModelConfig& cfg, int64_t layers, int64_t num_blocks, DType dtype = DType::F32,
                   Device device = Device::CPU);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  int64_t width() const { return width_; }
  // Rows [num_blocks, 64, C + R] of one layer.
  const Tensor& pool(int64_t layer) const { return pools_.at(size_t(layer)); }

  // A new empty sequence; returns its id (ids of released sequences are reused).
  int64_t add_sequence();
  // The sequence ends: its blocks go back to the free list.
  void release(int64_t seq);
  // Blocks enough for `len` tokens (taken from the free list); throws, naming the counts, when it is empty.
  void reserve(int64_t seq, int64_t len);
  int64_t length(int64_t seq) const { return at(seq).length; }
  // Positions [0, len) now hold rows (len ≤ the reserved room).
  void set_length(int64_t seq, int64_t len);
  const std::vector<int32_t>& blocks(int64_t seq) const { return at(seq).blocks; }
  // Where position `pos` of `seq` lives: block · 64 + pos % 64 (vLLM's slot mapping).
  int32_t slot(int64_t seq, int64_t pos) const;
  size_t bytes() const;

 private:
  struct Seq {
    bool live = false;
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };
  const Seq& at(int64_t seq) const;
  Seq& at(int64_t seq) { return const_cast<Seq&>(static_cast<const PagedLatentCache*>(this)->at(seq)); }

  std::vector<Tensor> pools_;
  std::vector<int32_t> free_;  // a stack; the lowest block on top at the start
  std::vector<Seq> seqs_;
  int64_t num_blocks_ = 0, width_ = 0;
};

// What a forward over a paged cache passes down to the attention (built by Model::forward_paged).
struct PagedStep {
  PagedLatentCache* cache = nullptr;
  Tensor slots;         // [N] I32 on the model's device: the cache slot of each new token's row
  bool decode = false;  // one new token per sequence: absorbed attention over the cache blocks
  Tensor block_table;   // [B, MB] I32 (decode): each sequence's blocks, padded with 0
  Tensor seq_lens;      // [B] I32 (decode): cached rows per sequence, the new token included
  int64_t max_len = 0;  // the largest of seq_lens
};

}  // namespace dseek
