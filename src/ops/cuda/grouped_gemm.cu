// grouped_gemm.cu — the experts' products of a DeepSeekMoE layer in one launch (spec/model.md §4;
// DESIGN.md "grouped expert GEMM"): for every expert e, out[rows of e] = x[rows of e] · W_eᵀ, bf16
// operands on the tensor cores (Hopper wgmma from 128-byte-swizzled shared memory, f32 accumulation),
// 128-row output tiles 128 or 256 columns wide (the Shape choices below), K in steps of 64 through a
// cp.async pipeline. The work list (expert, 128-row tile; the column tile is blockIdx.y) comes from the
// host's routing plan or is built on the device (moe_grouped.cu), so a layer's 64 experts cost one launch
// instead of 64 cuBLASLt calls. Epilogues:
//   plain      out = x·Wᵀ (+ x2·W2ᵀ: a second operand pair along K, the gate and up products' input
//              gradient dg·W_g + du·W_u in one product);
//   swiglu     the gate and up matrices together, half a tile's columns of each: h = silu(g)·u, and g, u
//              themselves when the training forward keeps them (g and u never take a separate pass);
//   swiglu_bwd the product is dh = dy·W_down (W_downᵀ is the operand), which never reaches memory: dg, du of
//              SwiGLU's backward from dh and the forward's g, u.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/wgmma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int BM = 128, BK = 64, THREADS = 256;
constexpr int A_BYTES =
    BM * BK * 2;  // the activation tile of a K step: 128 rows × 64 bf16, 128-byte swizzled

static_assert(BM == kGroupedRowTile, "the device-built tile tables assume 128-row tiles");

enum class Epi { Plain, SwiGlu, SwiGluBwd };

// Everything a launch reads, by value (kernel parameter space).
struct GemmParams {
  void* out;              // [M, O]: plain: x·Wᵀ (+ x2·W2ᵀ); swiglu: h
  const bf16* x;          // [M, K1]
  const bf16* const* w;   // [E] → [O, K1] (swiglu: the gate matrices)
  const bf16* x2;         // plain with K2 > 0: [M, K2]
  const bf16* const* w2;  // plain: [E] → [O, K2]; swiglu: the up matrices [O, K1]
  bf16* g_out;            // swiglu: g, u [M, O] written too when non-null
  bf16* u_out;
  const bf16* g;  // swiglu_bwd: the forward's g, u [M, O]
  const bf16* u;
  bf16* dg;  // swiglu_bwd: dg, du [M, O]
  bf16* du;
  const int64_t* offsets;    // [E + 1]
  const GroupedTile* tiles;  // [gridDim.x]
  const int* n_tiles;        // device count of tiles with work (nullptr: all)
  int K1, K2, O;
};

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

// A launch shape: BN output columns (weight rows) per tile, S stages of a K step's two tiles, INFL groups
// of products left in flight; loads run S − 1 − INFL steps ahead (a stage is refilled only after every
// warpgroup's products on it have completed: each thread waits for all but INFL of its groups before the
// barrier that precedes the refill).
template <int BN_, int S, int INFL>
struct Shape {
  static constexpr int BN = BN_, kStages = S, kInFlight = INFL, kAhead = S - 1 - INFL;
  static constexpr int B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr size_t kSmem = size_t(S) * STAGE_BYTES + 1024;  // + room to align to 1024 bytes
  static_assert(kAhead >= 1, "at least one step of loads ahead");
  static_assert(BN == 128 || BN == 256, "wgmma n128 or n256");
};

// One warpgroup's product of a K step: 64 rows × BN columns, four k16 instructions.
template <int BN>
__device__ __forceinline__ void mma_step(float (&acc)[BN / 2], uint64_t da, uint64_t db) {
#pragma unroll
  for (int k = 0; k < BK / 16; ++k) {
    if constexpr (BN == 256)
      wgmma_m64n256k16_bf16(acc, da + 2 * k, db + 2 * k);
    else
      wgmma_m64n128k16_bf16(acc, da + 2 * k, db + 2 * k);
  }
}

