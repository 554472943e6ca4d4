// decode.h — the ops of a decode step over the paged latent cache (spec/model.md §2.5 absorbed MLA,
// spec/serving.md paged cache): writing new latent rows into their cache slots, the absorbed query and
// output projections for all heads at once, the absorbed attention of one query per sequence over its
// cache blocks (all heads in one pass over the cached rows), and the greedy choice on the device. Fused
// forms for the few-token step (issue 5, one launch each on the GPU where they apply, the unfused ops as
// the reference elsewhere): two products of one input, gate+up+SwiGLU, the latent norms + k_pe RoPE +
// cache write, the q RoPE inside the query absorption, the router's gate product with its top-k, and the
// shared expert inside the routed experts' kernels.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "ops/moe.h"
#include "ops/router.h"

namespace dseek::ops {

// Tokens per cache block (vLLM's block_size; the 64).
inline constexpr int64_t kCacheBlock = 64;

// pool[slot / 64, slot % 64, :] = rows[i, :] for slot = slots[i]. pool: [NB, 64, W], rows: [N, W] (same
// dtype and device), slots: [N] I32 on that device.
void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots);

// The absorbed query of every head: qa[n, h, :C] = q[n, h, :dn] · W_UK[h] and qa[n, h, C:] = q[n, h, dn:]
// (the roped part), where W_UK[h] = kv_b[h·(dn + dv) .. + dn, :] ([dn, C]).
// qa: [N, H, C + R], q: [N, H, dn + R], kv_b: [H·(dn + dv), C] (f32/bf16, or fp8 on the GPU).
// With `rope`, the roped part is rotated on the way (rope_fwd's rotation of q[n, h, dn:] at position
// positions[n]); q itself is left as it is.
struct RopeAt {
  Tensor positions, inv_freq;  // [N] I64, [R / 2] f32 (on the device of q)
  double attention_factor = 1.0;
};
void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv,
                  const RopeAt* rope = nullptr);

// The latent side of a decode step after the q_a / kv_a products, one launch per step on the GPU:
// cqn = rmsnorm(cq) · q_norm (when cq is defined; V2 has no q_a), and the cache row
// [rmsnorm(kv[:, :C]) · kv_norm | rope(kv[:, C:])] of token n written to pool at slots[n] (as
// paged_cache_write). cq, cqn: [N, Q]; kv: [N, C + R]; pool: [NB, 64, C + R]; norms f32 or the
// activation dtype; the rope of kv's last R columns as rope_fwd's (col C, one head).
struct LatentStep {
  Tensor cqn, pool;                // outputs
  Tensor cq, kv, q_norm, kv_norm;  // inputs
  Tensor positions, inv_freq, slots;
  double attention_factor = 1.0, eps = 1e-6;
};
void mla_decode_latent(const LatentStep& a);

// The latent step followed by q_b_proj: q = cqn · q_bᵀ with cqn = rmsnorm(a.cq) · a.q_norm (a.cqn is not
// used: on the GPU cqn never leaves the launch), and the cache rows of mla_decode_latent written. One
// launch on the GPU for f32 activations and norms, 1 ..= 8 tokens and a bf16 q_b; the reference is
// mla_decode_latent + linear. q: [N, O], q_b: [O, Q], a.cq defined.
void mla_decode_latent_q(Tensor q, const LatentStep& a, const Tensor& q_b);

// The input of a decode-step product that begins with the residual add + RMSNorm before it (on the GPU
// the norm runs inside the product's launch, one launch fewer per norm): v[n] = h[n] + δ[n] and
// x[n] = rmsnorm(v[n]) · norm, where δ[n] = Σ_{k<K} w[n, k] · y[n·KS + k] (k ascending) + y[n·KS + K] when
// KS > K — moe_experts_slots' outputs before their combine (K = top_k, KS = K + 1 with a shared expert),
// y[n] itself (K = 0, KS = 1), or 0 (y undefined). v is written to h_out and x to x_out when they are
// defined (h_out must not be h: the consumer's blocks all read h). h, h_out, x_out: [N, D]; y: [N·KS, D];
// w: [N, K] f32; norm: [D].
struct NormedInput {
  Tensor h, y, w;
  int64_t K = 0, KS = 1;
  Tensor norm;
  double eps = 1e-6;
  Tensor h_out, x_out;
};
// x = the normed rows of `in` (and h_out written). One launch on the GPU for f32; elsewhere the slots'
// combine, then add_rmsnorm_fwd (the reference). x: [N, D].
void normed_input(Tensor x, const NormedInput& in);

// Two products of one input (q_a_proj and kv_a_proj_with_mqa): out_a = x · w_aᵀ, out_b = x · w_bᵀ; one
// launch on the GPU when the decode GEMV takes both (f32 activations of ≤ 8 rows, bf16 weights).
void linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const Tensor& w_a, const Tensor& w_b);
// The same of a NormedInput's x (one launch on the GPU where the GEMV applies: f32, bf16 weights, ≤ 8 rows).
void linear_pair(Tensor out_a, Tensor out_b, const NormedInput& in, const Tensor& w_a, const Tensor& w_b);
// out = silu(x · w_gateᵀ) ⊙ (x · w_upᵀ) (a dense MLP's first half), one launch where the GEMV applies.
void linear_swiglu(Tensor out, const Tensor& x, const Tensor& w_gate, const Tensor& w_up);

