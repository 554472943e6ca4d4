// mla.h — Multi-head Latent Attention, forward (spec/model.md §2.2–2.6). Two paths over the same
// weights: the naive one materializes per-head keys/values from the latent (prefill, training); the
// absorbed one folds W_UK into the query and W_UV after the attention and attends over the latent
// cache rows directly (decoding). Tests hold them as twin oracles.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace dseek {

struct Rope {
  Tensor inv_freq;  // [R/2] f32 (YaRN-adjusted)
  double attention_factor = 1.0;
  static Rope from(const ModelConfig& cfg);
};

// A run of consecutive tokens of one sequence inside the flattened token matrix.
struct SeqChunk {
  int64_t row0 = 0;              // first row in the [N, D] activations
  int64_t len = 0;               // tokens in this chunk
  int64_t pos0 = 0;              // absolute position of the first token
  LatentCache* cache = nullptr;  // when set: rows written at [pos0, pos0 + len); pos0 == cache->length()
};

enum class AttnPath { Auto, Naive, Absorbed };

// out[N, D] = MLA(x) for normed input x[N, D] at `positions` (I64 [N]). Chunks with a cache write
// their latents and attend over everything cached; `path` Auto takes the naive form when a chunk
// starts at position 0 and the absorbed form otherwise.
void mla_fwd(Tensor out, const Tensor& x, const MlaWeights& w, const ModelConfig& cfg, const Rope& rope,
             const Tensor& positions, const std::vector<SeqChunk>& chunks, int64_t layer,
             AttnPath path = AttnPath::Auto);

}  // namespace dseek
