// common.cuh — helpers shared by the CUDA kernels: element loads/stores as f32 for the activation
// dtypes (f32, bf16), warp and block reductions, launch sizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/cuda/cuda_check.h"
#include "core/tensor.h"

namespace dseek::ops::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ld(float x) {
  return x;
}
__device__ __forceinline__ float ld(bf16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float ld(double x) {
  return float(x);
}
template <typename T>
__device__ __forceinline__ T st(float x);
template <>
__device__ __forceinline__ float st<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 st<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  float r = lane < int(blockDim.x >> 5) ? part[lane] : 0.0f;
  return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  float r = lane < int(blockDim.x >> 5) ? part[lane] : -INFINITY;
  return warp_max(r);
}

// (v, e) beats (w, f) in an argmax: a larger value, then the lower index; a negative index is "none",
// which loses to everything (the routers' top-k rounds, the device argmax).
template <typename I>
__device__ __forceinline__ bool beats(float v, I e, float w, I f) {
  if (e < 0) return false;
  if (f < 0) return true;
  return v > w || (v == w && e < f);
}

// Calls fn(std::integral_constant<int, NB>{}) for NB = rows, 1 ≤ rows ≤ 8 (kernels templated on the
// number of activation rows they accumulate at once).
template <typename Fn>
void with_rows(int64_t rows, const char* op, Fn&& fn) {
  switch (rows) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 3:
      return fn(std::integral_constant<int, 3>{});
    case 4:
      return fn(std::integral_constant<int, 4>{});
    case 5:
      return fn(std::integral_constant<int, 5>{});
    case 6:
      return fn(std::integral_constant<int, 6>{});
    case 7:
      return fn(std::integral_constant<int, 7>{});
    case 8:
      return fn(std::integral_constant<int, 8>{});
    default:
      fail(op, ": ", rows, " rows (at most 8)");
  }
}

inline int blocks_for(int64_t n, int threads) {
  return int(std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20));
}

// Calls fn(T*) with the tensor's pointer as float or bf16 (the activation dtypes on the GPU).
template <typename Fn>
void with_act(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32:
      fn(float{});
      return;
    case DType::BF16:
      fn(bf16{});
      return;
    default:
      fail(op, ": CUDA activations are f32 or bf16, not ", dtype_name(dt));
  }
}

}  // namespace dseek::ops::cuda
