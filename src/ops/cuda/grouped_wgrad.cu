// grouped_wgrad.cu — the weight gradients of a DeepSeekMoE layer's expert products in one launch (bf16
// training, issue 6; spec/model.md §4): for every expert e, dW_e[O, I] += dy[rows of e]ᵀ · x[rows of e],
// where the reduction runs over the expert's tokens — a grouped product whose K (not M) differs per
// expert. Both operands arrive token-major (dy[r, o], x[r, i] contiguous along o and i), which is the
// MN-major layout Hopper's wgmma reads directly: each 64-token K step is copied row by row into 128-byte-
// swizzled shared memory (cp.async, three stages) and multiplied without any transposition. 128×128 output
// tiles per block (blockIdx.x: the tile, blockIdx.y: the expert), two warpgroups of m64n128k16 products,
// f32 accumulation. Each output element belongs to one thread (no atomics): a deterministic sum in token
// order, added to dW once at the end.
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3, THREADS = 256;
constexpr int BLOCK_BYTES = BK * 64 * 2;     // 64 token rows × 64 elements (128 bytes): one swizzled block
constexpr int OPER_BYTES = 2 * BLOCK_BYTES;  // an operand's K step: 128 elements wide, two blocks
constexpr int STAGE_BYTES = 2 * OPER_BYTES;  // dy's and x's
constexpr size_t SMEM_BYTES = size_t(STAGES) * STAGE_BYTES + 1024;  // + room to align to 1024 bytes

// A = dyᵀ (m = o, k = token), B = xᵀ's transpose (n = i, k = token): both MN-major. Warpgroup wg owns
// output rows [64·wg, 64·wg + 64) of the tile: the wg-th 64-wide block of the dy operand.
__global__ void __launch_bounds__(THREADS)
    grouped_wgrad_kernel(float* const* __restrict__ dw, const bf16* __restrict__ dy,
                         const bf16* __restrict__ x, const int64_t* __restrict__ offsets, int O, int I,
                         int tiles_n) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int e = blockIdx.y;
  const int64_t r0 = offsets[e], r1 = offsets[e + 1];
  if (r1 <= r0) return;  // no tokens: dW_e untouched
  const int o0 = int(blockIdx.x / unsigned(tiles_n)) * BM, i0 = int(blockIdx.x % unsigned(tiles_n)) * BN;
  const int tid = threadIdx.x, wg = tid >> 7;
  const int KT = int((r1 - r0 + BK - 1) / BK);

  // K step kt into stage st: per operand 64 token rows × 16 chunks of 8 elements (two 64-wide blocks),
  // 4 + 4 chunks per thread; rows past the expert's last token and columns past O / I are zero-filled.
  auto load = [&](int kt, int st) {
    unsigned char* As = smem + st * STAGE_BYTES;
    unsigned char* Bs = As + OPER_BYTES;
    const int64_t k0 = r0 + int64_t(kt) * BK;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int id = tid + i * THREADS, k = id >> 4, ch = id & 15;
      const int64_t r = k0 + k;
      const bool rin = r < r1;
      const uint32_t so = uint32_t(ch >> 3) * BLOCK_BYTES + sw128_offset(k, ch & 7);
      const int oc = o0 + ch * 8, ic = i0 + ch * 8;
      const bool okA = rin && oc < O, okB = rin && ic < I;
      cp_async16(As + so, okA ? dy + r * O + oc : dy, okA);
      cp_async16(Bs + so, okB ? x + r * I + ic : x, okB);
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();  // this thread's cp.async writes, visible to the tensor cores' (async) reads
    __syncthreads();      // every thread's part of step kt is in; step kt − 1's products have finished
    if (kt + STAGES - 1 < KT) load(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
    cp_async_commit();
    const unsigned char* As = smem + (kt % STAGES) * STAGE_BYTES;
    const uint64_t da = sw128_desc_mn(As + wg * BLOCK_BYTES, BLOCK_BYTES),
                   db = sw128_desc_mn(As + OPER_BYTES, BLOCK_BYTES);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 16; ++k) wgmma_m64n128k16_bf16<1, 1>(acc, da + 128 * k, db + 128 * k);
    wgmma_commit();
    wgmma_wait<0>();
  }
  cp_async_wait<0>();
  // Epilogue: thread l of the warpgroup holds rows 16·(l / 32) + (l % 32) / 4 and + 8, and per 8-column
  // block j the columns 8j + 2·(l % 4), + 1 (I is a multiple of 8: both or neither are inside).
  float* out = dw[e];
  const int l = tid & 127, tig = l & 3;
  const int m_lo = o0 + wg * 64 + (l >> 5) * 16 + ((l & 31) >> 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int m = m_lo + half * 8;
    if (m >= O) continue;
    float* row = out + int64_t(m) * I + i0;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int n = 8 * j + 2 * tig;
      if (i0 + n >= I) continue;
      float2 v = *reinterpret_cast<float2*>(row + n);
      v.x += acc[4 * j + 2 * half];
      v.y += acc[4 * j + 2 * half + 1];
      *reinterpret_cast<float2*>(row + n) = v;
    }
  }
}

}  // namespace

bool grouped_linear_wgrad(const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                          const MoePlan& p) {
  const int64_t E = int64_t(dw.size()), O = dy.size(1), I = x.size(1);
  if (dy.dtype() != DType::BF16 || x.dtype() != DType::BF16 || O % 8 != 0 || I % 8 != 0 ||
      (reinterpret_cast<uintptr_t>(dy.raw()) & 15) != 0 || (reinterpret_cast<uintptr_t>(x.raw()) & 15) != 0)
    return false;
  for (const Tensor& t : dw)
    if (t.dtype() != DType::F32 || t.size(0) != O || t.size(1) != I ||
        (reinterpret_cast<uintptr_t>(t.raw()) & 7) != 0)
      return false;
  if (E == 0 || dy.size(0) == 0) return true;
  static const bool set = [] {  // once: the kernel's shared memory is above 48 KiB
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(grouped_wgrad_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(SMEM_BYTES)),
                     "grouped_linear_wgrad: shared memory");
    return true;
  }();
  (void)set;
  std::vector<int64_t> ptrs;
  for (const Tensor& t : dw) ptrs.push_back(int64_t(reinterpret_cast<uintptr_t>(t.raw())));
  const Tensor table = upload_i64(ptrs), offs = upload_i64(p.offsets);
  const int tiles_m = int((O + BM - 1) / BM), tiles_n = int((I + BN - 1) / BN);
  grouped_wgrad_kernel<<<dim3(unsigned(tiles_m * tiles_n), unsigned(E)), THREADS, SMEM_BYTES>>>(
      reinterpret_cast<float* const*>(table.raw()), static_cast<const bf16*>(dy.raw()),
      static_cast<const bf16*>(x.raw()), offs.data<int64_t>(), int(O), int(I), tiles_n);
  DSEEK_CUDA_LAUNCH_CHECK("grouped_linear_wgrad");
  return true;
}

}  // namespace dseek::ops::cuda
