// kv_cache.h — the compressed latent cache (spec/model.md §2.5): per layer and token it holds only
// the RMSNorm-ed kv latent c_kv (C values) and the rotated shared rope key k_pe (R values), as one
// row [c_kv | k_pe] of width C + R. One sequence per cache; capacity fixed at creation.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"

namespace dseek {

class LatentCache {
 public:
  LatentCache() = default;
  // `layers` decoder layers, rows of width C + R, room for `capacity` tokens, activations of `dtype`.
  LatentCache(const ModelConfig& cfg, int64_t layers, int64_t capacity, DType dtype = DType::F32,
              Device device = Device::CPU);

  int64_t length() const { return length_; }  // tokens cached (positions 0 .. length-1)
  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  // Rows [capacity, C + R] of one layer.
  const Tensor& rows(int64_t layer) const { return rows_.at(size_t(layer)); }
  // Called after every layer has written positions [length, length + n).
  void advance(int64_t n);
  // Drop cached tokens from position `n` on (speculative decoding rollback, prompt reuse).
  void truncate(int64_t n);
  size_t bytes() const;

 private:
  std::vector<Tensor> rows_;
  int64_t length_ = 0, capacity_ = 0, width_ = 0;
};

}  // namespace dseek
