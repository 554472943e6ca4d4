// paged_cache.cpp — block pools, free list and block tables of the paged latent cache (model/paged_cache.h).
#include "model/paged_cache.h"

namespace dseek {

PagedLatentCache::PagedLatentCache(const ModelConfig& cfg, int64_t layers, int64_t num_blocks, DType dtype,
                                   Device device)
    : num_blocks_(num_blocks), width_(cfg.cache_width()) {
  DSEEK_CHECK(num_blocks > 0, "paged latent cache: the number of blocks must be positive, got ", num_blocks);
  DSEEK_CHECK(num_blocks < (int64_t(1) << 31) / kBlock, "paged latent cache: ", num_blocks,
              " blocks exceed the 32-bit slot numbers");
  for (int64_t l = 0; l < layers; ++l)
    pools_.push_back(Tensor::zeros({num_blocks, kBlock, width_}, dtype, device));  // [NB, 64, C + R]
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

const PagedLatentCache::Seq& PagedLatentCache::at(int64_t seq) const {
  DSEEK_CHECK(seq >= 0 && seq < int64_t(seqs_.size()) && seqs_[size_t(seq)].live,
              "paged latent cache: ", "no live sequence ", seq);
  return seqs_[size_t(seq)];
}

int64_t PagedLatentCache::add_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i].live) {
      seqs_[i] = Seq{.live = true, .length = 0, .blocks = {}};
      return int64_t(i);
    }
  seqs_.push_back(Seq{.live = true, .length = 0, .blocks = {}});
  return int64_t(seqs_.size()) - 1;
}

void PagedLatentCache::release(int64_t seq) {
  Seq& s = at(seq);
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) free_.push_back(*it);
  s = Seq{};
}

void PagedLatentCache::reserve(int64_t seq, int64_t len) {
  Seq& s = at(seq);
  const int64_t need = (len + kBlock - 1) / kBlock - int64_t(s.blocks.size());
  DSEEK_CHECK(need <= int64_t(free_.size()), "paged latent cache full: sequence ", seq, " needs ", need,
              " more blocks of ", kBlock, " tokens for ", len, " tokens, ", free_.size(), " of ", num_blocks_,
              " are free");
  for (int64_t i = 0; i < need; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
}

void PagedLatentCache::set_length(int64_t seq, int64_t len) {
  Seq& s = at(seq);
  DSEEK_CHECK(len >= 0 && len <= int64_t(s.blocks.size()) * kBlock, "paged latent cache: sequence ", seq,
              " length ", len, " exceeds its ", s.blocks.size() * kBlock, " reserved rows");
  s.length = len;
}

int32_t PagedLatentCache::slot(int64_t seq, int64_t pos) const {
  const Seq& s = at(seq);
  DSEEK_CHECK(pos >= 0 && pos < int64_t(s.blocks.size()) * kBlock, "paged latent cache: position ", pos,
              " of sequence ", seq, " is not reserved");
  return int32_t(s.blocks[size_t(pos / kBlock)] * kBlock + pos % kBlock);
}

size_t PagedLatentCache::bytes() const {
  size_t b = 0;
  for (const auto& p : pools_) b += p.nbytes();
  return b;
}

}  // namespace dseek
