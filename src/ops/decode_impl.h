// decode_impl.h — the per-backend implementations of the decode ops (ops/decode.h), with the dispatcher's
// signatures: cpu:: in ops/cpu/decode.cpp (the reference), cuda:: in ops/cuda/decode_attention.cu (or
// ops/decode_nocuda.cpp in builds without CUDA). Arguments arrive already checked; kv_b arrives in a
// dtype the backend reads (the activation dtype on the CPU; f32 or bf16 on the GPU).
#pragma once

#include <vector>

#include "core/tensor.h"
#include "ops/decode.h"
#include "ops/router.h"

namespace dseek::ops::cpu {
void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots);
void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv);
void router_decode_normed(Tensor topk_idx, Tensor topk_w, const NormedInput& in, const Tensor& gate,
                          const Tensor& bias, const RouterParams& p);
void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv);
void mla_decode_paged_o(Tensor o, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                        const Tensor& seq_lens, double scale, int64_t max_len, const Tensor& kv_b, int64_t dn,
                        int64_t dv);
void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len);
void argmax_rows(Tensor ids, const Tensor& x);
void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down);
}  // namespace dseek::ops::cpu

// The fused decode ops (ops/decode.h) have no cpu:: twin of their own: their reference is the unfused ops
// in sequence (ops/decode.cpp), which the CPU runs and the GPU falls back to where a kernel does not apply.
namespace dseek::ops::cuda {
void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots);
void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv, const RopeAt* rope);
void mla_decode_latent(const LatentStep& a);
void mla_decode_latent_q(Tensor q, const LatentStep& a, const Tensor& q_b);  // f32, N ≤ 8, bf16 q_b
// gemv.cu, for f32 activations of 1 ..= 8 rows and bf16 weights: both products in one launch
// (out_a: [N, Oa], out_b: [N, Ob] f32), and silu(x · w_gateᵀ) ⊙ (x · w_upᵀ) (out: [N, F] f32).
void gemv_pair(Tensor out_a, Tensor out_b, const Tensor& x, const Tensor& w_a, const Tensor& w_b);
void gemv_swiglu(Tensor out, const Tensor& x, const Tensor& w_gate, const Tensor& w_up);
// The pair of a NormedInput (f32 tensors, 1 ..= 8 rows); w_b may be undefined (one product).
void gemv_pair_normed(Tensor out_a, Tensor out_b, const NormedInput& in, const Tensor& w_a,
                      const Tensor& w_b);
// decode_counters.cu: kArrivalCounters zeroed ints on the current device for this host thread, for kernels
// whose last block per row finishes the row (each leaves them at zero): [0, 64) the router's tokens,
// [64, 128) the argmax's rows.
inline constexpr int kArrivalCounters = 128, kRouterCounters = 0, kArgmaxCounters = 64, kArgmaxRows = 64;
int* arrival_counters();
// router_small.cu: the gate product (blocks of 8 experts) and the choice (the token's last block) in one
// launch.
void router_decode(Tensor topk_idx, Tensor topk_w, const Tensor& x, const Tensor& gate, const Tensor& bias,
                   const RouterParams& p);
void router_decode_normed(Tensor topk_idx, Tensor topk_w, const NormedInput& in, const Tensor& gate,
                          const Tensor& bias, const RouterParams& p);
void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv);
void mla_decode_paged_o(Tensor o, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                        const Tensor& seq_lens, double scale, int64_t max_len, const Tensor& kv_b, int64_t dn,
                        int64_t dv);
void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len);
void argmax_rows(Tensor ids, const Tensor& x);
// `shared` (optional) arrives with F rows and the experts' dtype: it runs as expert E of the launches.
void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down, const SharedExpert* shared);
void moe_experts_slots(Tensor yp, const Tensor& x, const Tensor& topk_idx, const std::vector<Tensor>& gate,
                       const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                       const SharedExpert* shared);
// out[n] = Σ_{k<K} w[n, k] · yp[n·KS + k] (+ yp[n·KS + K] when KS > K), f32.
void moe_combine_slots(Tensor out, const Tensor& yp, const Tensor& topk_w, int64_t K, int64_t KS);
// A NormedInput's x (f32 tensors) in one launch.
void normed_input(Tensor x, const NormedInput& in);
// Routing of a few tokens, one block per token (router_small.cu); router.cu's router_fwd takes it when
// it applies (N ≤ 64; DSEEK_ROUTER_SMALL=0 turns it off).
bool router_small_applies(int64_t N, int64_t E, const RouterParams& p);
void router_fwd_small(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                      const RouterParams& p);
}  // namespace dseek::ops::cuda
