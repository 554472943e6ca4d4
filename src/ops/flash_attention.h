// flash_attention.h — causal attention for MLA prefill over the decompressed per-head keys/values,
// read where they are produced (spec/model.md §2.2 splits, §2.6 prefill): the kv_b_proj output
// kv [S, H, dn + dv] holds per head [k_nope | v], and kpe [S, R] the roped rope-key shared by the heads
// (the last R columns of the latent rows). Many sequences in one call, as FlashAttention's
// varlen; no probabilities are kept. Training: mla_flash_train_fwd keeps each row's log-sum-exp instead, and
// mla_flash_bwd rebuilds the probabilities tile by tile.
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

// Training attention, flash-style (FlashAttention-2's forward with the row log-sum-exp kept, and its
// backward that rebuilds the probabilities from it): whole causal sequences, cu the row offsets of each
// (queries and keys alike), q [N, H, dn + R], kv [N, H, dn + dv], kpe [N, R], out [N, H, dv];
// lse [H, N] (head-major, so a head's rows are contiguous) = log Σ_j exp(scale · q·k_j) over each row's
// visible keys. CPU: every tensor f32 (lse f32) or every one f64 (lse f64), exact. CUDA: kv and kpe bf16,
// q bf16 or f32, out f32 or bf16, lse f32; both products take bf16 operands on the tensor cores with f32
// scores, softmax and accumulation (bf16, not the prefill's fp16: the backward's dO and dS, a mean loss's
// gradients, fall below fp16's range); only the head dims mla_flash_train_dims() accepts.
void mla_flash_train_fwd(Tensor out, Tensor lse, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                         const std::vector<int64_t>& cu, double scale, Stream s = {});

// The gradients of mla_flash_train_fwd's out for d_o [N, H, dv]: dq [N, H, dn + R], dkv [N, H, dn + dv]
// (per head [dk_nope | dv]), dkpe [N, R] (summed over the heads, in head order). o and lse are what the
// forward wrote. CPU: the forward's dtypes throughout. CUDA: q, kv, kpe bf16, d_o and o f32 or bf16,
// lse f32, gradients f32 (dkv may be bf16: the operand of kv_b's backward, rounded once where it is
// written); deterministic (dk/dv and dq in two passes, no atomics).
void mla_flash_bwd(Tensor dq, Tensor dkv, Tensor dkpe, const Tensor& d_o, const Tensor& o, const Tensor& lse,
                   const Tensor& q, const Tensor& kv, const Tensor& kpe, const std::vector<int64_t>& cu,
                   double scale, Stream s = {});

// Whether the GPU's training kernels are built for these head dims (qk_nope, qk_rope, v).
bool mla_flash_train_dims(int64_t dn, int64_t R, int64_t dv);

}  // namespace dseek::ops
