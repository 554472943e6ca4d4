// grouped_gemm.cu — the experts' products of a DeepSeekMoE layer in one launch (spec/model.md §4;
// DESIGN.md "grouped expert GEMM"): for every expert e, out[rows of e] = x[rows of e] · W_eᵀ, bf16
// operands on the tensor cores (mma.sync m16n8k16, f32 accumulation), 128×128 output tiles, K in steps of
// 32 through a three-stage cp.async pipeline, operand fragments by ldmatrix. The work list (expert, 128-row
// tile; the column tile is blockIdx.y) comes from the host's routing plan or is built on the device
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

namespace dseek::ops::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int LDS = BK + 8;  // shared row stride (bf16): rows stay 16-byte aligned, banks staggered
constexpr int STAGE_ELEMS = (BM + BN) * LDS;
constexpr size_t SMEM_BYTES = size_t(STAGES) * STAGE_ELEMS * sizeof(bf16);

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
template <typename TO, bool PAIR>
__global__ void __launch_bounds__(THREADS)
    grouped_gemm_kernel(TO* __restrict__ out, const bf16* __restrict__ x, const bf16* const* __restrict__ w,
                        const bf16* const* __restrict__ w2, const int64_t* __restrict__ offsets,
                        const GroupedTile* __restrict__ tiles, const int* __restrict__ n_tiles, int I, int O) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  if (n_tiles && int(blockIdx.x) >= *n_tiles) return;
  const GroupedTile t = tiles[blockIdx.x];
  constexpr int TN = PAIR ? BN / 2 : BN;  // output columns per tile
  const int c0 = int(blockIdx.y) * TN;
  const int64_t row_base = offsets[t.e] + t.r0;
  const int rows = int(min(int64_t(BM), offsets[t.e + 1] - row_base));
  const int cols = min(TN, O - c0);
  const bf16* A = x + row_base * I;         // [rows, I]
  const bf16* B = w[t.e] + int64_t(c0) * I;  // [cols, I] (PAIR: the gate rows)
  const bf16* B2 = PAIR ? w2[t.e] + int64_t(c0) * I : nullptr;  // [cols, I] the up rows
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp >> 2, wn = warp & 3;  // this warp's 64×32 block of the tile
  const int KT = (I + BK - 1) / BK;

  auto load = [&](int kt, int st) {
    bf16* As = smem + st * STAGE_ELEMS;
    bf16* Bs = As + BM * LDS;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // 128 rows × 4 chunks of 8, for A and for B
      const int id = tid + i * THREADS, r = id >> 2, kc = (id & 3) * 8;
      const bool kin = k0 + kc < I;
      cp_async16(As + r * LDS + kc, A + int64_t(r < rows ? r : 0) * I + (kin ? k0 + kc : 0), r < rows && kin);
      if constexpr (PAIR) {  // rows [0, 64): gate feature c0 + r; [64, 128): up feature c0 + r − 64
        const int f = r & (TN - 1);
        const bf16* src = r < TN ? B : B2;
        cp_async16(Bs + r * LDS + kc, src + int64_t(f < cols ? f : 0) * I + (kin ? k0 + kc : 0), f < cols && kin);
      } else {
        cp_async16(Bs + r * LDS + kc, B + int64_t(r < cols ? r : 0) * I + (kin ? k0 + kc : 0), r < cols && kin);
      }
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt is in; the stage refilled below was released by every warp
    if (kt + STAGES - 1 < KT) load(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
    cp_async_commit();
    const bf16* As = smem + (kt % STAGES) * STAGE_ELEMS;
    const bf16* Bs = As + BM * LDS;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t a[4][4], b[2][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ldsm_x4(a[mt], As + (wm * 64 + mt * 16 + (lane & 15)) * LDS + ks + (lane >> 4) * 8);
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        // b[p][0..1]: B rows base..base + 7, b[p][2..3]: base + 8..15. PAIR: p = 0 the warp's 16 gate
        // features, p = 1 the same 16 up features; else the warp's 32 columns.
        const int base = PAIR ? p * TN + wn * 16 : wn * 32 + p * 16;
        ldsm_x4(b[p], Bs + (base + (lane & 7) + (lane >> 4) * 8) * LDS + ks + ((lane >> 3) & 1) * 8);
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
          mma16816<bf16>(acc[mt][nt], a[mt], b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();
  // Epilogue: each thread holds rows g and g + 8 of every 16-row m-tile, two adjacent columns per n-tile.
  const int g = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = wm * 64 + mt * 16 + g + half * 8;
      if (r >= rows) continue;
      TO* orow = out + (row_base + r) * O + c0;
      if constexpr (PAIR) {  // n-tiles 0, 1: gate features wn·16 + nt·8 + 2·tig; 2, 3: the same up ones
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int c = wn * 16 + nt * 8 + 2 * tig;
          const float g0 = acc[mt][nt][half * 2], g1 = acc[mt][nt][half * 2 + 1];
          const float u0 = acc[mt][nt + 2][half * 2], u1 = acc[mt][nt + 2][half * 2 + 1];
          if (c < cols) store2(orow + c, g0 / (1.0f + __expf(-g0)) * u0, g1 / (1.0f + __expf(-g1)) * u1);
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int c = wn * 32 + nt * 8 + 2 * tig;
          if (c < cols) store2(orow + c, acc[mt][nt][half * 2], acc[mt][nt][half * 2 + 1]);
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
