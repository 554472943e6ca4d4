// attention.h — causal softmax attention for MLA, in its two forms (spec/model.md §2.2, §2.5, §2.6):
// the naive multi-head form over materialized per-head keys/values, and the absorbed form, which is
// multi-query attention against the latent cache rows [c_kv | k_pe].
#pragma once

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

}  // namespace dseek::ops
