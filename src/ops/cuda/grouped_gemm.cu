// grouped_gemm.cu — the experts' products of a DeepSeekMoE layer in one launch (spec/model.md §4;
// DESIGN.md "grouped expert GEMM"): for every expert e, out[rows of e] = x[rows of e] · W_eᵀ, bf16
// operands on the tensor cores (Hopper wgmma from 128-byte-swizzled shared memory, f32 accumulation),
// 128×128 output tiles, K in steps of 64 through a three-stage cp.async pipeline. The work list (expert,
// 128-row tile; the column tile is blockIdx.y) comes from the host's routing plan or is built on the device
// (moe_grouped.cu), so a layer's 64 experts cost one launch instead of 64 cuBLASLt calls. The paired form
// takes the gate and up matrices together, 64 features of each per tile, and writes silu(g)·u (SwiGLU in
// the epilogue: g and u never reach memory).
#include <cstring>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3, THREADS = 256;
constexpr int TILE_BYTES = BM * BK * 2;  // one operand tile: 128 rows × 64 bf16, 128-byte swizzled
constexpr int STAGE_BYTES = 2 * TILE_BYTES;
constexpr size_t SMEM_BYTES = size_t(STAGES) * STAGE_BYTES + 1024;  // + room to align to 1024 bytes

static_assert(BM == kGroupedRowTile, "the device-built tile tables assume 128-row tiles");

template <typename TO>
__device__ __forceinline__ void store2(TO* p, float a, float b);
template <>
__device__ __forceinline__ void store2<float>(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <>
__device__ __forceinline__ void store2<bf16>(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// x [M, I] bf16 (the permuted rows), w[e] [O, I] bf16, out [M, O]; expert e owns rows
// [offsets[e], offsets[e + 1]). I % 8 == 0 (16-byte chunks), O even. Tile blockIdx.x of `tiles` (those at
// or past *n_tiles, when given, have no work), output columns from blockIdx.y. PAIR: w2[e] [O, I] too, a
// tile's B rows are 64 rows of w (gate) then the same 64 rows of w2 (up), out = silu(x·wᵀ) ⊙ (x·w2ᵀ).
// Two warpgroups, each a 64 × 128 product per K step (wgmma m64n128k16 from the swizzled tiles), fed by
// a three-stage cp.async pipeline.
template <typename TO, bool PAIR>
__global__ void __launch_bounds__(THREADS)
    grouped_gemm_kernel(TO* __restrict__ out, const bf16* __restrict__ x, const bf16* const* __restrict__ w,
                        const bf16* const* __restrict__ w2, const int64_t* __restrict__ offsets,
                        const GroupedTile* __restrict__ tiles, const int* __restrict__ n_tiles, int I,
                        int O) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  if (n_tiles && int(blockIdx.x) >= *n_tiles) return;
  const GroupedTile t = tiles[blockIdx.x];
  constexpr int TN = PAIR ? BN / 2 : BN;  // output columns per tile
  const int c0 = int(blockIdx.y) * TN;
  const int64_t row_base = offsets[t.e] + t.r0;
  const int rows = int(min(int64_t(BM), offsets[t.e + 1] - row_base));
  const int cols = min(TN, O - c0);
  const bf16* A = x + row_base * I;                             // [rows, I]
  const bf16* B = w[t.e] + int64_t(c0) * I;                     // [cols, I] (PAIR: the gate rows)
  const bf16* B2 = PAIR ? w2[t.e] + int64_t(c0) * I : nullptr;  // [cols, I] the up rows
  const int tid = threadIdx.x, wg = tid >> 7;  // warpgroup wg takes tile rows [64·wg, 64·wg + 64)
  const int KT = (I + BK - 1) / BK;

  // K step kt into stage st: 128 rows × 8 chunks of 16 bytes for A and for B, 4 + 4 per thread.
  auto load = [&](int kt, int st) {
    unsigned char* As = smem + st * STAGE_BYTES;
    unsigned char* Bs = As + TILE_BYTES;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int id = tid + i * THREADS, r = id >> 3, c = id & 7;
      const bool kin = k0 + c * 8 < I;
      const int kc = kin ? k0 + c * 8 : 0;
      const uint32_t so = sw128_offset(r, c);
      cp_async16(As + so, A + int64_t(r < rows ? r : 0) * I + kc, r < rows && kin);
      if constexpr (PAIR) {  // rows [0, 64): gate feature c0 + r; [64, 128): up feature c0 + r − 64
        const int f = r & (TN - 1);
        const bf16* src = r < TN ? B : B2;
        cp_async16(Bs + so, src + int64_t(f < cols ? f : 0) * I + kc, f < cols && kin);
      } else {
        cp_async16(Bs + so, B + int64_t(r < cols ? r : 0) * I + kc, r < cols && kin);
      }
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
    const uint64_t da = sw128_desc(As + wg * (TILE_BYTES / 2)), db = sw128_desc(As + TILE_BYTES);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 16; ++k) wgmma_m64n128k16_bf16(acc, da + 2 * k, db + 2 * k);
    wgmma_commit();
    wgmma_wait<0>();
  }
  cp_async_wait<0>();
  // Epilogue: thread l of the warpgroup holds rows 16·(l / 32) + (l % 32) / 4 and + 8, and per 8-column
  // block j the columns 8j + 2·(l % 4), + 1.
  const int l = tid & 127, tig = l & 3;
  const int r_lo = wg * 64 + (l >> 5) * 16 + ((l & 31) >> 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r_lo + half * 8;
    if (r >= rows) continue;
    TO* orow = out + (row_base + r) * O + c0;
    if constexpr (PAIR) {  // blocks 0..7: gate features 8j + 2·tig; 8..15: the same up features
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = 8 * j + 2 * tig;
        const float g0 = acc[4 * j + 2 * half], g1 = acc[4 * j + 2 * half + 1];
        const float u0 = acc[4 * (j + 8) + 2 * half], u1 = acc[4 * (j + 8) + 2 * half + 1];
        if (c < cols) store2(orow + c, g0 / (1.0f + __expf(-g0)) * u0, g1 / (1.0f + __expf(-g1)) * u1);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int c = 8 * j + 2 * tig;
        if (c < cols) store2(orow + c, acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
      }
    }
  }
}