// The router of a decode step: logits = x · gateᵀ in f32, then router_fwd's choice (no scores). One
// launch on the GPU when router_decode_applies (x f32 on the GPU, ≤ 64 rows, gate f32 or bf16, the
// block-per-token router takes the configuration); the reference is linear + router_fwd.
// topk_idx: [N, K] I32, topk_w: [N, K] f32, x: [N, D], gate: [E, D], bias: [E] f32 or undefined.
void router_decode(Tensor topk_idx, Tensor topk_w, const Tensor& x, const Tensor& gate, const Tensor& bias,
                   const RouterParams& p);
bool router_decode_applies(const Tensor& x, const Tensor& gate, const RouterParams& p);
// The same of a NormedInput's x (one launch on the GPU where router_decode applies to in.h and the norm is
// f32); in.x_out, when defined, gets x (the experts' input).
void router_decode(Tensor topk_idx, Tensor topk_w, const NormedInput& in, const Tensor& gate,
                   const Tensor& bias, const RouterParams& p);

// The output of every head from its latent output: o[n, h, j] = Σ_c o_lat[n, h, c] · W_UV[h][j, c], where
// W_UV[h] = kv_b[h·(dn + dv) + dn .. + dv, :] ([dv, C]). o: [N, H, dv], o_lat: [N, H, C].
void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv);

// mla_decode_paged followed by mla_absorb_o: o[b, h] = W_UV[h] · o_lat[b, h] (o: [B, H, dv], the rest as
// for the two ops); on the GPU the output absorption runs inside the key splits' combine launch.
void mla_decode_paged_o(Tensor o, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                        const Tensor& seq_lens, double scale, int64_t max_len, const Tensor& kv_b, int64_t dn,
                        int64_t dv);

// Absorbed MLA decode, one query per sequence: sequence b holds seq_lens[b] cached rows (its new token
// included, last) in the blocks block_table[b, 0 .. ceil(seq_lens[b] / 64)); its query sees all of them:
// o_lat[b, h] = softmax(scale · q[b, h] · rowsᵀ) · rows[:, :C].
// o_lat: [B, H, C], q: [B, H, C + R], pool: [NB, 64, C + R] (dtype of q), block_table: [B, MB] I32,
// seq_lens: [B] I32 (on the device of q; every length ≥ 1; both written by the host, i.e. uploaded before
// the step: the GPU kernel reads them before waiting for the kernels before it). `max_len` (≥ every seq_len)
// sizes the split of long sequences across thread blocks on the GPU; 0 means "read it from seq_lens".
void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len = 0);

// Routed experts for a few tokens (a decode step) without a host-side plan: the expert ids and gate weights
// stay in device memory. out[n] = Σ_k topk_w[n, k] · down_e(silu(gate_e · x[n]) ⊙ (up_e · x[n])), e =
// topk_idx[n, k]. out, x: [N, D] f32; topk_idx: [N, K] I32; topk_w: [N, K] f32; gate/up[e]: [F, D],
// down[e]: [D, F] (all of one dtype). On the GPU each chosen expert's weights are read once per step
// whatever the batch.
// With a shared expert (all three defined: gate/up [Fs, D], down [D, Fs]), out also gets its output,
// weight 1: on the GPU, when Fs = F and its matrices have the experts' dtype, as one more expert in the
// same launches.
void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down, const SharedExpert& shared = {});
// moe_experts_small's launches without their combine, GPU only (moe_experts_slots_applies): yp[n·KS + k] =
// the output of token n's k-th chosen expert (unweighted), yp[n·KS + K] the shared expert's (KS = K + 1
// with `shared`, else K). The combine is left to a NormedInput (y = yp, w = topk_w) read by the next
// product. yp: [N·KS, D] f32.
void moe_experts_slots(Tensor yp, const Tensor& x, const Tensor& topk_idx, const std::vector<Tensor>& gate,
                       const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                       const SharedExpert& shared = {});
bool moe_experts_slots_applies(const Tensor& x, int64_t top_k, const std::vector<Tensor>& gate,
                               const SharedExpert& shared);
// Whether moe_experts_small takes these operands on the GPU (f32 activations, bf16 or f32 expert matrices,
// at most kMoeSmallTokens tokens, at most kMoeSmallExperts experts).
inline constexpr int64_t kMoeSmallTokens = 64, kMoeSmallExperts = 256;
bool moe_experts_small_applies(const Tensor& x, int64_t top_k, const std::vector<Tensor>& gate);

// ids[n] = argmax_v x[n, v] (the lowest index among equal maxima). ids: [N] I64, x: [N, V] f32/bf16.
void argmax_rows(Tensor ids, const Tensor& x);

}  // namespace dseek::ops
