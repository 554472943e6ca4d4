// attention.cu — causal attention on the GPU (spec/model.md §2.2, §2.5): the naive multi-head form
// (one block per query row and head: scores in shared memory, f32 softmax, weighted sum of values),
// its varlen batch form, and the absorbed MLA form over the latent cache rows. These are the correctness
// baseline the flash-style and decode kernels are checked against. With f32 activations and the
// probabilities kept (the training forward) the scores and the weighted sum are per-head cuBLASLt strided
// batches around a causal softmax kernel.
#include <vector>

#include "core/device.h"
#include "ops/attention.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

// One (query row, head): q at qrow (Dq values), keys/values at rows key0 .. key0 + nvis − 1 with row
// strides ldk/ldv (elements); output Dv values at orow; probabilities (optional) to prow[0 .. ncols).
template <typename T>
__device__ void attend_row(T* orow, float* prow, int64_t ncols, const T* qrow, const T* k, int64_t ldk,
                           const T* v, int64_t ldv, int64_t nvis, int Dq, int Dv, float scale, float* sc,
                           float* qs) {
  for (int i = threadIdx.x; i < Dq; i += blockDim.x) qs[i] = ld(qrow[i]);
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < nvis; s += blockDim.x) {
    const T* kr = k + s * ldk;
    float d = 0;
    for (int i = 0; i < Dq; ++i) d += qs[i] * ld(kr[i]);
    sc[s] = d * scale;
    mx = fmaxf(mx, sc[s]);
  }
  mx = block_max(mx);
  float sum = 0;
  for (int64_t s = threadIdx.x; s < nvis; s += blockDim.x) {
    sc[s] = __expf(sc[s] - mx);
    sum += sc[s];
  }
  sum = block_sum(sum);
  const float inv = 1.0f / sum;
  for (int64_t s = threadIdx.x; s < nvis; s += blockDim.x) sc[s] *= inv;
  if (prow)
    for (int64_t s = threadIdx.x; s < ncols; s += blockDim.x) prow[s] = s < nvis ? sc[s] : 0.0f;
  __syncthreads();
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float acc = 0;
    for (int64_t s = 0; s < nvis; ++s) acc += sc[s] * ld(v[s * ldv + d]);
    orow[d] = st<T>(acc);
  }
}

template <typename T>
__global__ void attention_kernel(T* out, float* probs, const T* q, const T* k, const T* v, int64_t T_,
                                 int64_t H, int Dq, int Dv, int64_t S, float scale, int64_t q_pos0) {
  extern __shared__ float smem[];
  const int64_t t = blockIdx.x, h = blockIdx.y;
  float* qs = smem;
  float* sc = smem + Dq;
  attend_row(out + (t * H + h) * Dv, probs ? probs + (h * T_ + t) * S : nullptr, S, q + (t * H + h) * Dq,
             k + h * Dq, H * Dq, v + h * Dv, H * Dv, q_pos0 + t + 1, Dq, Dv, scale, sc, qs);
}

template <typename T>
__global__ void varlen_kernel(T* out, float* probs, const T* q, const T* k, const T* v, const int64_t* cu,
                              const int64_t* poff, int64_t B, int64_t H, int Dq, int Dv, float scale) {
  extern __shared__ float smem[];
  const int64_t n = blockIdx.x, h = blockIdx.y;
  int64_t lo = 0, hi = B;  // the sequence b with cu[b] <= n < cu[b + 1]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= n) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t b = lo, r0 = cu[b], L = cu[b + 1] - r0, t = n - r0;
  float* qs = smem;
  float* sc = smem + Dq;
  attend_row(out + (n * H + h) * Dv, probs ? probs + poff[b] + (h * L + t) * L : nullptr, L,
             q + (n * H + h) * Dq, k + r0 * H * Dq + h * Dq, H * Dq, v + r0 * H * Dv + h * Dv, H * Dv, t + 1,
             Dq, Dv, scale, sc, qs);
}

template <typename T>
__global__ void absorbed_kernel(T* o_lat, const T* q, const T* rows, int64_t H, int W, int C, float scale,
                                int64_t q_pos0) {
  extern __shared__ float smem[];
  const int64_t t = blockIdx.x, h = blockIdx.y;
  float* qs = smem;
  float* sc = smem + W;
  attend_row(o_lat + (t * H + h) * C, static_cast<float*>(nullptr), 0, q + (t * H + h) * W, rows, W, rows, W,
             q_pos0 + t + 1, W, C, scale, sc, qs);
}

size_t smem_for(int64_t keys, int64_t qdim) {
  const size_t b = size_t(keys + qdim) * sizeof(float);
  DSEEK_CHECK(b <= 200 * 1024, "attention (CUDA): ", keys, " keys exceed the shared-memory score buffer");
  return b;
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
                     "attention: shared memory");
}

