// model.h — the DeepSeek-V3/V2 transformer (DESIGN.md model/; spec/model.md §2.1): embedding, the
// decoder layers (RMSNorm → MLA → residual, RMSNorm → dense MLP or MoE → residual), final norm, LM
// head. The forward reads top to bottom like DeepSeek's Transformer.forward.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "model/kv_cache.h"
#include "model/layer.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/paged_cache.h"
#include "model/weights.h"

namespace dseek {

// Intermediate values a caller may ask for (tests, statistics).
struct ForwardTrace {
  std::vector<Tensor> hidden;  // hidden[0] embeddings, hidden[i] output of layer i-1, hidden[L] final norm
  std::vector<RouterTrace> routers;  // one per MoE layer, in layer order
};

struct TrainOptions {
  double mtp_lambda = 0;     // λ: loss = main + λ/D Σ_k MTP_k (0: MTP modules not run)
  double balance_alpha = 0;  // α of the sequence-wise balance loss per MoE layer (0: off)
  bool recompute = false;    // rebuild RMSNorm outputs, MLA up-projections and the experts' inputs and
                             // gate/up products in the backward
  double grad_scale = 1.0;   // multiplies every gradient (1 / accumulation steps)
};

struct TrainResult {
  double loss = 0;                 // the objective: main + λ/D Σ mtp + Σ balance
  double main_loss = 0;            // mean next-token cross-entropy
  std::vector<double> mtp_losses;  // per depth, mean cross-entropy
  double balance_loss = 0;
  int64_t tokens = 0;                             // targets counted by the main loss
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer (main, then MTP): tokens per expert
};

class Model {
 public:
  ModelConfig cfg;
  Weights w;
  Rope rope;

  static Model load(const std::string& dir, const LoadOptions& opt);
  static Model from_weights(ModelConfig cfg, Weights w);

  // Full causal forward of a batch of equal-length sequences, no cache. ids: [B, T] I64.
  // Returns logits [B, T, V] f32.
  Tensor forward(const Tensor& ids, ForwardTrace* trace = nullptr) const;

  // Appends `tokens` to one sequence whose cache holds `cache.length()` tokens; returns the logits of
  // every new token [T, V], or only of the last one [1, V] when `last_only`.
  Tensor forward_cached(const std::vector<int64_t>& tokens, LatentCache& cache, bool last_only = true,
                        AttnPath path = AttnPath::Auto) const;

  // Prefill of several sequences in one pass (the decoder stack sees all their tokens at once): seqs[i] is
  // appended to *caches[i] at its current length. Returns the logits of each sequence's last new token
  // [B, V] f32 on the CPU.
  Tensor forward_cached_batch(const std::vector<std::vector<int64_t>>& seqs,
                              const std::vector<LatentCache*>& caches, AttnPath path = AttnPath::Auto) const;

  // Training / evaluation: ids and targets [B, T] I64 (target −1 = none). Forward, then, when grads is
  // given, the backward with gradients accumulated (+=) into it (zero_grads() makes one).
  TrainResult forward_backward(const Tensor& ids, const Tensor& targets, const TrainOptions& opt,
                               Weights* grads) const;

  // Appends new tokens to several sequences of a paged cache in one forward: tokens[i] go to sequence
  // seqs[i]. Either every sequence gets exactly one token (a decode step; attention over the cache
  // blocks) or every sequence is empty and gets its prompt (a batched prefill). Blocks are reserved as
  // needed. Returns the logits of each sequence's last new token, [B, V] on the model's device, in the
  // activation dtype (model_paged.cpp).
  Tensor forward_paged(const std::vector<std::vector<int64_t>>& tokens, const std::vector<int64_t>& seqs,
                       PagedLatentCache& cache) const;
  // The device part of a decode step: ids/positions [B] I64 on the device, one token per sequence, the
  // paged step's slots/block table/lengths already on the device. Returns logits [B, V] on the device.
  // Nothing here waits for the host, so a CUDA graph can capture it (infer/decode_graph.h).
  Tensor decode_logits(const Tensor& ids, const Tensor& positions, const PagedStep& step) const;
  PagedLatentCache make_paged_cache(int64_t num_blocks) const {
    return PagedLatentCache(cfg, cfg.num_hidden_layers, num_blocks, act_dtype(), device());
  }

  LatentCache make_cache(int64_t capacity) const {
    return LatentCache(cfg, cfg.num_hidden_layers, capacity, act_dtype(), device());
  }
  Device device() const { return w.embed_tokens.device(); }
  // Activations: f64 with f64 weights (gradient checks), else f32. With bf16 weights on CUDA the products
  // take bf16 operands (each op casts its input) and accumulate in f32, while the residual stream,
  // norms, router, softmax and latent cache stay f32: measured on the fixtures, bf16 activations
  // throughout drift 1.2 % from the reference and flip routing choices.
  DType act_dtype() const { return w.embed_tokens.dtype() == DType::F64 ? DType::F64 : DType::F32; }
  // The model moved to `device` with matrices and embeddings in `dtype` (norms, router and bias stay f32).
  void to(Device device, DType dtype);
  const Tensor& lm_head() const { return cfg.tie_word_embeddings ? w.embed_tokens : w.lm_head; }

 private:
  // The decoder stack over flattened tokens ids[N] split into `chunks`; returns the final-normed
  // hidden states [N, D].
  Tensor run(const Tensor& ids, const Tensor& positions, const std::vector<SeqChunk>& chunks, AttnPath path,
             ForwardTrace* trace, const PagedStep* paged = nullptr) const;
};

}  // namespace dseek