// Tile blockIdx.x of p.tiles (those at or past *n_tiles, when given, have no work), output columns from
// blockIdx.y. Two warpgroups, each a 64 × BN product per K step (wgmma from the swizzled tiles). SWIGLU:
// a tile's B rows are BN / 2 rows of w (gate) then the same rows of w2 (up).
template <typename TO, Epi EPI, typename P>
__global__ void __launch_bounds__(THREADS) grouped_gemm_kernel(const GemmParams p) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  if (p.n_tiles && int(blockIdx.x) >= *p.n_tiles) return;
  constexpr int BN = P::BN, NB = BN / 8;  // NB: 8-column blocks of a warpgroup's accumulators
  constexpr bool PAIR = EPI == Epi::SwiGlu;
  constexpr int TN = PAIR ? BN / 2 : BN;  // output columns per tile
  const GroupedTile t = p.tiles[blockIdx.x];
  const int c0 = int(blockIdx.y) * TN;
  const int64_t row_base = p.offsets[t.e] + t.r0;
  const int rows = int(min(int64_t(BM), p.offsets[t.e + 1] - row_base));
  const int cols = min(TN, p.O - c0);
  const int K1 = p.K1, K2 = PAIR ? 0 : p.K2;
  const bf16* A1 = p.x + row_base * K1;                      // [rows, K1]
  const bf16* B1 = p.w[t.e] + int64_t(c0) * K1;              // [cols, K1] (SWIGLU: gate rows)
  const bf16* A2 = K2 > 0 ? p.x2 + row_base * K2 : nullptr;  // [rows, K2]
  const bf16* B2 = PAIR     ? p.w2[t.e] + int64_t(c0) * K1   // [cols, K1] the up rows
                   : K2 > 0 ? p.w2[t.e] + int64_t(c0) * K2   // [cols, K2]
                            : nullptr;
  const int tid = threadIdx.x, wg = tid >> 7;  // warpgroup wg takes tile rows [64·wg, 64·wg + 64)
  const int KT1 = (K1 + BK - 1) / BK, KT = KT1 + (K2 + BK - 1) / BK;

  // K step kt into stage st: 128 rows × 8 chunks of 16 bytes for A, BN rows for B. Steps past the first
  // operand pair's come from the second (a partial last step of either is zero-filled).
  auto load = [&](int kt, int st) {
    unsigned char* As = smem + st * P::STAGE_BYTES;
    unsigned char* Bs = As + A_BYTES;
    const bool second = kt >= KT1;
    const int k0 = (second ? kt - KT1 : kt) * BK, Kp = second ? K2 : K1;
    const bf16* A = second ? A2 : A1;
    const bf16* B = second ? B2 : B1;
#pragma unroll
    for (int i = 0; i < BM * 8 / THREADS; ++i) {
      const int id = tid + i * THREADS, r = id >> 3, c = id & 7;
      const bool kin = k0 + c * 8 < Kp;
      cp_async16(As + sw128_offset(r, c), A + int64_t(r < rows ? r : 0) * Kp + (kin ? k0 + c * 8 : 0),
                 r < rows && kin);
    }
#pragma unroll
    for (int i = 0; i < BN * 8 / THREADS; ++i) {
      const int id = tid + i * THREADS, r = id >> 3, c = id & 7;
      const bool kin = k0 + c * 8 < Kp;
      const int kc = kin ? k0 + c * 8 : 0;
      if constexpr (PAIR) {  // rows [0, TN): gate feature c0 + r; [TN, BN): up feature c0 + r − TN
        const int f = r & (TN - 1);
        const bf16* src = r < TN ? B1 : B2;
        cp_async16(Bs + sw128_offset(r, c), src + int64_t(f < cols ? f : 0) * K1 + kc, f < cols && kin);
      } else {
        cp_async16(Bs + sw128_offset(r, c), B + int64_t(r < cols ? r : 0) * Kp + kc, r < cols && kin);
      }
    }
  };

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < P::kAhead; ++s) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<P::kAhead - 1>();  // step kt's loads (this thread's) have landed
    fence_proxy_async();             // ... and are visible to the tensor cores' (async) reads
    __syncthreads();  // every thread's part of step kt is in; step kt − 1 − INFL's products
                      // have completed in both warpgroups, so its stage may be refilled
    if (kt + P::kAhead < KT) load(kt + P::kAhead, (kt + P::kAhead) % P::kStages);
    cp_async_commit();
    const unsigned char* As = smem + (kt % P::kStages) * P::STAGE_BYTES;
    wgmma_fence();
    mma_step<BN>(acc, sw128_desc(As + wg * (A_BYTES / 2)), sw128_desc(As + A_BYTES));
    wgmma_commit();
    wgmma_wait<P::kInFlight>();
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  // Epilogue: thread l of the warpgroup holds rows 16·(l / 32) + (l % 32) / 4 and + 8, and per 8-column
  // block j the columns 8j + 2·(l % 4), + 1.
  const int l = tid & 127, tig = l & 3;
  const int r_lo = wg * 64 + (l >> 5) * 16 + ((l & 31) >> 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r_lo + half * 8;
    if (r >= rows) continue;
    const int64_t o = (row_base + r) * p.O + c0;  // this row's first output element of the tile
    if constexpr (PAIR) {  // blocks [0, NB/2): gate features 8j + 2·tig; [NB/2, NB): the same up features
#pragma unroll
      for (int j = 0; j < NB / 2; ++j) {
        const int c = 8 * j + 2 * tig;
        const float g0 = acc[4 * j + 2 * half], g1 = acc[4 * j + 2 * half + 1];
        const float u0 = acc[4 * (j + NB / 2) + 2 * half], u1 = acc[4 * (j + NB / 2) + 2 * half + 1];
        if (c >= cols) continue;
        store2(static_cast<TO*>(p.out) + o + c, g0 / (1.0f + __expf(-g0)) * u0,
               g1 / (1.0f + __expf(-g1)) * u1);
        if (p.g_out) {
          store2(p.g_out + o + c, g0, g1);
          store2(p.u_out + o + c, u0, u1);
        }
      }
    } else if constexpr (EPI ==
                         Epi::SwiGluBwd) {  // acc: dh; dg = dh·u·σ(g)·(1 + g·(1 − σ(g))), du = dh·silu(g)
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const int c = 8 * j + 2 * tig;
        if (c >= cols) continue;
        const float2 gv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.g + o + c));
        const float2 uv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.u + o + c));
        const float d0 = acc[4 * j + 2 * half], d1 = acc[4 * j + 2 * half + 1];
        const float s0 = 1.0f / (1.0f + expf(-gv.x)), s1 = 1.0f / (1.0f + expf(-gv.y));
        store2(p.dg + o + c, d0 * uv.x * s0 * (1.0f + gv.x * (1.0f - s0)),
               d1 * uv.y * s1 * (1.0f + gv.y * (1.0f - s1)));
        store2(p.du + o + c, d0 * (gv.x * s0), d1 * (gv.y * s1));
      }
    } else {
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const int c = 8 * j + 2 * tig;
        if (c < cols)
          store2(static_cast<TO*>(p.out) + o + c, acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]);
      }
    }
  }
}