// Probabilities are kept in f32 on the GPU; the op's probs tensor may be bf16, then they are converted.
Tensor probs_f32(const Tensor& probs) {
  if (!probs.defined() || probs.dtype() == DType::F32) return probs;
  return Tensor::empty(probs.shape(), DType::F32, Device::CUDA);
}

}  // namespace

namespace {

// grid (T, H): row (h, t) of [H, T, S] scores (row stride S) becomes the causal softmax over keys
// 0 ..= q_pos0 + t, zeros after.
// Written to dst (the same [H, T, S] layout; P itself when O is float, a bf16 copy otherwise).
template <typename O>
__global__ void causal_softmax_rows_kernel(float* P, O* dst, int64_t T, int64_t S, int64_t q_pos0) {
  const int64_t t = blockIdx.x, h = blockIdx.y, nvis = std::min<int64_t>(S, q_pos0 + t + 1);
  float* row = P + (h * T + t) * S;
  O* out = dst + (h * T + t) * S;
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < nvis; s += blockDim.x) mx = fmaxf(mx, row[s]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int64_t s = threadIdx.x; s < nvis; s += blockDim.x) {
    const float e = expf(row[s] - mx);
    row[s] = e;
    sum += e;
  }
  sum = block_sum(sum);
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x) out[s] = st<O>(s < nvis ? row[s] / sum : 0.0f);
}

// The training forward of one sequence (f32, probabilities kept): scores per head through cuBLASLt
// strided batches, the causal softmax, then probs · v. probs: [H, T, S].
void attention_fwd_gemm(float* out, float* probs, const float* q, const float* k, const float* v, int64_t T,
                        int64_t S, int64_t H, int64_t Dq, int64_t Dv, double scale, int64_t q_pos0) {
  // probs[h, t, s] = scale · q[t, h] · k[s, h]   ([T, Dq] · [Dq, S] per head)
  matmul_strided_batched(probs, T * S, S, {q, Dq, H * Dq, 1}, {k, Dq, 1, H * Dq}, T, S, Dq, H, float(scale));
  causal_softmax_rows_kernel<float><<<dim3(unsigned(T), unsigned(H)), 256>>>(probs, probs, T, S, q_pos0);
  DSEEK_CUDA_LAUNCH_CHECK("attention_fwd (softmax)");
  // out[t, h] = Σ_s probs[h, t, s] · v[s, h]   ([T, S] · [S, Dv] per head)
  matmul_strided_batched(out, Dv, H * Dv, {probs, T * S, S, 1}, {v, Dv, H * Dv, 1}, T, Dv, S, H, 1.0f);
}

// The same with bf16 operands on the tensor cores (bf16 training, probs kept in bf16): q, k, v are bf16
// copies, the scores go to the f32 scratch `scores` [H, T, S], the softmax is f32 and rounds the
// probabilities to bf16 as it writes them (the operand of probs · v and of the backward).
void attention_fwd_gemm_bf16(float* out, bf16* probs, float* scores, const bf16* q, const bf16* k,
                             const bf16* v, int64_t T, int64_t S, int64_t H, int64_t Dq, int64_t Dv,
                             double scale, int64_t q_pos0) {
  // scores[h, t, s] = scale · q[t, h] · k[s, h]   ([T, Dq] · [Dq, S] per head)
  matmul_strided_batched_bf16(scores, T * S, S, {q, Dq, H * Dq, 1}, {k, Dq, 1, H * Dq}, T, S, Dq, H,
                              float(scale));
  causal_softmax_rows_kernel<bf16><<<dim3(unsigned(T), unsigned(H)), 256>>>(scores, probs, T, S, q_pos0);
  DSEEK_CUDA_LAUNCH_CHECK("attention_fwd (softmax)");
  // out[t, h] = Σ_s probs[h, t, s] · v[s, h]   ([T, S] · [S, Dv] per head)
  matmul_strided_batched_bf16(out, Dv, H * Dv, {probs, T * S, S, 1}, {v, Dv, H * Dv, 1}, T, Dv, S, H, 1.0f);
}

}  // namespace

void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0) {
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2), S = k.size(0), Dv = v.size(2);
  if (T == 0) return;
  if (q.dtype() == DType::F32 && probs.defined() && probs.dtype() == DType::F32)  // the training forward
    return attention_fwd_gemm(out.data<float>(), probs.data<float>(), q.data<float>(), k.data<float>(),
                              v.data<float>(), T, S, H, Dq, Dv, scale, q_pos0);
  Tensor pf = probs_f32(probs);
  const size_t sm = smem_for(q_pos0 + T, Dq);
  with_act(q.dtype(), "attention_fwd", [&](auto t) {
    using Tt = decltype(t);
    set_smem(attention_kernel<Tt>, sm);
    attention_kernel<<<dim3(unsigned(T), unsigned(H)), 128, sm>>>(
        static_cast<Tt*>(out.raw()), pf.defined() ? pf.data<float>() : nullptr,
        static_cast<const Tt*>(q.raw()), static_cast<const Tt*>(k.raw()), static_cast<const Tt*>(v.raw()), T,
        H, int(Dq), int(Dv), S, float(scale), q_pos0);
  });
  DSEEK_CUDA_LAUNCH_CHECK("attention_fwd");
  if (pf.defined() && pf.raw() != probs.raw()) probs.copy_from(pf);
}

