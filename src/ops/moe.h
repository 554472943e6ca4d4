// moe.h — the token-permutation ops of DeepSeekMoE (spec/model.md §4): tokens regrouped by expert so
// each expert's projection is one product over its rows (a grouped GEMM), then scattered back with the
// gate weights. Forward and backward; the CPU version runs the experts' products in parallel.
#pragma once

#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// Which permuted row holds each (token, slot) pair. Built on the host from topk_idx [N, K].
struct MoePlan {
  int64_t tokens = 0, top_k = 0, experts = 0;
  std::vector<int64_t> offsets;  // [E + 1]: expert e owns permuted rows [offsets[e], offsets[e + 1])
  std::vector<int64_t> slot;     // [N·K]: permuted row r holds slot n·K + k (host plans)
  std::vector<int64_t> row;      // [N·K]: slot n·K + k sits in permuted row row[n·K + k] (host plans)
  Tensor d_slot, d_row;          // the same two on the GPU (device plans: the host vectors stay empty)
  static MoePlan build(const Tensor& topk_idx, int64_t experts);  // topk_idx: [N, K] I32 (CPU)
  // The same plan (the same stable order: within an expert, slots in order) built on the GPU from
  // topk_idx [N, K] I32 on the GPU; only the E + 1 offsets come back to the host.
  static MoePlan build_on_device(const Tensor& topk_idx, int64_t experts);
  int64_t rows(int64_t e) const { return offsets[size_t(e) + 1] - offsets[size_t(e)]; }
};

// xp[M, D] (M = N·K) = x[token of each permuted row].
void moe_permute(Tensor xp, const Tensor& x, const MoePlan& plan, Stream s = {});
// dx[N, D] (written) = Σ over a token's permuted rows of dxp.
void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& plan, Stream s = {});
// dx[N, D] += Σ over a token's permuted rows of (dxa + dxb) (the gate and up products' input gradients;
// dxb may be undefined: dxa alone): the adds and the permutation's backward in one pass on the GPU (the
// CPU composes the ops above, in the same order: dxa + dxb per row, the rows of a token in order, then
// into dx).
void moe_permute_bwd_add(Tensor dx, const Tensor& dxa, const Tensor& dxb, const MoePlan& plan, Stream s = {});

// out[rows of e] = x[rows of e] · w[e]ᵀ for each expert e (w[e]: [O, I]).
void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& plan,
                    Stream s = {});
// dx written; dw[e] accumulated (experts with no rows untouched).
void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& plan, Stream s = {});

// Two grouped products of the same input (the experts' gate and up projections): out_a = x · wa[e]ᵀ and
// out_b = x · wb[e]ᵀ per expert. On the CPU one pass over the row pieces does both.
void grouped_linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const std::vector<Tensor>& wa,
                         const std::vector<Tensor>& wb, const MoePlan& plan, Stream s = {});
// Its backward: dx = dya · wa[e] + dyb · wb[e] (written), dwa[e] and dwb[e] accumulated (either list
// may be empty).
void grouped_linear_pair_bwd(Tensor dx, const std::vector<Tensor>& dwa, const std::vector<Tensor>& dwb,
                             const Tensor& dya, const Tensor& dyb, const Tensor& x,
                             const std::vector<Tensor>& wa, const std::vector<Tensor>& wb,
                             const MoePlan& plan, Stream s = {});

// The experts' SwiGLU MLP input side: h = silu(g) ⊙ u with g = x · wg[e]ᵀ and u = x · wu[e]ᵀ per expert
// (wg[e], wu[e]: [F, D]); g and u written too when defined (what the backward needs). On the GPU with bf16
// operands one launch (g and u never take a separate pass); h may then be bf16 or f32.
void grouped_swiglu(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                    const std::vector<Tensor>& wu, const MoePlan& plan, Stream s = {});
// Its backward through the down projection y = h · wd[e]ᵀ (wd[e]: [D, F]): dh = dy · wd[e], then SwiGLU's
// backward at the forward's g, u into dg, du (written); dwd[e] += dyᵀ · h (accumulated; may be empty). On the
// GPU with bf16 operands dh never reaches memory (the SwiGLU backward is the product's epilogue).
void grouped_down_swiglu_bwd(Tensor dg, Tensor du, const std::vector<Tensor>& dwd, const Tensor& dy,
                             const Tensor& h, const std::vector<Tensor>& wd, const Tensor& g, const Tensor& u,
                             const MoePlan& plan, Stream s = {});

// out[N, D] (written) = Σ_k topk_w[n, k] · yp[row(n, k)].
void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& plan, Stream s = {});
// dyp[M, D] = topk_w · dout[token]; dtopk_w[N, K] = dout[n] · yp[row(n, k)] (both written).
void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& plan, Stream s = {});

// A shared expert (DeepSeekMoE's always-on MLP: gate/up [Fs, D], down [D, Fs]); all three undefined: none.
struct SharedExpert {
  Tensor gate, up, down;
  bool defined() const { return gate.defined(); }
};

// The checks common to the one-call expert ops (moe_experts_grouped here, moe_experts_small in
// ops/decode.h): out, x [N, D] f32; topk_idx [N, K] I32; topk_w [N, K] f32; E ≥ 1 experts with gate/up
// [F, D], down [D, F]; a shared expert complete or absent; one device (out and topk_w may be undefined:
// not checked). Returns F.
int64_t check_expert_call(const char* op, const Tensor& out, const Tensor& x, const Tensor& topk_idx,
                          const Tensor& topk_w, const std::vector<Tensor>& gate,
                          const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                          const SharedExpert& shared);

// The routed experts of many tokens in one call, for inference, with the shared expert folded in:
//   out[n] = Σ_k topk_w[n, k] · down_e(silu(gate_e · x[n]) ⊙ (up_e · x[n]))  (+ the same of the shared
//            expert, weight 1, when given),  e = topk_idx[n, k].
// out, x: [N, D] f32; topk_idx: [N, K] I32; topk_w: [N, K] f32; gate[e], up[e]: [F, D]; down[e]: [D, F]. On
// the CPU it is the plan-based ops above (the reference). On the GPU (bf16 experts,
// moe_experts_grouped_applies) the plan is built on the device (no device→host copy, no host wait), the
// shared expert is one more expert that every token takes, the permuted rows and the SwiGLU output are bf16,
// SwiGLU runs in the gate/up product's epilogue.
void moe_experts_grouped(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                         const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                         const std::vector<Tensor>& down, const SharedExpert& shared = {});
// Whether the GPU version takes these operands: x f32 on CUDA with D % 8 == 0, every expert matrix (the
// shared one's too, which must have the routed experts' shape) bf16, not block-scaled, 16-byte aligned,
// F % 8 == 0, at most 1023 experts. Always true on the CPU.
bool moe_experts_grouped_applies(const Tensor& x, const std::vector<Tensor>& gate,
                                 const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                                 const SharedExpert& shared = {});

}  // namespace dseek::ops