// The launch shapes: 128 × 128 tiles, 97 KB of shared memory, two blocks per SM, each step's products
// waited for before the next step's loads (on the H200 at bench-1b, 2026-11-30, deeper pipelines at this
// tile were 1–3 % slower end to end); and 128 × 256 tiles (half the L2 → shared-memory traffic per product:
// a 128 × 128 tile's K step moves 32 KB for 2.1 MFLOP, which at the tensor cores' rate asks more of L2 than
// it gives), 193 KB, one block per SM, one group of products in flight. DSEEK_GROUPED_TILE=128 keeps the
// small tiles everywhere (for comparisons).
using Small = Shape<128, 3, 0>;
using Wide = Shape<256, 4, 1>;

bool wide_tiles() {
  static const bool v = [] {
    const char* s = std::getenv("DSEEK_GROUPED_TILE");
    return !(s && std::string(s) == "128");
  }();
  return v;
}

template <typename TO, Epi EPI, typename P>
void launch_with(const GemmParams& p, int64_t max_tiles, const char* name) {
  static const bool set = [] {  // once per instantiation: the kernel's shared memory is above 48 KiB
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(grouped_gemm_kernel<TO, EPI, P>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(P::kSmem)),
                     "grouped_gemm: shared memory");
    return true;
  }();
  (void)set;
  constexpr int TN = EPI == Epi::SwiGlu ? P::BN / 2 : P::BN;
  const dim3 grid(unsigned(max_tiles), unsigned((p.O + TN - 1) / TN));
  grouped_gemm_kernel<TO, EPI, P><<<grid, THREADS, P::kSmem>>>(p);
  DSEEK_CUDA_LAUNCH_CHECK(name);
}

