// train_bwd.cu — backward ops of a training step on the GPU (issue 6): the MoE's un-permutation and
// permutation backward (spec/model.md §4.3), the router's backward through the chosen gate weights (§4.2)
// and the sequence-wise balance loss with its gradient (§4.4), the embedding's backward, and the attention
// backward from saved softmax probabilities (§2.2, the naive training path; its per-head products through
// cuBLASLt, f32). Activations f32 or bf16 where
// the op is elementwise, f32 for the attention; every sum runs in a fixed order (no floating-point atomics),
// so a step gives the same bits every time on the same device, as the trainer's exact resume needs. The
// arithmetic follows the CPU twins (ops/cpu/), which the tests compare against (tests/cuda/cuda_ops_test).
#include <algorithm>
#include <numeric>

#include "core/device.h"
#include "ops/attention.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

// grid N: dx[n] = Σ_k dxp[row[n·K + k]], k ascending.
template <typename T>
__global__ void permute_bwd_kernel(T* dx, const T* dxp, const int64_t* row, int64_t K, int64_t D) {
  const int64_t n = blockIdx.x;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc += ld(dxp[row[n * K + k] * D + i]);
    dx[n * D + i] = st<T>(acc);
  }
}

// grid N: dx[n] += Σ_k (a[row[n·K + k]] + b[row[n·K + k]]), k ascending (the CPU's order: the rows'
// sums first, then the tokens' sums, then into dx); b may be null (the rows of a alone).
template <typename T>
__global__ void permute_bwd_add_kernel(T* dx, const T* a, const T* b, const int64_t* row, int64_t K,
                                       int64_t D) {
  const int64_t n = blockIdx.x;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = row[n * K + k] * D + i;
      acc +=
          b ? ld(st<T>(ld(a[r]) + ld(b[r]))) : ld(a[r]);  // the row's sum in T, as the CPU's axpy leaves it
    }
    dx[n * D + i] = st<T>(ld(dx[n * D + i]) + ld(st<T>(acc)));
  }
}

// The same with a warp per token and eight elements per lane access (D % 8 == 0, rows 16-byte aligned):
// each element's sum in the same order, so the same bits. 8 tokens per 256-thread block.
template <typename T>
__global__ void permute_bwd_add_vec_kernel(T* dx, const T* a, const T* b, const int64_t* row, int64_t N,
                                           int64_t K, int64_t D) {
  const int64_t n = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (n >= N) return;
  for (int64_t i = (threadIdx.x & 31) * 8; i < D; i += 256) {
    float acc[8] = {};
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = row[n * K + k] * D + i;
      float va[8];
      load8(a + r, va);
      if (b) {
        float vb[8];
        load8(b + r, vb);
#pragma unroll
        for (int j = 0; j < 8; ++j) va[j] = ld(st<T>(va[j] + vb[j]));
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += va[j];
    }
    float x[8];
    load8(dx + n * D + i, x);
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = ld(st<T>(x[j] + ld(st<T>(acc[j]))));
    store8(dx + n * D + i, x);
  }
}

// grid M (permuted rows r, slot = slot[r], token n = slot / K): dyp[r] = w[slot] · dout[n] and
// dw[slot] = dout[n] · yp[r].
template <typename T, typename TY, typename TD>
__global__ void unpermute_bwd_kernel(TD* dyp, T* dw, const T* dout, const TY* yp, const T* w,
                                     const int64_t* slot, int64_t K, int64_t D) {
  const int64_t r = blockIdx.x, s = slot[r], n = s / K;
  const float g = ld(w[s]);
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = ld(dout[n * D + i]);
    dot += d * ld(yp[r * D + i]);
    dyp[r * D + i] = st<TD>(g * d);
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0) dw[s] = st<T>(dot);
}

// The same with a warp per permuted row and eight elements per lane access (D % 8 == 0, rows 16-byte
// aligned); the dot product summed lane-wise then across the warp. 8 rows per 256-thread block.
template <typename T, typename TY, typename TD>
__global__ void unpermute_bwd_vec_kernel(TD* dyp, T* dw, const T* dout, const TY* yp, const T* w,
                                         const int64_t* slot, int64_t M, int64_t K, int64_t D) {
  const int64_t r = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (r >= M) return;
  const int64_t s = slot[r], n = s / K;
  const float g = ld(w[s]);
  float dot = 0.0f;
  for (int64_t i = (threadIdx.x & 31) * 8; i < D; i += 256) {
    float d[8], y[8];
    load8(dout + n * D + i, d);
    load8(yp + r * D + i, y);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      dot += d[j] * y[j];
      d[j] *= g;
    }
    store8(dyp + r * D + i, d);
  }
  dot = warp_sum(dot);
  if ((threadIdx.x & 31) == 0) dw[s] = st<T>(dot);
}