template <typename TO, bool PAIR>
void launch(TO* out, const bf16* x, const bf16* const* w, const bf16* const* w2, const int64_t* offsets,
            const GroupedTile* tiles, const int* n_tiles, int64_t max_tiles, int64_t I, int64_t O) {
  static const bool set = [] {  // once per instantiation: the kernel's shared memory is above 48 KiB
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(grouped_gemm_kernel<TO, PAIR>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(SMEM_BYTES)),
                     "grouped_gemm: shared memory");
    return true;
  }();
  (void)set;
  constexpr int TN = PAIR ? BN / 2 : BN;
  const dim3 grid(unsigned(max_tiles), unsigned((O + TN - 1) / TN));
  grouped_gemm_kernel<TO, PAIR>
      <<<grid, THREADS, SMEM_BYTES>>>(out, x, w, w2, offsets, tiles, n_tiles, int(I), int(O));
  DSEEK_CUDA_LAUNCH_CHECK(PAIR ? "grouped_gemm (gate/up pair)" : "grouped_gemm");
}

}  // namespace

void grouped_gemm_device(void* out, DType out_dt, const void* x, const void* const* w, const void* const* w2,
                         const int64_t* offsets, const GroupedTile* tiles, const int* n_tiles,
                         int64_t max_tiles, int64_t I, int64_t O) {
  if (max_tiles == 0) return;
  const auto* xb = static_cast<const bf16*>(x);
  const auto* wb = reinterpret_cast<const bf16* const*>(w);
  const auto* w2b = reinterpret_cast<const bf16* const*>(w2);
  with_act(out_dt, "grouped_gemm", [&](auto o) {
    using TO = decltype(o);
    if (w2)
      launch<TO, true>(static_cast<TO*>(out), xb, wb, w2b, offsets, tiles, n_tiles, max_tiles, I, O);
    else
      launch<TO, false>(static_cast<TO*>(out), xb, wb, nullptr, offsets, tiles, n_tiles, max_tiles, I, O);
  });
}

bool grouped_gemm_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w) {
  if (x.dtype() != DType::BF16 || (out.dtype() != DType::F32 && out.dtype() != DType::BF16)) return false;
  const int64_t I = x.size(1), O = out.size(1);
  if (I % 8 != 0 || O % 2 != 0 || (reinterpret_cast<uintptr_t>(x.raw()) & 15) != 0) return false;
  for (const Tensor& t : w)
    if (t.dtype() != DType::BF16 || t.block_scale() || (reinterpret_cast<uintptr_t>(t.raw()) & 15) != 0)
      return false;
  return true;
}

void grouped_gemm(Tensor out, const Tensor& x, const std::vector<Tensor>& w,
                  const std::vector<int64_t>& offsets, int64_t min_rows) {
  const int64_t E = int64_t(w.size()), I = x.size(1), O = out.size(1);
  std::vector<GroupedTile> tiles;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = offsets[size_t(e) + 1] - offsets[size_t(e)];
    if (n < min_rows || n == 0) continue;
    for (int64_t r0 = 0; r0 < n; r0 += BM) tiles.push_back({int32_t(e), int32_t(r0)});
  }
  if (tiles.empty()) return;
  std::vector<const void*> ptrs(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) ptrs[size_t(e)] = w[size_t(e)].raw();
  // One upload for the three small tables: pointers, offsets, tiles.
  const size_t pb = ptrs.size() * 8, ob = offsets.size() * 8, tb = tiles.size() * sizeof(GroupedTile);
  std::vector<unsigned char> host(pb + ob + tb);
  std::memcpy(host.data(), ptrs.data(), pb);
  std::memcpy(host.data() + pb, offsets.data(), ob);
  std::memcpy(host.data() + pb + ob, tiles.data(), tb);
  Tensor dev = Tensor::empty({int64_t(host.size())}, DType::U8, Device::CUDA);
  copy_bytes(dev.raw(), Device::CUDA, host.data(), Device::CPU, host.size());
  const auto* base = static_cast<const unsigned char*>(dev.raw());
  const auto* wp = reinterpret_cast<const bf16* const*>(base);
  const auto* op = reinterpret_cast<const int64_t*>(base + pb);
  const auto* tp = reinterpret_cast<const GroupedTile*>(base + pb + ob);
  grouped_gemm_device(out.raw(), out.dtype(), x.raw(), reinterpret_cast<const void* const*>(wp), nullptr, op,
                      tp, nullptr, int64_t(tiles.size()), I, O);
}

}  // namespace dseek::ops::cuda