template <typename TO, Epi EPI>
void launch(const GemmParams& p, int64_t max_tiles, const char* name) {
  if (max_tiles == 0) return;
  // Wide tiles where the output (or the pair's features) fills them, except under SwiGLU's backward
  // epilogue (its g/u reads made the wide tiles 14 % slower there; the others gained 4–13 %).
  const int wide_cols = EPI == Epi::SwiGlu ? 128 : 256;
  if (EPI != Epi::SwiGluBwd && wide_tiles() && p.O >= wide_cols)
    launch_with<TO, EPI, Wide>(p, max_tiles, name);
  else
    launch_with<TO, EPI, Small>(p, max_tiles, name);
}

// The host-side tables of a launch: the tiles of every expert with at least min_rows rows, the offsets,
// and up to two pointer lists, in one upload. `dev` keeps them alive until the stream has used them.
struct HostTables {
  Tensor dev;
  const bf16* const* w = nullptr;
  const bf16* const* w2 = nullptr;
  const int64_t* offsets = nullptr;
  const GroupedTile* tiles = nullptr;
  int64_t n_tiles = 0;
};

HostTables upload_tables(const std::vector<Tensor>& w, const std::vector<Tensor>* w2,
                         const std::vector<int64_t>& offsets, int64_t min_rows) {
  const int64_t E = int64_t(w.size());
  std::vector<GroupedTile> tiles;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = offsets[size_t(e) + 1] - offsets[size_t(e)];
    if (n < min_rows || n == 0) continue;
    for (int64_t r0 = 0; r0 < n; r0 += BM) tiles.push_back({int32_t(e), int32_t(r0)});
  }
  HostTables h;
  h.n_tiles = int64_t(tiles.size());
  if (tiles.empty()) return h;
  std::vector<const void*> ptrs;
  for (const Tensor& t : w) ptrs.push_back(t.raw());
  if (w2)
    for (const Tensor& t : *w2) ptrs.push_back(t.raw());
  const size_t pb = ptrs.size() * 8, ob = offsets.size() * 8, tb = tiles.size() * sizeof(GroupedTile);
  std::vector<unsigned char> host(pb + ob + tb);
  std::memcpy(host.data(), ptrs.data(), pb);
  std::memcpy(host.data() + pb, offsets.data(), ob);
  std::memcpy(host.data() + pb + ob, tiles.data(), tb);
  h.dev = Tensor::empty({int64_t(host.size())}, DType::U8, Device::CUDA);
  copy_bytes(h.dev.raw(), Device::CUDA, host.data(), Device::CPU, host.size());
  const auto* base = static_cast<const unsigned char*>(h.dev.raw());
  h.w = reinterpret_cast<const bf16* const*>(base);
  if (w2) h.w2 = h.w + E;
  h.offsets = reinterpret_cast<const int64_t*>(base + pb);
  h.tiles = reinterpret_cast<const GroupedTile*>(base + pb + ob);
  return h;
}

// The fields every host-table launch shares: the tables, x [M, K1] and the output width O.
GemmParams table_params(const HostTables& t, const Tensor& x, int64_t O) {
  GemmParams p{};
  p.x = static_cast<const bf16*>(x.raw());
  p.w = t.w;
  p.w2 = t.w2;
  p.offsets = t.offsets;
  p.tiles = t.tiles;
  p.K1 = int(x.size(1));
  p.O = int(O);
  return p;
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

bool bf16_mats(const std::vector<Tensor>& w) {
  for (const Tensor& t : w)
    if (t.dtype() != DType::BF16 || t.block_scale() || !aligned16(t.raw())) return false;
  return true;
}

}  // namespace

