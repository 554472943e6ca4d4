// mla.h — Multi-head Latent Attention, forward and backward (spec/model.md §2.2–2.6). Two forward
// paths over the same weights: the naive one materializes per-head keys/values from the latent
// (prefill, training); the absorbed one folds W_UK into the query and W_UV after the attention and
// attends over the latent cache rows directly (decoding). Tests hold them as twin oracles. The backward
// follows the naive path; with `recompute` it rebuilds the RMSNorm outputs and the up-projections
// (q_b / kv_b and the per-head keys/values) from the saved input instead of keeping them, as DeepSeek does.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "model/kv_cache.h"
#include "model/paged_cache.h"
#include "model/weights.h"
#include "ops/decode.h"

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

// What the backward reads (training forward: no cache, every chunk starts at position 0).
struct MlaSaved {
  bool recompute = false;
  Tensor x;              // [N, D] the normed layer input, as the products took it (bf16 operand on the GPU)
  Tensor cq, cq_rstd;    // [N, q_lora_rank] pre-norm q latent, [N] its rstd
  Tensor cqn;            // [N, q_lora_rank] normed q latent, q_b's operand (dropped when recompute)
  Tensor q;              // [N, H, dn + R] roped queries            (dropped when recompute)
  Tensor ckv, ckv_rstd;  // [N, C] pre-norm kv latent, [N] its rstd
  Tensor lat;            // [N, C + R] [rmsnorm(c_kv) | rope(k_pe)] (dropped when recompute)
  Tensor k, v;           // [N, H, dn + R], [N, H, dv]              (dropped when recompute)
  std::vector<int64_t> cu;  // sequence boundaries (rows) of the chunks
  Tensor probs;             // every chunk's [H, len, len], one after another (exact attention)
  // Flash attention (bf16 on the GPU) instead of probs, k and v: the rows' log-sum-exp [H, N] f32, and
  // the bf16 operands kv [N, H, dn + dv], kpe [N, R] (dropped when recompute); q is then bf16.
  Tensor lse, kv, kpe;
  Tensor ckvn;  // flash: [N, C] the normed latents as kv_b_proj's bf16 operand (instead of lat)
  Tensor o;     // [N, H·dv] attention output before o_proj
};

// out[N, D] = MLA(x) for normed input x[N, D] at `positions` (I64 [N]). Chunks with a cache write
// their latents and attend over everything cached; `path` Auto takes the naive form when a chunk
// starts at position 0 and the absorbed form otherwise.
// With `saved`, chunks must have no cache and start at position 0 (training).
// With `paged`, every row's latent goes to its slot of the paged cache; a decode step (one token per
// chunk) attends over the cache blocks in the absorbed form, all heads at once, otherwise the chunks
// are prompts from position 0 (no `cache`) and attend among themselves. `fp16_attention`: the inference
// attention takes fp16 operands on the GPU's tensor cores (when the model's products are bf16), else it
// is exact f32.
void mla_fwd(Tensor out, const Tensor& x, const MlaWeights& w, const ModelConfig& cfg, const Rope& rope,
             const Tensor& positions, const std::vector<SeqChunk>& chunks, int64_t layer,
             AttnPath path = AttnPath::Auto, MlaSaved* saved = nullptr, const PagedStep* paged = nullptr,
             bool fp16_attention = false);

// A decode step over the paged cache (paged.decode) from the normed input `in` (ops/decode.h NormedInput:
// the residual add + input RMSNorm ride in the q_a/kv_a product's launch, which writes in.h_out).
// out: [N, D].
void mla_decode(Tensor out, const ops::NormedInput& in, const MlaWeights& w, const ModelConfig& cfg,
                const Rope& rope, const Tensor& positions, const PagedStep& paged, int64_t layer);

// dx[N, D] written; parameter gradients accumulated into `g` (same struct, activation dtype). dout_op
// (optional): dout's bf16 operand when the caller already has it (o_proj's backward takes it, no cast).
void mla_bwd(Tensor dx, MlaWeights& g, const Tensor& dout, const MlaWeights& w, const ModelConfig& cfg,
             const Rope& rope, const Tensor& positions, const std::vector<SeqChunk>& chunks, MlaSaved& saved,
             const Tensor& dout_op = {});

}  // namespace dseek
