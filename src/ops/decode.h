// decode.h — the ops of a decode step over the paged latent cache (spec/model.md §2.5 absorbed MLA,
// spec/serving.md paged cache): writing new latent rows into their cache slots, the absorbed query and
// output projections for all heads at once, the absorbed attention of one query per sequence over its
// cache blocks (all heads in one pass over the cached rows), and the greedy choice on the device.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace dseek::ops {

// Tokens per cache block (vLLM's block_size; the 64).
inline constexpr int64_t kCacheBlock = 64;

// pool[slot / 64, slot % 64, :] = rows[i, :] for slot = slots[i]. pool: [NB, 64, W], rows: [N, W] (same
// dtype and device), slots: [N] I32 on that device.
void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots);

// The absorbed query of every head: qa[n, h, :C] = q[n, h, :dn] · W_UK[h] and qa[n, h, C:] = q[n, h, dn:]
// (the roped part), where W_UK[h] = kv_b[h·(dn + dv) .. + dn, :] ([dn, C]).
// qa: [N, H, C + R], q: [N, H, dn + R], kv_b: [H·(dn + dv), C] (f32/bf16, or fp8 on the GPU).
void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv);

// The output of every head from its latent output: o[n, h, j] = Σ_c o_lat[n, h, c] · W_UV[h][j, c], where
// W_UV[h] = kv_b[h·(dn + dv) + dn .. + dv, :] ([dv, C]). o: [N, H, dv], o_lat: [N, H, C].
void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv);

// Absorbed MLA decode, one query per sequence: sequence b holds seq_lens[b] cached rows (its new token
// included, last) in the blocks block_table[b, 0 .. ceil(seq_lens[b] / 64)); its query sees all of them:
// o_lat[b, h] = softmax(scale · q[b, h] · rowsᵀ) · rows[:, :C].
// o_lat: [B, H, C], q: [B, H, C + R], pool: [NB, 64, C + R] (dtype of q), block_table: [B, MB] I32,
// seq_lens: [B] I32 (on the device of q; every length ≥ 1). `max_len` (≥ every seq_len) sizes the split
// of long sequences across thread blocks on the GPU; 0 means "read it from seq_lens".
void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len = 0);

// Routed experts for a few tokens (a decode step) without a host-side plan: the expert ids and gate weights
// stay in device memory. out[n] = Σ_k topk_w[n, k] · down_e(silu(gate_e · x[n]) ⊙ (up_e · x[n])), e =
// topk_idx[n, k]. out, x: [N, D] f32; topk_idx: [N, K] I32; topk_w: [N, K] f32; gate/up[e]: [F, D],
// down[e]: [D, F] (all of one dtype). On the GPU each chosen expert's weights are read once per step
// whatever the batch.
void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down);
// Whether moe_experts_small takes these operands on the GPU (f32 activations, bf16 or f32 expert matrices,
// at most kMoeSmallTokens tokens, at most kMoeSmallExperts experts).
inline constexpr int64_t kMoeSmallTokens = 64, kMoeSmallExperts = 256;
bool moe_experts_small_applies(const Tensor& x, int64_t top_k, const std::vector<Tensor>& gate);

// ids[n] = argmax_v x[n, v] (the lowest index among equal maxima). ids: [N] I64, x: [N, V] f32/bf16.
void argmax_rows(Tensor ids, const Tensor& x);

}  // namespace dseek::ops