void grouped_gemm_device(void* out, DType out_dt, const void* x, const void* const* w, const void* const* w2,
                         const int64_t* offsets, const GroupedTile* tiles, const int* n_tiles,
                         int64_t max_tiles, int64_t I, int64_t O) {
  GemmParams p{};
  p.out = out;
  p.x = static_cast<const bf16*>(x);
  p.w = reinterpret_cast<const bf16* const*>(w);
  p.w2 = reinterpret_cast<const bf16* const*>(w2);
  p.offsets = offsets;
  p.tiles = tiles;
  p.n_tiles = n_tiles;
  p.K1 = int(I);
  p.O = int(O);
  with_act(out_dt, "grouped_gemm", [&](auto o) {
    using TO = decltype(o);
    if (w2)
      launch<TO, Epi::SwiGlu>(p, max_tiles, "grouped_gemm (gate/up pair)");
    else
      launch<TO, Epi::Plain>(p, max_tiles, "grouped_gemm");
  });
}

bool grouped_gemm_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w) {
  if (x.dtype() != DType::BF16 || (out.dtype() != DType::F32 && out.dtype() != DType::BF16)) return false;
  const int64_t I = x.size(1), O = out.size(1);
  return I % 8 == 0 && O % 2 == 0 && aligned16(x.raw()) && bf16_mats(w);
}

void grouped_gemm(Tensor out, const Tensor& x, const std::vector<Tensor>& w,
                  const std::vector<int64_t>& offsets, int64_t min_rows) {
  const HostTables h = upload_tables(w, nullptr, offsets, min_rows);
  GemmParams p = table_params(h, x, out.size(1));
  p.out = out.raw();
  with_act(out.dtype(), "grouped_gemm",
           [&](auto o) { launch<decltype(o), Epi::Plain>(p, h.n_tiles, "grouped_gemm"); });
}

bool grouped_gemm2_applies(const Tensor& out, const Tensor& x, const std::vector<Tensor>& w, const Tensor& x2,
                           const std::vector<Tensor>& w2) {
  return grouped_gemm_applies(out, x, w) && x2.dtype() == DType::BF16 && x2.size(1) % 8 == 0 &&
         aligned16(x2.raw()) && bf16_mats(w2) && w2.size() == w.size();
}

void grouped_gemm2(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const Tensor& x2,
                   const std::vector<Tensor>& w2, const std::vector<int64_t>& offsets) {
  const HostTables h = upload_tables(w, &w2, offsets, 1);
  GemmParams p = table_params(h, x, out.size(1));
  p.out = out.raw();
  p.x2 = static_cast<const bf16*>(x2.raw());
  p.K2 = int(x2.size(1));
  with_act(out.dtype(), "grouped_gemm2", [&](auto o) {
    launch<decltype(o), Epi::Plain>(p, h.n_tiles, "grouped_gemm (two operand pairs)");
  });
}

bool grouped_swiglu_applies(const Tensor& x, const std::vector<Tensor>& wg, const std::vector<Tensor>& wu) {
  return x.dtype() == DType::BF16 && x.size(1) % 8 == 0 && aligned16(x.raw()) && bf16_mats(wg) &&
         bf16_mats(wu) && !wg.empty() && wg[0].size(0) % 2 == 0;
}

void grouped_swiglu(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                    const std::vector<Tensor>& wu, const std::vector<int64_t>& offsets) {
  const HostTables t = upload_tables(wg, &wu, offsets, 1);
  GemmParams p = table_params(t, x, h.size(1));
  p.out = h.raw();
  p.g_out = g.defined() ? static_cast<bf16*>(g.raw()) : nullptr;
  p.u_out = u.defined() ? static_cast<bf16*>(u.raw()) : nullptr;
  with_act(h.dtype(), "grouped_swiglu", [&](auto o) {
    launch<decltype(o), Epi::SwiGlu>(p, t.n_tiles, "grouped_gemm (swiglu, training)");
  });
}

void grouped_swiglu_bwd(Tensor dg, Tensor du, const Tensor& dy, const std::vector<Tensor>& wt,
                        const Tensor& g, const Tensor& u, const std::vector<int64_t>& offsets) {
  const HostTables t = upload_tables(wt, nullptr, offsets, 1);
  GemmParams p = table_params(t, dy, g.size(1));
  p.g = static_cast<const bf16*>(g.raw());
  p.u = static_cast<const bf16*>(u.raw());
  p.dg = static_cast<bf16*>(dg.raw());
  p.du = static_cast<bf16*>(du.raw());
  launch<bf16, Epi::SwiGluBwd>(p, t.n_tiles, "grouped_gemm (swiglu backward)");
}

}  // namespace dseek::ops::cuda
