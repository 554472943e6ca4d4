// cpu_ops.h — the CPU reference implementations, one per op, with the dispatcher's signatures
// (DESIGN.md ops/). Arguments arrive already checked.
#pragma once

#include "core/tensor.h"
#include "ops/adamw.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/moe.h"
#include "ops/router.h"

namespace dseek::ops::cpu {

void linear(Tensor out, const Tensor& x, const Tensor& w);
void matmul_nn(Tensor out, const Tensor& x, const Tensor& w);
void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps);
void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps);
void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor);
void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0);
void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu_seqlens, double scale);
void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu_seqlens, double scale);
void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0);
void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up);
void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table);
void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p);
void add_(Tensor x, const Tensor& y);
void axpy_(Tensor x, const Tensor& y, double alpha);
void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width);
void copy_cols_many(const std::vector<ColBlock>& blocks);

void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w);
void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                 const Tensor& rstd);
void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor);
void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0);
void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up);
void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout);
void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p);
double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p);
CrossEntropyResult lm_head_cross_entropy(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                         const Tensor& targets, double scale);
void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p);
double sum_squares(const Tensor& t);
void moe_permute(Tensor xp, const Tensor& x, const MoePlan& plan);
void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& plan);
void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& plan);
void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& plan);
void grouped_linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const std::vector<Tensor>& wa,
                         const std::vector<Tensor>& wb, const MoePlan& plan);
void grouped_linear_pair_bwd(Tensor dx, const std::vector<Tensor>& dwa, const std::vector<Tensor>& dwb,
                             const Tensor& dya, const Tensor& dyb, const Tensor& x,
                             const std::vector<Tensor>& wa, const std::vector<Tensor>& wb,
                             const MoePlan& plan);
void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& plan);
void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& plan);

// y[n, o] = Σ_i x[n, i] · bf16(w[o, i]) for n < N (f32 accumulation), rows o in [o0, o1).
// Vectorised (AVX2 or AVX-512, chosen at run time); single-threaded: the caller splits rows.
void gemv_bf16_rows(float* y, int64_t ldy, const float* x, int64_t ldx, const uint16_t* w, int64_t N,
                    int64_t I, int64_t o0, int64_t o1);

}  // namespace dseek::ops::cpu
