// flash_attention.h — causal attention for MLA prefill over the decompressed per-head keys/values,
// read where they are produced (spec/model.md §2.2 splits, §2.6 prefill): the kv_b_proj output
// kv [S, H, dn + dv] holds per head [k_nope | v], and kpe [S, R] the roped rope-key shared by the heads
// (the last R columns of the latent rows). Many sequences in one call, as FlashAttention's
// varlen; no probabilities are kept (inference only — training uses attention_fwd_varlen).
#pragma once

#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// out [Nq, H, dv] = softmax(scale · q kᵀ, causal) v with k = [k_nope | kpe], v from kv. Sequence b's
// queries are rows [cu_q[b], cu_q[b+1]) of q [Nq, H, dn + R]; its keys/values rows [cu_k[b], cu_k[b+1])
// of kv and kpe, with Lk ≥ Lq; query t of the sequence sits at position Lk − Lq + t and sees keys
// 0 ..= that position (a chunk continuing a cached prefix). fp16_operands: on CUDA, the two products
// take fp16 operands on the tensor cores (f32 scores, softmax and accumulation), kv/kpe may be f16
// while q/out are f32, and out may be bf16 under f32 q (for a bf16 product next); otherwise f32 throughout.
// The CPU computes in the input dtype. fp16 rather than bf16: rounding q, k, v to bf16 moved tiny-v3-fp8's
// logits 12 % on one prompt (its attention is sharp), fp16 0.04 %; the price is fp16's range (±65504), far
// above MLA's normed-latent keys and values.
void mla_flash_fwd(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale,
                   bool fp16_operands, Stream s = {});

}  // namespace dseek::ops
