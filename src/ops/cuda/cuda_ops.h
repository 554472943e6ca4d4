// cuda_ops.h — the CUDA implementations, with the dispatchers' signatures (DESIGN.md ops/). Each is
// checked against its CPU twin in tests/cuda/. Arguments arrive already checked. Built from ops/cuda/*.cu
// with CUDA, else ops/cuda_nocuda.cpp provides versions that say dseek was built without CUDA.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "ops/adamw.h"
#include "ops/moe.h"
#include "ops/router.h"
#include "ops/sample.h"

namespace dseek::ops::cuda {

void linear(Tensor out, const Tensor& x, const Tensor& w);
void matmul_nn(Tensor out, const Tensor& x, const Tensor& w);
// Batched f32 products over strided views (linear.cu, cuBLASLt, f32 compute): C[b](i, j) = alpha ·
// Σ_l A[b](i, l) · B[b](l, j), X[b](r, c) = X.p[b·X.sb + r·X.sr + c·X.sc]; A and B have a unit stride in one
// of their dims, C in its columns (C[b](i, j) = C[b·sCb + i·sCr + j]).
struct StridedF32 {
  const float* p;
  int64_t sb, sr, sc;
};
void matmul_strided_batched(float* C, int64_t sCb, int64_t sCr, StridedF32 A, StridedF32 B, int64_t M,
                            int64_t N, int64_t K, int64_t batch, float alpha);
// The same with bf16 A and B (tensor cores), f32 C and accumulation.
struct StridedBf16 {
  const void* p;  // bf16 elements
  int64_t sb, sr, sc;
};
void matmul_strided_batched_bf16(float* C, int64_t sCb, int64_t sCr, StridedBf16 A, StridedBf16 B, int64_t M,
                                 int64_t N, int64_t K, int64_t batch, float alpha);
void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps);
void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps);
void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor);
void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0);
void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu_seqlens, double scale);
void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0);
void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up);
void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table);
void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p);
void axpy_(Tensor x, const Tensor& y, double alpha);
void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width);
void moe_permute(Tensor xp, const Tensor& x, const MoePlan& plan);
void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& plan);
// bias[e] += gamma · sign(mean − load[e]) on the device (ops::router_bias_update).
void router_bias_update(Tensor bias, const std::vector<int64_t>& load, double mean, double gamma);
// dx[rows of e] = dy[rows of e] · w[e] for every expert with rows, in two launches per chunk of experts
// (their bf16 weights transposed into at most scratch_bytes of scratch, then the grouped kernel): dy bf16 [M,
// O], w[e] bf16 [O, I], dx f32 [M, I]. Returns false (nothing done) when the operands do not suit the kernel.
bool grouped_linear_dgrad(Tensor dx, const Tensor& dy, const std::vector<Tensor>& w, const MoePlan& plan,
                          int64_t scratch_bytes = int64_t(1) << 30);
// dx = dya · wa[e] + dyb · wb[e] per expert in one product along both inner dims (the experts' gate and up
// input gradients; weights transposed in chunks as above): dya, dyb bf16 [M, O], wa[e], wb[e] bf16 [O, I], dx
// f32 or bf16 [M, I]. Returns false (nothing done) when the operands do not suit the kernel.
bool grouped_pair_dgrad(Tensor dx, const Tensor& dya, const Tensor& dyb, const std::vector<Tensor>& wa,
                        const std::vector<Tensor>& wb, const MoePlan& plan,
                        int64_t scratch_bytes = int64_t(1) << 30);
// dg, du bf16 [M, F] = SwiGLU's backward at g, u (bf16 [M, F]) of dh = dy · wd[e] (dy bf16 [M, D], wd[e] bf16
// [D, F]); dh never reaches memory. Returns false (nothing done) when the operands do not suit the kernel.
bool grouped_swiglu_dgrad(Tensor dg, Tensor du, const Tensor& dy, const std::vector<Tensor>& wd,
                          const Tensor& g, const Tensor& u, const MoePlan& plan,
                          int64_t scratch_bytes = int64_t(1) << 30);