// grid N: the router backward of token n (router.h router_bwd), the CPU twin's order of operations.
// Shared memory: ds [E] f32.
template <typename T>
__global__ void router_bwd_kernel(T* dlogits, const T* dw, const int32_t* idx, const T* scores, int64_t E,
                                  int64_t K, float rsf, bool norm, bool sigmoid) {
  extern __shared__ float ds[];
  const int64_t n = blockIdx.x;
  const T* s = scores + n * E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) ds[e] = 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float den = 0.0f, dot = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      den += ld(s[idx[n * K + k]]);
      dot += ld(dw[n * K + k]) * ld(s[idx[n * K + k]]);
    }
    den += 1e-20f;
    for (int64_t k = 0; k < K; ++k) {
      const float g = ld(dw[n * K + k]);
      ds[idx[n * K + k]] += norm ? rsf * (g / den - dot / (den * den)) : rsf * g;
    }
  }
  __syncthreads();
  T* dl = dlogits + n * E;
  if (sigmoid) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
      const float se = ld(s[e]);
      dl[e] = st<T>(ds[e] * se * (1.0f - se));
    }
    return;
  }
  float part = 0.0f;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) part += ds[e] * ld(s[e]);
  const float sum = block_sum(part);
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) dl[e] = st<T>(ld(s[e]) * (ds[e] - sum));
}

// grid N: z[t] = Σ_e scores[t, e] (f64).
template <typename T>
__global__ void row_sums_kernel(double* z, const T* scores, int64_t E) {
  const int64_t t = blockIdx.x;
  double acc = 0.0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) acc += double(ld(scores[t * E + e]));
  acc = block_sum(acc);
  if (threadIdx.x == 0) z[t] = acc;
}

// grid (B, ceil(E / 128)), thread e: f[b, e] = E/(K·L) · #{t of sequence b : e ∈ topk(t)} and
// P[b, e] = Σ_t s[t, e] / z[t] / L, t ascending (L = seq_len).
template <typename T>
__global__ void balance_fp_kernel(double* f, double* P, const T* scores, const double* z, const int32_t* idx,
                                  int64_t E, int64_t K, int64_t L) {
  const int64_t b = blockIdx.x, e = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (e >= E) return;
  double fe = 0.0, pe = 0.0;
  for (int64_t t = b * L; t < (b + 1) * L; ++t) {
    for (int64_t k = 0; k < K; ++k)
      if (idx[t * K + k] == e) fe += double(E) / double(K * L);
    pe += double(ld(scores[t * E + e])) / z[t] / double(L);
  }
  f[b * E + e] = fe;
  P[b * E + e] = pe;
}

// grid N: dlogits[t] += ∂L/∂logits[t] of the balance loss (router.h), g_e = α f[b, e] / (L·B).
template <typename T>
__global__ void balance_grad_kernel(T* dlogits, const T* scores, const double* z, const double* f, int64_t E,
                                    int64_t L, int64_t B, double alpha, bool sigmoid) {
  const int64_t t = blockIdx.x, b = t / L;
  const T* s = scores + t * E;
  const double zt = z[t], gs = alpha / double(L * B);
  double dot = 0.0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) dot += gs * f[b * E + e] * double(ld(s[e])) / zt;
  dot = block_sum(dot);
  T* dl = dlogits + t * E;
  if (sigmoid) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
      const double se = double(ld(s[e])), ds = (gs * f[b * E + e] - dot) / zt;
      dl[e] = st<T>(ld(dl[e]) + float(ds * se * (1.0 - se)));
    }
    return;
  }
  double part = 0.0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    part += (gs * f[b * E + e] - dot) / zt * double(ld(s[e]));
  const double sum = block_sum(part);
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const double se = double(ld(s[e])), ds = (gs * f[b * E + e] - dot) / zt;
    dl[e] = st<T>(ld(dl[e]) + float(se * (ds - sum)));
  }
}

