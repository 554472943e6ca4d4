// decode.h — the ops of a decode step over the paged latent cache (spec/model.md §2.5 absorbed MLA,
// spec/serving.md paged cache): writing new latent rows into their cache slots, the absorbed query and
// output projections for all heads at once, the absorbed attention of one query per sequence over its
// cache blocks (all heads in one pass over the cached rows), and the greedy choice on the device.
#pragma once

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

// ids[n] = argmax_v x[n, v] (the lowest index among equal maxima). ids: [N] I64, x: [N, V] f32/bf16.
void argmax_rows(Tensor ids, const Tensor& x);

}  // namespace dseek::ops