// h (f32 or bf16 [M, F]) = silu(x · wg[e]ᵀ) ⊙ (x · wu[e]ᵀ), with g, u (bf16 [M, F], when defined) the two
// products, in one launch. Returns false (nothing done) when the operands do not suit the kernel.
bool grouped_swiglu_fwd(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                        const std::vector<Tensor>& wu, const MoePlan& plan);
// dw[e] += dy[rows of e]ᵀ · x[rows of e] for every expert with rows, in one launch (grouped_wgrad.cu): dy
// bf16 [M, O], x bf16 [M, I] (O, I multiples of 8), dw[e] f32 [O, I]. Returns false (nothing done) when the
// operands do not suit the kernel.
bool grouped_linear_wgrad(const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                          const MoePlan& plan);
void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& plan);
bool moe_experts_grouped_applies(const Tensor& x, const std::vector<Tensor>& gate);
void moe_experts_grouped(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                         const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                         const std::vector<Tensor>& down, const SharedExpert& shared);

void sample_rows(Tensor ids, Tensor fallback, const Tensor& logits, const Tensor& u, const SampleParams& p);

void mla_flash_fwd(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale,
                   bool fp16_operands);
// flash_attention.cu (forward with the log-sum-exp), flash_attention_bwd.cu: training attention.
void mla_flash_train_fwd(Tensor out, Tensor lse, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                         const std::vector<int64_t>& cu, double scale);
void mla_flash_bwd(Tensor dq, Tensor dkv, Tensor dkpe, const Tensor& d_o, const Tensor& o, const Tensor& lse,
                   const Tensor& q, const Tensor& kv, const Tensor& kpe, const std::vector<int64_t>& cu,
                   double scale);
bool mla_flash_train_dims(int64_t dn, int64_t R, int64_t dv);

// Training (issue 6), f32 activations: backward.cu, linear.cu (linear_bwd), norm_rope.cu (rope_bwd).
void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w);
void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                 const Tensor& rstd);
// dh += the norm's input gradient (f32), dw accumulated; dh_op (bf16, when defined) = the new dh.
void rmsnorm_bwd_add(Tensor dh, Tensor dh_op, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                     const Tensor& rstd);
void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up);
void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor);
void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p);
double sum_squares(const Tensor& t);
// backward.cu: the multi-tensor forms (one launch each; checked arguments).
std::vector<double> sum_squares_many(const std::vector<const Tensor*>& ts);
void cast_many(const std::vector<Tensor*>& dst, const std::vector<const Tensor*>& src);
void adamw_step_many(const std::vector<Tensor*>& params, const std::vector<const Tensor*>& grads,
                     const std::vector<Tensor*>& m, const std::vector<Tensor*>& v,
                     const std::vector<double>& decay, const AdamWParams& p,
                     const std::vector<Tensor*>& copies);
// The LM head + cross-entropy's Σ loss over the rows with a target (the dispatcher counts them).
double lm_head_cross_entropy_sum(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                 const Tensor& targets, double scale);
// train_bwd.cu: the MoE, router, balance-loss, embedding and attention backward (deterministic order).
void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& plan);
void moe_permute_bwd_add(Tensor dx, const Tensor& dxa, const Tensor& dxb, const MoePlan& plan);
// moe_plan.cu: p.offsets (host), p.d_slot and p.d_row from topk_idx on the GPU (p's sizes set).
void moe_plan_build(MoePlan& p, const Tensor& topk_idx);
// The plan's slot / row arrays on the GPU: its device tensors, or the host vectors uploaded into `keep`.
const int64_t* plan_slots(const MoePlan& p, Tensor& keep);
const int64_t* plan_rows(const MoePlan& p, Tensor& keep);
void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& plan);
void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p);
double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p);
void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout);
void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0);
void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu_seqlens, double scale);

}  // namespace dseek::ops::cuda