// grid (U, ceil(D / 256)): row id[u] of dtable += Σ_j dout[order[j]] for j in [off[u], off[u + 1]) (the
// tokens holding that id, ascending: the CPU twin's order).
template <typename T>
__global__ void embedding_bwd_kernel(T* dtable, const T* dout, const int64_t* uid, const int64_t* off,
                                     const int64_t* order, int64_t D) {
  const int64_t u = blockIdx.x, c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= D) return;
  T* row = dtable + uid[u] * D;
  float acc = ld(row[c]);
  for (int64_t j = off[u]; j < off[u + 1]; ++j) acc += ld(dout[order[j] * D + c]);
  row[c] = st<T>(acc);
}

// grid (T, H): dS = P ⊙ (dP − Σ_s dP ⊙ P) on row (h, t) of [H, T, S], in place over dP, keys < Se.
__global__ void softmax_bwd_rows_kernel(float* dP, const float* P, int64_t T, int64_t S, int64_t Se) {
  const int64_t t = blockIdx.x, h = blockIdx.y, o = (h * T + t) * S;
  float part = 0.0f;
  for (int64_t s = threadIdx.x; s < Se; s += blockDim.x) part += dP[o + s] * P[o + s];
  const float r = block_sum(part);
  for (int64_t s = threadIdx.x; s < Se; s += blockDim.x) dP[o + s] = P[o + s] * (dP[o + s] - r);
}

// The same from bf16 probs, writing dS in bf16 (the operand of the dq/dk products) to dS.
__global__ void softmax_bwd_rows_bf16_kernel(bf16* dS, const float* dP, const bf16* P, int64_t T, int64_t S,
                                             int64_t Se) {
  const int64_t t = blockIdx.x, h = blockIdx.y, o = (h * T + t) * S;
  float part = 0.0f;
  for (int64_t s = threadIdx.x; s < Se; s += blockDim.x) part += dP[o + s] * __bfloat162float(P[o + s]);
  const float r = block_sum(part);
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
    dS[o + s] = __float2bfloat16_rn(s < Se ? __bfloat162float(P[o + s]) * (dP[o + s] - r) : 0.0f);
}

// One sequence's attention backward with bf16 operands (bf16 training): dout, q, k, v bf16 copies, probs
// bf16 [H, T, T] as the forward kept them; dP goes to the f32 scratch dp, dS to the bf16 scratch ds (both
// [H, T, T]); dq, dk, dv f32. Causal from position 0 (the varlen training form).
void attention_bwd_one_bf16(float* dq, float* dk, float* dv, const bf16* dout, const bf16* q, const bf16* k,
                            const bf16* v, const bf16* probs, float* dp, bf16* ds, int64_t T, int64_t H,
                            int64_t Dq, int64_t Dv, double scale) {
  // dv[s, h] = Σ_t P[h, t, s] · dout[t, h]   (per head h: [T, T]ᵀ · [T, Dv])
  matmul_strided_batched_bf16(dv, Dv, H * Dv, {probs, T * T, 1, T}, {dout, Dv, H * Dv, 1}, T, Dv, T, H, 1.0f);
  // dP[h, t, s] = dout[t, h] · v[s, h]       ([T, Dv] · [Dv, T])
  matmul_strided_batched_bf16(dp, T * T, T, {dout, Dv, H * Dv, 1}, {v, Dv, 1, H * Dv}, T, T, Dv, H, 1.0f);
  softmax_bwd_rows_bf16_kernel<<<dim3(unsigned(T), unsigned(H)), 256>>>(ds, dp, probs, T, T, T);
  DSEEK_CUDA_LAUNCH_CHECK("attention_bwd (softmax)");
  // dq[t, h] = scale · Σ_s dS[h, t, s] · k[s, h]   ([T, T] · [T, Dq])
  matmul_strided_batched_bf16(dq, Dq, H * Dq, {ds, T * T, T, 1}, {k, Dq, H * Dq, 1}, T, Dq, T, H,
                              float(scale));
  // dk[s, h] = scale · Σ_t dS[h, t, s] · q[t, h]   ([T, T]ᵀ · [T, Dq])
  matmul_strided_batched_bf16(dk, Dq, H * Dq, {ds, T * T, 1, T}, {q, Dq, H * Dq, 1}, T, Dq, T, H,
                              float(scale));
}

