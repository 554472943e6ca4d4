// gemv.cuh — the pieces of the decode-sized GEMV kernels (gemv.cu) that other decode kernels reuse
// (decode_latent.cu, router_small.cu): a warp's dot product of one bf16 weight row with up to 8 f32
// activation rows (its first chunks read before the dependency wait), and the normalized input of a
// product that begins with the residual add + RMSNorm before it (ops/decode.h NormedInput; spec/model.md
// §2.1 pre-norm residual blocks), built by the whole block in shared memory.
#pragma once

#include "ops/cuda/common.cuh"
#include "ops/decode.h"

namespace dseek::ops::cuda {

// 16-byte weight chunks per lane read before dep_wait (a whole 1024-wide bf16 row: chunk j of a lane is
// at column lane·8 + j·256), so under programmatic dependent launch a row's bytes are on their way while
// the previous kernel of the step finishes.
constexpr int kGemvPre = 4;

__device__ __forceinline__ void row_pre(uint4 (&pre)[kGemvPre], const bf16* wr, int64_t I, bool vec,
                                        int lane) {
  if (!vec) return;
#pragma unroll
  for (int j = 0; j < kGemvPre; ++j) {
    const int64_t i = int64_t(lane) * 8 + j * 256;
    if (i < I) pre[j] = __ldg(reinterpret_cast<const uint4*>(wr + i));
  }
}

// acc[n] += the chunk's 8 weights · x[n, i .. i + 8).
template <int NB>
__device__ __forceinline__ void dot_chunk(float* acc, const uint4& raw, const float* x, int64_t I,
                                          int64_t i) {
  float wf[8];
  load8(reinterpret_cast<const bf16*>(&raw), wf);
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] += dot8(wf, x + n * I + i);
}

// acc[n] = one lane's part of w_row · x[n] (the warp's lanes cover the row; warp_sum completes it); the
// lane's first kGemvPre chunks come from pre (row_pre), the rest are read here, in the same order. x is
// global or shared memory (16-byte aligned rows when vec).
template <int NB>
__device__ __forceinline__ void row_dot(float* acc, const uint4 (&pre)[kGemvPre], const bf16* wr,
                                        const float* x, int64_t I, bool vec, int lane) {
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] = 0.0f;
  if (vec) {
#pragma unroll
    for (int j = 0; j < kGemvPre; ++j) {
      const int64_t i = int64_t(lane) * 8 + j * 256;
      if (i < I) dot_chunk<NB>(acc, pre[j], x, I, i);
    }
#pragma unroll 4
    for (int64_t i = int64_t(lane) * 8 + kGemvPre * 256; i < I; i += 256)
      dot_chunk<NB>(acc, *reinterpret_cast<const uint4*>(wr + i), x, I, i);
  } else {
    for (int64_t i = lane; i < I; i += 32) {
      const float wf = __bfloat162float(wr[i]);
#pragma unroll
      for (int n = 0; n < NB; ++n) acc[n] += wf * x[n * I + i];
    }
  }
}

// ops/decode.h NormedInput as kernel arguments (f32 throughout): v[n] = h[n] + δ[n], x[n] = rmsnorm(v[n]) ·
// norm, δ[n] = Σ_{k<K} w[n, k] · y[n·KS + k] (+ y[n·KS + K] when KS > K); y null: δ = 0. h: [N, D],
// y: [N·KS, D], w: [N, K], norm: [D]; h_out / x_out (null: not written) [N, D].
struct NormArgs {
  const float *h = nullptr, *y = nullptr, *w = nullptr, *norm = nullptr;
  float *h_out = nullptr, *x_out = nullptr;
  int K = 0, KS = 1;
  float eps = 1e-6f;
};

