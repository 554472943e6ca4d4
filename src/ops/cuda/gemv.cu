// gemv.cu — decode-sized products on the GPU: y[N, O] = x[N, I] · W[O, I]ᵀ for N ≤ 8 rows of f32
// activations and bf16 weights. Bandwidth-bound: each weight row is read once with 16-byte loads by one
// warp, products accumulate in f32 for all N rows at once, and the activations are never rounded to
// bf16 (so decoding matches the CPU's bf16-weight path).
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemv.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kWarps = 8;

// vec: I % 8 == 0 and both bases 16-byte aligned, so every row start is too.
template <int NB>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_bf16_kernel(float* y, const float* x, const bf16* w, int64_t I, int64_t O, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t o = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  if (o >= O) return;
  const bf16* wr = w + o * I;
  float acc[NB];
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] = 0.0f;
  if (vec) {
    for (int64_t i = int64_t(lane) * 8; i < I; i += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(wr + i);
      const bf16* wv = reinterpret_cast<const bf16*>(&raw);
      float wf[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) wf[j] = __bfloat162float(wv[j]);
#pragma unroll
      for (int n = 0; n < NB; ++n) {
        const float4 a = *reinterpret_cast<const float4*>(x + n * I + i);
        const float4 b = *reinterpret_cast<const float4*>(x + n * I + i + 4);
        acc[n] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y +
                  wf[6] * b.z + wf[7] * b.w;
      }
    }
  } else {
    for (int64_t i = lane; i < I; i += 32) {
      const float wf = __bfloat162float(wr[i]);
#pragma unroll
      for (int n = 0; n < NB; ++n) acc[n] += wf * x[n * I + i];
    }
  }
#pragma unroll
  for (int n = 0; n < NB; ++n) {
    const float s = warp_sum(acc[n]);
    if (lane == 0) y[n * O + o] = s;
  }
}

template <int NB>
void launch(float* y, const float* x, const bf16* w, int64_t I, int64_t O, bool vec) {
  gemv_bf16_kernel<NB><<<unsigned((O + kWarps - 1) / kWarps), kWarps * 32>>>(y, x, w, I, O, vec);
}

}  // namespace

bool gemv_applies(const Tensor& out, const Tensor& x, const Tensor& w) {
  return x.dtype() == DType::F32 && w.dtype() == DType::BF16 && out.dtype() == DType::F32 && x.size(0) >= 1 &&
         x.size(0) <= 8;
}

void gemv_bf16(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  float* y = out.data<float>();
  const float* xp = x.data<float>();
  const bf16* wp = static_cast<const bf16*>(w.raw());
  const bool vec = I % 8 == 0 && (reinterpret_cast<uintptr_t>(xp) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(wp) & 15) == 0;
  with_rows(N, "gemv_bf16", [&](auto nb) {
    using NB = decltype(nb);
    launch<NB::value>(y, xp, wp, I, O, vec);
  });

  DSEEK_CUDA_LAUNCH_CHECK("linear (bf16 gemv)");
}

}  // namespace dseek::ops::cuda