// One sequence's attention backward (attention.h attention_bwd) from probs [H, T, S] (row stride S).
// Keys ≥ Se = q_pos0 + T are never seen: their dk/dv rows are zero.
void attention_bwd_one(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                       const float* v, const float* probs, int64_t T, int64_t S, int64_t H, int64_t Dq,
                       int64_t Dv, double scale, int64_t q_pos0) {
  const int64_t Se = std::min(S, q_pos0 + T);
  if (Se < S) {
    device_memset(dk + Se * H * Dq, 0, size_t((S - Se) * H * Dq) * sizeof(float));
    device_memset(dv + Se * H * Dv, 0, size_t((S - Se) * H * Dv) * sizeof(float));
  }
  if (T == 0) return;
  // dv[s, h] = Σ_t P[h, t, s] · dout[t, h]   (per head h: [Se, T] · [T, Dv])
  matmul_strided_batched(dv, Dv, H * Dv, {probs, T * S, 1, S}, {dout, Dv, H * Dv, 1}, Se, Dv, T, H, 1.0f);
  // dP[h, t, s] = dout[t, h] · v[s, h]       ([T, Dv] · [Dv, Se])
  Tensor dP = Tensor::empty({H, T, S}, DType::F32, Device::CUDA);  // dP: [H, T, S], columns < Se used
  float* dp = dP.data<float>();
  matmul_strided_batched(dp, T * S, S, {dout, Dv, H * Dv, 1}, {v, Dv, 1, H * Dv}, T, Se, Dv, H, 1.0f);
  softmax_bwd_rows_kernel<<<dim3(unsigned(T), unsigned(H)), 256>>>(dp, probs, T, S, Se);
  DSEEK_CUDA_LAUNCH_CHECK("attention_bwd (softmax)");
  // dq[t, h] = scale · Σ_s dS[h, t, s] · k[s, h]   ([T, Se] · [Se, Dq])
  matmul_strided_batched(dq, Dq, H * Dq, {dp, T * S, S, 1}, {k, Dq, H * Dq, 1}, T, Dq, Se, H, float(scale));
  // dk[s, h] = scale · Σ_t dS[h, t, s] · q[t, h]   ([Se, T] · [T, Dq])
  matmul_strided_batched(dk, Dq, H * Dq, {dp, T * S, 1, S}, {q, Dq, H * Dq, 1}, Se, Dq, T, H, float(scale));
}

}  // namespace

