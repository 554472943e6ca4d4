// kv_cache.cpp — the latent cache's storage (spec/model.md §2.5).
#include "model/kv_cache.h"

namespace dseek {

LatentCache::LatentCache(const ModelConfig& cfg, int64_t layers, int64_t capacity, DType dtype, Device device)
    : length_(0), capacity_(capacity), width_(cfg.cache_width()) {
  DSEEK_CHECK(capacity > 0, "latent cache capacity must be positive");
  for (int64_t l = 0; l < layers; ++l) rows_.push_back(Tensor::zeros({capacity, width_}, dtype, device));
}

void LatentCache::advance(int64_t n) {
  DSEEK_CHECK(length_ + n <= capacity_, "latent cache full: ", length_, " + ", n, " tokens > capacity ",
              capacity_);
  length_ += n;
}

void LatentCache::truncate(int64_t n) {
  DSEEK_CHECK(n >= 0 && n <= length_, "latent cache truncate to ", n, " of ", length_);
  length_ = n;
}

size_t LatentCache::bytes() const {
  size_t b = 0;
  for (const auto& r : rows_) b += r.nbytes();
  return b;
}

}  // namespace dseek