void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu, double scale) {
  const int64_t N = q.size(0), H = q.size(1), Dq = q.size(2), Dv = v.size(2), B = int64_t(cu.size()) - 1;
  if (N == 0) return;
  const std::vector<int64_t> poff = varlen_probs_offsets(cu, H);
  if (q.dtype() == DType::F32 && probs.defined() && probs.dtype() == DType::BF16) {  // bf16 training forward
    const Tensor qb = q.to(DType::BF16), kb = k.to(DType::BF16), vb = v.to(DType::BF16);
    int64_t Lmax = 0;
    for (int64_t b = 0; b < B; ++b) Lmax = std::max(Lmax, cu[size_t(b) + 1] - cu[size_t(b)]);
    Tensor scores = Tensor::empty({H * Lmax * Lmax}, DType::F32, Device::CUDA);  // one sequence's [H, L, L]
    auto* pb = static_cast<bf16*>(probs.raw());
    const auto* qp = static_cast<const bf16*>(qb.raw());
    const auto* kp = static_cast<const bf16*>(kb.raw());
    const auto* vp = static_cast<const bf16*>(vb.raw());
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r0 = cu[size_t(b)], L = cu[size_t(b) + 1] - r0;
      if (L == 0) continue;
      attention_fwd_gemm_bf16(out.data<float>() + r0 * H * Dv, pb + poff[size_t(b)], scores.data<float>(),
                              qp + r0 * H * Dq, kp + r0 * H * Dq, vp + r0 * H * Dv, L, L, H, Dq, Dv, scale,
                              0);
    }
    return;
  }
  if (q.dtype() == DType::F32 && probs.defined() && probs.dtype() == DType::F32) {  // the training forward
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r0 = cu[size_t(b)], L = cu[size_t(b) + 1] - r0;
      if (L == 0) continue;
      attention_fwd_gemm(out.data<float>() + r0 * H * Dv, probs.data<float>() + poff[size_t(b)],
                         q.data<float>() + r0 * H * Dq, k.data<float>() + r0 * H * Dq,
                         v.data<float>() + r0 * H * Dv, L, L, H, Dq, Dv, scale, 0);
    }
    return;
  }
  int64_t Lmax = 0;
  for (int64_t b = 0; b < B; ++b) Lmax = std::max(Lmax, cu[size_t(b) + 1] - cu[size_t(b)]);
  Tensor dcu = Tensor::empty({B + 1}, DType::I64, Device::CUDA),
         dpo = Tensor::empty({B + 1}, DType::I64, Device::CUDA);
  copy_bytes(dcu.raw(), Device::CUDA, cu.data(), Device::CPU, cu.size() * 8);
  copy_bytes(dpo.raw(), Device::CUDA, poff.data(), Device::CPU, poff.size() * 8);
  Tensor pf = probs_f32(probs);
  const size_t sm = smem_for(Lmax, Dq);
  with_act(q.dtype(), "attention_fwd_varlen", [&](auto t) {
    using Tt = decltype(t);
    set_smem(varlen_kernel<Tt>, sm);
    varlen_kernel<<<dim3(unsigned(N), unsigned(H)), 128, sm>>>(
        static_cast<Tt*>(out.raw()), pf.defined() ? pf.data<float>() : nullptr,
        static_cast<const Tt*>(q.raw()), static_cast<const Tt*>(k.raw()), static_cast<const Tt*>(v.raw()),
        dcu.data<int64_t>(), dpo.data<int64_t>(), B, H, int(Dq), int(Dv), float(scale));
  });
  DSEEK_CUDA_LAUNCH_CHECK("attention_fwd_varlen");
  if (pf.defined() && pf.raw() != probs.raw()) probs.copy_from(pf);
}

void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0) {
  const int64_t T = q.size(0), H = q.size(1), W = q.size(2), C = o_lat.size(2);
  if (T == 0) return;
  const size_t sm = smem_for(q_pos0 + T, W);
  with_act(q.dtype(), "mla_absorbed_fwd", [&](auto t) {
    using Tt = decltype(t);
    set_smem(absorbed_kernel<Tt>, sm);
    absorbed_kernel<<<dim3(unsigned(T), unsigned(H)), 128, sm>>>(
        static_cast<Tt*>(o_lat.raw()), static_cast<const Tt*>(q.raw()), static_cast<const Tt*>(rows.raw()), H,
        int(W), int(C), float(scale), q_pos0);
  });
  DSEEK_CUDA_LAUNCH_CHECK("mla_absorbed_fwd");
}

}  // namespace dseek::ops::cuda