void moe_permute_bwd_add(Tensor dx, const Tensor& dxa, const Tensor& dxb, const MoePlan& p) {
  const int64_t D = dxa.size(1);
  if (p.tokens == 0) return;
  Tensor keep;
  const int64_t* row = plan_rows(p, keep);
  const void* bp = dxb.defined() ? dxb.raw() : nullptr;
  if (dx.dtype() == DType::F32 && rows_by_8(D, {dx.raw(), dxa.raw(), bp})) {
    permute_bwd_add_vec_kernel<float><<<unsigned((p.tokens + 7) / 8), 256>>>(
        dx.data<float>(), dxa.data<float>(), static_cast<const float*>(bp), row, p.tokens, p.top_k, D);
    DSEEK_CUDA_LAUNCH_CHECK("moe_permute_bwd_add");
    return;
  }
  with_act(dx.dtype(), "moe_permute_bwd_add", [&](auto t) {
    using T = decltype(t);
    permute_bwd_add_kernel<<<unsigned(p.tokens), 256>>>(
        static_cast<T*>(dx.raw()), static_cast<const T*>(dxa.raw()),
        dxb.defined() ? static_cast<const T*>(dxb.raw()) : nullptr, row, p.top_k, D);
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_permute_bwd_add");
}

void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& p) {
  const int64_t D = dxp.size(1);
  if (p.tokens == 0) return;
  Tensor keep;
  const int64_t* row = plan_rows(p, keep);
  with_act(dx.dtype(), "moe_permute_bwd", [&](auto t) {
    using T = decltype(t);
    permute_bwd_kernel<<<unsigned(p.tokens), 256>>>(static_cast<T*>(dx.raw()),
                                                    static_cast<const T*>(dxp.raw()), row, p.top_k, D);
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_permute_bwd");
}

void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& p) {
  const int64_t M = p.tokens * p.top_k, D = yp.size(1);
  if (M == 0) return;
  Tensor keep;
  const int64_t* slot = plan_slots(p, keep);
  // T: dout, the weights and their gradient; TY: yp; TD: dyp (bf16 ones: the experts' operands)
  if (dout.dtype() == DType::F32 && yp.dtype() == DType::BF16 && dyp.dtype() == DType::BF16 &&
      rows_by_8(D, {dout.raw(), yp.raw(), dyp.raw()})) {
    unpermute_bwd_vec_kernel<float, bf16, bf16><<<unsigned((M + 7) / 8), 256>>>(
        static_cast<bf16*>(dyp.raw()), dtopk_w.data<float>(), dout.data<float>(),
        static_cast<const bf16*>(yp.raw()), topk_w.data<float>(), slot, M, p.top_k, D);
    DSEEK_CUDA_LAUNCH_CHECK("moe_unpermute_bwd");
    return;
  }
  with_act(dout.dtype(), "moe_unpermute_bwd", [&](auto t) {
    with_act(yp.dtype(), "moe_unpermute_bwd", [&](auto ty) {
      with_act(dyp.dtype(), "moe_unpermute_bwd", [&](auto td) {
        using T = decltype(t);
        using TY = decltype(ty);
        using TD = decltype(td);
        unpermute_bwd_kernel<<<unsigned(M), 256>>>(
            static_cast<TD*>(dyp.raw()), static_cast<T*>(dtopk_w.raw()), static_cast<const T*>(dout.raw()),
            static_cast<const TY*>(yp.raw()), static_cast<const T*>(topk_w.raw()), slot, p.top_k, D);
      });
    });
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_unpermute_bwd");
}

void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p) {
  const int64_t N = scores.size(0), E = scores.size(1);
  if (N == 0) return;
  with_act(scores.dtype(), "router_bwd", [&](auto t) {
    using T = decltype(t);
    router_bwd_kernel<<<unsigned(N), 256, size_t(E) * sizeof(float)>>>(
        static_cast<T*>(dlogits.raw()), static_cast<const T*>(dtopk_w.raw()), topk_idx.data<int32_t>(),
        static_cast<const T*>(scores.raw()), E, p.top_k, float(p.routed_scaling_factor), p.norm_topk_prob,
        p.scoring == ScoringFunc::Sigmoid);
  });
  DSEEK_CUDA_LAUNCH_CHECK("router_bwd");
}

double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p) {
  const int64_t N = scores.size(0), E = scores.size(1), K = p.top_k, B = N / seq_len;
  if (B == 0) return 0.0;
  Tensor z = Tensor::empty({N}, DType::F64, Device::CUDA),
         f = Tensor::empty({B, E}, DType::F64, Device::CUDA),
         P = Tensor::empty({B, E}, DType::F64, Device::CUDA);  // z: [N]; f, P: [B, E]
  with_act(scores.dtype(), "router_balance_loss", [&](auto t) {
    using T = decltype(t);
    const T* s = static_cast<const T*>(scores.raw());
    row_sums_kernel<<<unsigned(N), 256>>>(z.data<double>(), s, E);
    balance_fp_kernel<<<dim3(unsigned(B), unsigned((E + 127) / 128)), 128>>>(
        f.data<double>(), P.data<double>(), s, z.data<double>(), topk_idx.data<int32_t>(), E, K, seq_len);
    if (dlogits.defined())
      balance_grad_kernel<<<unsigned(B * seq_len), 256>>>(static_cast<T*>(dlogits.raw()), s, z.data<double>(),
                                                          f.data<double>(), E, seq_len, B, alpha,
                                                          p.scoring == ScoringFunc::Sigmoid);
  });
  DSEEK_CUDA_LAUNCH_CHECK("router_balance_loss");
  const Tensor fh = f.to(Device::CPU), Ph = P.to(Device::CPU);
  double loss = 0.0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < E; ++e)
      loss += alpha * fh.data<double>()[b * E + e] * Ph.data<double>()[b * E + e] / double(B);
  return loss;
}

void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout) {
  const int64_t N = ids.size(0), V = dtable.size(0), D = dtable.size(1);
  if (N == 0) return;
  // The tokens grouped by id on the host (a stable counting sort: ascending token order within an id); ids
  // already there cost no wait for the device.
  const Tensor hid = ids.device() == Device::CPU ? ids : ids.to(Device::CPU);
  const int64_t* id = hid.data<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    DSEEK_CHECK(id[n] >= 0 && id[n] < V, "token id ", id[n], " is outside the vocabulary (", V, ")");
  std::vector<int64_t> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return id[a] < id[b]; });
  std::vector<int64_t> uid, off;
  for (int64_t j = 0; j < N; ++j)
    if (j == 0 || id[order[size_t(j)]] != id[order[size_t(j - 1)]]) {
      uid.push_back(id[order[size_t(j)]]);
      off.push_back(j);
    }
  off.push_back(N);
  const Tensor du = upload_i64(uid), doff = upload_i64(off), dord = upload_i64(order);
  with_act(dtable.dtype(), "embedding_bwd", [&](auto t) {
    using T = decltype(t);
    embedding_bwd_kernel<<<dim3(unsigned(uid.size()), unsigned((D + 255) / 256)), 256>>>(
        static_cast<T*>(dtable.raw()), static_cast<const T*>(dout.raw()), du.data<int64_t>(),
        doff.data<int64_t>(), dord.data<int64_t>(), D);
  });
  DSEEK_CUDA_LAUNCH_CHECK("embedding_bwd");
}