// xs[r, :] = x[n0 + r] for the NB rows from n0 (xs: [NB, D] f32 in shared memory, 16-byte aligned), by
// the whole block (blockDim.x a multiple of 32, ≤ 1024; every thread must call it); `writer` writes v and
// x of those rows to h_out / x_out. The same arithmetic as the MoE slots' combine followed by
// add_rmsnorm_fwd (the weighted slots in ascending k, the shared slot added to that sum, then to h;
// f32 statistics). Ends with __syncthreads().
//
// A decode step waits on this chain, so it is built for latency: with D % 4 == 0 a thread takes 4
// consecutive columns at a time and issues the loads of h, of all the slots' rows and weights (8 slots
// per round) and of the norm's weights before it uses any of them — one memory round trip per chunk
// instead of one per slot; the norm's weights of a thread's first two chunks stay in registers.
template <int NB>
__device__ void normed_rows(float* xs, const NormArgs& a, int64_t n0, int64_t D, bool writer) {
  __shared__ float part[NB][32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = int(blockDim.x >> 5);
  const auto rstd = [&](const float* warp_sums) {  // a row's 1 / rms from its warps' sums of squares
    float t = 0.0f;
    for (int w = 0; w < nw; ++w) t += warp_sums[w];
    return rsqrtf(t / float(D) + a.eps);
  };
  constexpr int kSlotsInFlight = 8, kNormRegs = 2;
  const uintptr_t ptrs = reinterpret_cast<uintptr_t>(a.h) | reinterpret_cast<uintptr_t>(a.y) |
                         reinterpret_cast<uintptr_t>(a.norm) | reinterpret_cast<uintptr_t>(a.h_out) |
                         reinterpret_cast<uintptr_t>(a.x_out) | reinterpret_cast<uintptr_t>(xs);
  if (D % 4 == 0 && ptrs % 16 == 0) {
    const int64_t D4 = D / 4, stride = blockDim.x;
    float4 nrm[kNormRegs];
#pragma unroll
    for (int j = 0; j < kNormRegs; ++j)
      if (tid + j * stride < D4) nrm[j] = reinterpret_cast<const float4*>(a.norm)[tid + j * stride];
    float ss[NB];
#pragma unroll
    for (int r = 0; r < NB; ++r) {
      const int64_t n = n0 + r;
      const float4* hr = reinterpret_cast<const float4*>(a.h + n * D);
      const float4* yr = a.y ? reinterpret_cast<const float4*>(a.y + n * a.KS * D) : nullptr;
      const float* wr = a.w ? a.w + n * a.K : nullptr;
      ss[r] = 0.0f;
      for (int64_t i = tid; i < D4; i += stride) {
        float4 v = hr[i];
        if (yr) {
          const float4 sh = a.KS > a.K ? yr[a.K * D4 + i] : make_float4(0, 0, 0, 0);
          float4 d = make_float4(0, 0, 0, 0);
          for (int k0 = 0; k0 < a.K; k0 += kSlotsInFlight) {
            float4 yk[kSlotsInFlight];
            float wk[kSlotsInFlight];
#pragma unroll
            for (int j = 0; j < kSlotsInFlight; ++j)
              if (k0 + j < a.K) {
                yk[j] = yr[(k0 + j) * D4 + i];
                wk[j] = wr[k0 + j];
              }
#pragma unroll
            for (int j = 0; j < kSlotsInFlight; ++j)
              if (k0 + j < a.K) {
                d.x += wk[j] * yk[j].x;
                d.y += wk[j] * yk[j].y;
                d.z += wk[j] * yk[j].z;
                d.w += wk[j] * yk[j].w;
              }
          }
          if (a.KS > a.K) d = make_float4(sh.x + d.x, sh.y + d.y, sh.z + d.z, sh.w + d.w);
          v = make_float4(v.x + d.x, v.y + d.y, v.z + d.z, v.w + d.w);
        }
        reinterpret_cast<float4*>(xs + r * D)[i] = v;
        ss[r] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
      ss[r] = warp_sum(ss[r]);
      if (lane == 0) part[r][warp] = ss[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < NB; ++r) {
      const float rs = rstd(part[r]);
      const int64_t n = n0 + r;
      const auto apply = [&](int64_t i, const float4& g) {
        float4& vx = reinterpret_cast<float4*>(xs + r * D)[i];
        const float4 v = vx,
                     x = make_float4(g.x * (v.x * rs), g.y * (v.y * rs), g.z * (v.z * rs), g.w * (v.w * rs));
        vx = x;
        if (writer && a.h_out) reinterpret_cast<float4*>(a.h_out + n * D)[i] = v;
        if (writer && a.x_out) reinterpret_cast<float4*>(a.x_out + n * D)[i] = x;
      };
#pragma unroll
      for (int j = 0; j < kNormRegs; ++j)
        if (tid + j * stride < D4) apply(tid + j * stride, nrm[j]);
      for (int64_t i = tid + kNormRegs * stride; i < D4; i += stride)
        apply(i, reinterpret_cast<const float4*>(a.norm)[i]);
    }
    __syncthreads();
    return;
  }
  float ss[NB];
#pragma unroll
  for (int r = 0; r < NB; ++r) {
    const int64_t n = n0 + r;
    const float* hr = a.h + n * D;
    const float* yr = a.y ? a.y + n * a.KS * D : nullptr;
    ss[r] = 0.0f;
    for (int64_t i = tid; i < D; i += blockDim.x) {
      float v = hr[i];
      if (yr) {
        float d = 0.0f;
        for (int k = 0; k < a.K; ++k) d += a.w[n * a.K + k] * yr[k * D + i];
        if (a.KS > a.K) d = yr[a.K * D + i] + d;
        v = v + d;
      }
      xs[r * D + i] = v;
      ss[r] += v * v;
    }
    ss[r] = warp_sum(ss[r]);
    if (lane == 0) part[r][warp] = ss[r];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < NB; ++r) {
    const float rs = rstd(part[r]);
    const int64_t n = n0 + r;
    for (int64_t i = tid; i < D; i += blockDim.x) {
      const float v = xs[r * D + i], x = a.norm[i] * (v * rs);
      xs[r * D + i] = x;
      if (writer && a.h_out) a.h_out[n * D + i] = v;
      if (writer && a.x_out) a.x_out[n * D + i] = x;
    }
  }
  __syncthreads();
}

// Expert matrices by value (the kernel parameter space holds 256 pointers per table), bf16 or f32: the
// routed experts' kernels of a decode step (moe_small.cu) and the router's L2 hints (router_small.cu).
struct ExpertPtrs {
  const void* p[kMoeSmallExperts];
};

// The kernel arguments of a checked NormedInput (f32 tensors on the GPU).
inline NormArgs norm_args(const NormedInput& in) {
  NormArgs a;
  a.h = in.h.data<float>();
  a.y = in.y.defined() ? in.y.data<float>() : nullptr;
  a.w = in.w.defined() ? in.w.data<float>() : nullptr;
  a.norm = in.norm.data<float>();
  a.h_out = in.h_out.defined() ? in.h_out.data<float>() : nullptr;
  a.x_out = in.x_out.defined() ? in.x_out.data<float>() : nullptr;
  a.K = int(in.K);
  a.KS = int(in.KS);
  a.eps = float(in.eps);
  return a;
}

}  // namespace dseek::ops::cuda
