// attention.h — causal softmax attention for MLA, in its two forms (spec/model.md §2.2, §2.5, §2.6):
// the naive multi-head form over materialized per-head keys/values, and the absorbed form, which is
// multi-query attention against the latent cache rows [c_kv | k_pe].
#pragma once

#include <vector>
#include "core/stream.h"

#include "core/tensor.h"

namespace dseek::ops {

// out[T, H, Dv] = softmax(scale · q kᵀ, causal) v for one sequence. q: [T, H, Dq], k: [S, H, Dq],
// v: [S, H, Dv]; query t sits at position q_pos0 + t and sees keys 0 ..= q_pos0 + t (S ≥ q_pos0 + T).
// probs: [H, T, S] of the activation dtype to keep the softmax for the backward, or undefined.
void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0, Stream s = {});

// Absorbed MLA: o_lat[T, H, C] = softmax(scale · q rowsᵀ, causal) rows[:, :C] for one sequence, where
// q: [T, H, C + R] = [q_lat | q_pe] and rows: [S, C + R] = [c_kv | k_pe] (the latent cache).
void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0,
                      Stream s = {});

// Backward of attention_fwd from its saved probs [H, T, S]: dq [T, H, Dq] written, dk [S, H, Dq] and
// dv [S, H, Dv] written.
void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0, Stream s = {});

// Many causal sequences in one call (each from position 0), as FlashAttention's "varlen": sequence i
// is rows [cu_seqlens[i], cu_seqlens[i + 1]) of q [N, H, Dq], k [N, H, Dq], v [N, H, Dv], out [N, H, Dv].
// probs (for the backward) holds every sequence's [H, L_i, L_i] one after another: Σ H·L_i² values, f32
// or in q's dtype, or bf16 with an f32 q on CUDA: then every product takes bf16 operands on the tensor cores
// (f32 accumulation, f32 softmax, probabilities rounded to bf16; bf16 training).
int64_t varlen_probs_size(const std::vector<int64_t>& cu_seqlens, int64_t heads);
// Where each sequence's probabilities start in that buffer ([B + 1], the last one its size).
std::vector<int64_t> varlen_probs_offsets(const std::vector<int64_t>& cu_seqlens, int64_t heads);
void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu_seqlens, double scale, Stream s = {});
void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu_seqlens, double scale, Stream s = {});

}  // namespace dseek::ops