void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0) {
  DSEEK_CHECK(q.dtype() == DType::F32, "attention_bwd: the GPU version takes f32 activations, not ",
              dtype_name(q.dtype()));
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2), S = k.size(0), Dv = v.size(2);
  attention_bwd_one(dq.data<float>(), dk.data<float>(), dv.data<float>(), dout.data<float>(), q.data<float>(),
                    k.data<float>(), v.data<float>(), probs.data<float>(), T, S, H, Dq, Dv, scale, q_pos0);
}

void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu, double scale) {
  DSEEK_CHECK(q.dtype() == DType::F32, "attention_bwd_varlen: the GPU version takes f32 activations, not ",
              dtype_name(q.dtype()));
  const int64_t H = q.size(1), Dq = q.size(2), Dv = v.size(2);
  const std::vector<int64_t> poff = varlen_probs_offsets(cu, H);
  if (probs.dtype() == DType::BF16) {  // bf16 training: bf16 operands, f32 gradients
    const Tensor ob = dout.to(DType::BF16), qb = q.to(DType::BF16), kb = k.to(DType::BF16),
                 vb = v.to(DType::BF16);
    int64_t Lmax = 0;
    for (size_t b = 0; b + 1 < cu.size(); ++b) Lmax = std::max(Lmax, cu[b + 1] - cu[b]);
    // dp, ds: one sequence's [H, L, L] scratch, f32 and bf16
    Tensor dp = Tensor::empty({H * Lmax * Lmax}, DType::F32, Device::CUDA),
           ds = Tensor::empty({H * Lmax * Lmax}, DType::BF16, Device::CUDA);
    auto bp = [](const Tensor& t) { return static_cast<const bf16*>(t.raw()); };
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      const int64_t r0 = cu[b], L = cu[b + 1] - cu[b];
      if (L == 0) continue;
      attention_bwd_one_bf16(dq.data<float>() + r0 * H * Dq, dk.data<float>() + r0 * H * Dq,
                             dv.data<float>() + r0 * H * Dv, bp(ob) + r0 * H * Dv, bp(qb) + r0 * H * Dq,
                             bp(kb) + r0 * H * Dq, bp(vb) + r0 * H * Dv, bp(probs) + poff[b],
                             dp.data<float>(), static_cast<bf16*>(ds.raw()), L, H, Dq, Dv, scale);
    }
    return;
  }
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t r0 = cu[b], L = cu[b + 1] - cu[b];
    if (L == 0) continue;
    attention_bwd_one(
        dq.data<float>() + r0 * H * Dq, dk.data<float>() + r0 * H * Dq, dv.data<float>() + r0 * H * Dv,
        dout.data<float>() + r0 * H * Dv, q.data<float>() + r0 * H * Dq, k.data<float>() + r0 * H * Dq,
        v.data<float>() + r0 * H * Dv, probs.data<float>() + poff[b], L, L, H, Dq, Dv, scale, 0);
  }
}

}  // namespace dseek::ops::cuda
