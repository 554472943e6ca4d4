// fp8.cu — products with fp8 e4m3 weights kept in fp8 on the GPU, dequantized on the fly with their
// 2-D block scales (spec/model.md §6.4: value = fp8 · scale[r / br][c / bc]). Decode sizes (≤ 8 rows) read
// the fp8 bytes directly in a GEMV; larger products dequantize row chunks of the weight to f32 scratch and
// run an f32 cuBLASLt product, so the weights enter exactly.
#include <cuda_fp8.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/fp8.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ float fp8v(uint8_t b) {
  __nv_fp8_e4m3 v;
  v.__x = b;
  return float(v);
}

template <int NB>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_fp8_kernel(float* y, const float* x, const uint8_t* w, const float* scale, int64_t I, int64_t O,
                    int64_t SC, int64_t br, int64_t bc, int64_t row0, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t o = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  if (o >= O) return;
  const uint8_t* wr = w + o * I;
  const float* srow = scale + ((row0 + o) / br) * SC;
  float acc[NB];
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] = 0.0f;
  if (vec) {  // 8 fp8 bytes per lane per step; a step never straddles a column block (bc % 8 == 0)
    for (int64_t i = int64_t(lane) * 8; i < I; i += 256) {
      const uint2 raw = *reinterpret_cast<const uint2*>(wr + i);
      const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
      const float s = srow[i / bc];
      float wf[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) wf[j] = fp8v(b[j]) * s;
#pragma unroll
      for (int n = 0; n < NB; ++n) acc[n] += dot8(wf, x + n * I + i);
    }
  } else {
    for (int64_t i = lane; i < I; i += 32) {
      const float wf = fp8v(wr[i]) * srow[i / bc];
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

__global__ void dequant_kernel(float* out, const uint8_t* w, const float* scale, int64_t R, int64_t C,
                               int64_t SC, int64_t br, int64_t bc, int64_t row0) {
  const int64_t n = R * C;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / C, c = t % C;
    out[t] = fp8v(w[t]) * scale[((row0 + r) / br) * SC + c / bc];
  }
}

template <int NB>
void launch(float* y, const float* x, const uint8_t* w, const BlockScale& q, int64_t I, int64_t O,
            int64_t row0, bool vec) {
  gemv_fp8_kernel<NB><<<unsigned((O + kWarps - 1) / kWarps), kWarps * 32>>>(
      y, x, w, q.scale.data<float>(), I, O, q.scale.size(1), q.block_rows, q.block_cols, row0, vec);
}

}  // namespace

Tensor dequantize_rows(const Tensor& w, int64_t r0, int64_t n) {
  const BlockScale& q = *w.block_scale();
  const int64_t C = w.size(1);
  Tensor out = Tensor::empty({n, C}, DType::F32, Device::CUDA);
  if (n == 0) return out;
  dequant_kernel<<<blocks_for(n * C, 256), 256>>>(
      out.data<float>(), static_cast<const uint8_t*>(w.raw()) + r0 * C, q.scale.data<float>(), n, C,
      q.scale.size(1), q.block_rows, q.block_cols, w.block_row0() + r0);
  DSEEK_CUDA_LAUNCH_CHECK("fp8 dequantize");
  return out;
}

void gemv_fp8(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  const BlockScale& q = *w.block_scale();
  const float* xp = x.data<float>();
  const uint8_t* wp = static_cast<const uint8_t*>(w.raw());
  const bool vec = I % 8 == 0 && q.block_cols % 8 == 0 && (reinterpret_cast<uintptr_t>(xp) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(wp) & 7) == 0;
  float* y = out.data<float>();
  const int64_t row0 = w.block_row0();
  with_rows(N, "gemv_fp8", [&](auto nb) {
    using NB = decltype(nb);
    launch<NB::value>(y, xp, wp, q, I, O, row0, vec);
  });

  DSEEK_CUDA_LAUNCH_CHECK("linear (fp8 gemv)");
}

}  // namespace dseek::ops::cuda
