// common.cuh — helpers shared by the CUDA kernels: element loads/stores as f32 for the activation
// dtypes (f32, bf16), warp and block reductions, launch sizes, host-side uploads of index lists.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/device.h"
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

template <typename T>  // float or double
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result. float or double.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  T r = lane < int(blockDim.x >> 5) ? part[lane] : T(0);
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

// The warp's best (value, index) pair by `beats`, in every lane.
template <typename I>
__device__ __forceinline__ void warp_best(float& v, I& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    const I j = __shfl_xor_sync(0xffffffffu, i, o);
    if (beats(w, j, v, i)) {
      v = w;
      i = j;
    }
  }
}

// Eight consecutive weights as f32 (one 16-byte load for bf16, two for f32; p 16-byte aligned), and their
// dot product with eight consecutive f32 values (x 16-byte aligned): the inner step of the GEMV-shaped
// decode kernels.
__device__ __forceinline__ void load8(const bf16* p, float* f) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = __bfloat162float(v[j]);
}
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
// Eight f32 values stored as eight consecutive elements (p 16-byte aligned; bf16 rounds to nearest even).
__device__ __forceinline__ void store8(bf16* p, const float* f) {
  uint4 raw;
  bf16* v = reinterpret_cast<bf16*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = __float2bfloat16_rn(f[j]);
  *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ void store8(float* p, const float* f) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
// Whether rows of D elements at these pointers can go eight at a time (D % 8 == 0, 16-byte aligned).
inline bool rows_by_8(int64_t D, std::initializer_list<const void*> ps) {
  if (D % 8 != 0) return false;
  for (const void* p : ps)
    if (p && (reinterpret_cast<uintptr_t>(p) & 15) != 0) return false;
  return true;
}

__device__ __forceinline__ float dot8(const float* w, const float* x) {
  const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
  return w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
         w[7] * b.w;
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

// Programmatic dependent launch (Hopper; PTX griddepcontrol, CUDA "programmatic dependent launch"), for
// the chain of small kernels of a decode step (issue 5): a kernel started through launch_dep may begin
// while the kernel before it on the stream is still running, so the next kernel's blocks are already
// resident (and have started reading their weights) when this one ends. The rules for such a kernel:
//   * dep_wait() before it reads anything a kernel writes (activations, caches, routing results) and
//     before it writes anything; before the wait it reads only weights (nothing in a step writes them);
//   * every block reaches dep_wait() before it exits (a grid that ended without waiting would release
//     its own dependents while its predecessor still ran);
//   * dep_launch() (any time; at the start here) lets the next launch_dep kernel begin once every block
//     of this one has called it or exited.
// Kernels launched with <<<>>> (or by libraries) keep plain stream order; dep_wait() in them is a no-op.
// The decode-step tracer's hooks (ops/dep_trace.h; a build with -DDSEEK_DEP_TRACE=ON): each translation
// unit has its own copy of the buffer descriptor (no relocatable device code), registered at start-up so
// dep_trace_begin can point them all at one buffer; dep_wait's first block stamps the clock there.
struct DepTraceBuf {
  unsigned long long* t = nullptr;
  unsigned int* n = nullptr;
  unsigned int cap = 0;
};
void dep_trace_register(void (*set)(const DepTraceBuf&));
void dep_trace_name(const char* op);
#ifdef DSEEK_DEP_TRACE
namespace {
__constant__ DepTraceBuf g_dep_trace;
void dep_trace_set_unit(const DepTraceBuf& b) {
  DSEEK_CUDA_CHECK(cudaMemcpyToSymbol(g_dep_trace, &b, sizeof b), "dep_trace");
}
[[maybe_unused]] const bool g_dep_trace_registered = (dep_trace_register(&dep_trace_set_unit), true);
}  // namespace
#endif

__device__ __forceinline__ void dep_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
#ifdef DSEEK_DEP_TRACE
  if (g_dep_trace.t && threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 && blockIdx.x == 0 &&
      blockIdx.y == 0 && blockIdx.z == 0) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    const unsigned int i = atomicAdd(g_dep_trace.n, 1u);
    if (i < g_dep_trace.cap) g_dep_trace.t[i] = now;
  }
#endif
}
__device__ __forceinline__ void dep_launch() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// A hint to bring [p, p + bytes) into L2 (Hopper bulk prefetch in pieces of at most 64 KB, lane-strided
// over `lanes` threads). It never changes a value read later, so it may name anything, before dep_wait
// too. p 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes, int lane, int lanes) {
  constexpr int64_t kPiece = 64 * 1024;
  for (int64_t off = int64_t(lane) * kPiece; off < bytes; off += int64_t(lanes) * kPiece) {
    const uint32_t n = uint32_t(bytes - off < kPiece ? bytes - off : kPiece);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(static_cast<const char*>(p) + off), "r"(n)
                 : "memory");
  }
}

// Whether launch_dep asks for programmatic serialization (DSEEK_PDL=0 turns it off: the same kernels in
// plain stream order, for comparison).
bool dep_launch_enabled();

// kernel<<<grid, block, smem>>>(args...) on the thread's default stream, allowed to overlap the kernel
// before it as described above; the launch is checked and named by `op`.
template <typename... P, typename... A>
void launch_dep(const char* op, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = cudaStreamPerThread;
  cfg.attrs = &attr;
  cfg.numAttrs = dep_launch_enabled() ? 1 : 0;
#ifdef DSEEK_DEP_TRACE
  dep_trace_name(op);
#endif
  DSEEK_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...), op);
  DSEEK_CUDA_LAUNCH_CHECK(op);
}

// Raises a kernel's dynamic shared-memory limit when needed, once per kernel and size (so a captured
// decode step makes no attribute calls).
template <typename K>
void allow_smem(K kernel, size_t bytes, const char* op) {
  DSEEK_CHECK(bytes <= 227 * 1024, op, ": needs ", bytes, " bytes of shared memory");
  if (bytes <= 48 * 1024) return;
  static std::mutex mu;
  static std::map<const void*, size_t> set;  // kernel → the limit set so far
  std::lock_guard<std::mutex> g(mu);
  size_t& have = set[reinterpret_cast<const void*>(kernel)];
  if (have >= bytes) return;
  DSEEK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
  have = bytes;
}

// v as a device I64 tensor (at least one element, so an empty list is still a valid pointer).
inline Tensor upload_i64(const std::vector<int64_t>& v) {
  Tensor t = Tensor::empty({std::max<int64_t>(int64_t(v.size()), 1)}, DType::I64, Device::CUDA);
  if (!v.empty()) copy_bytes(t.raw(), Device::CUDA, v.data(), Device::CPU, v.size() * sizeof(int64_t));
  return t;
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
