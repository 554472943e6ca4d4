// flash_attention_bwd.cu — the training attention's backward on the GPU (ops/flash_attention.h
// mla_flash_bwd; spec/model.md §2.2 splits), FlashAttention-2 style: the probabilities are rebuilt tile
// by tile from the forward's log-sum-exp, never stored. Two deterministic passes instead of atomics:
//   1. prep: D = rowsum(dO ⊙ O) per row and head, and dO in bf16;
//   2. dk/dv: a block owns 64 keys of one head (4 warps × 16), walks the query tiles at and after them
//      (Q and dO in two cp.async stages) and accumulates dV += Pᵀ·dO, dK += dSᵀ·Q in registers;
//   3. dq: a block owns 64 queries of one head, walks the key tiles up to them and accumulates dQ += dS·K;
//   4. the rope-key gradient summed over the heads in head order.
// Products are mma.sync m16n8k16 with bf16 operands (P and dS rounded to bf16 as operands) and f32
// accumulation; P = exp2(scale·log2e·s − lse·log2e), dS = P ⊙ (dP − D).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/flash_common.cuh"
#include "ops/cuda/mma.cuh"

namespace dseek::ops::cuda {

namespace {

using flash::pack2;
using flash::round16;
using flash::Tile;

constexpr int kRows = 64;  // queries or keys per tile: 4 warps × 16
constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory tiles (bf16): [64][LDQ] for q-width rows (k or q, padded to 16 columns, +8 to stagger
// the banks), [64][LDV] for v-width rows (v or dO).
template <int DN, int DR, int DV>
struct Dims {
  static constexpr int DQ = DN + DR, DQP = round16(DQ), LDQ = DQP + 8, LDV = DV + 8;
  static constexpr int QT = kRows * LDQ, VT = kRows * LDV;
  // dk/dv pass: K, V, then two stages of (Q, dO), then two stages of (lse·log2e, D) as floats.
  static constexpr size_t dkdv_bytes = size_t(QT + VT + 2 * (QT + VT)) * 2 + 2 * 2 * kRows * sizeof(float);
  // dq pass: Q, dO, then two stages of (K, V).
  static constexpr size_t dq_bytes = size_t(QT + VT + 2 * (QT + VT)) * 2;
  static_assert(DN % 8 == 0 && DR % 8 == 0 && DV % 16 == 0, "head dims: 16-byte rows, 16-wide value tiles");
};

// cp.async copies of `rows` rows of width W (bf16, a multiple of 8) from src (row stride lds) into dst
// (row stride ldd) at column dcol; rows at or past `valid` are zero-filled.
template <int W>
__device__ __forceinline__ void load_rows(bf16* dst, int ldd, int dcol, const bf16* src, int64_t lds,
                                          int valid) {
  constexpr int NC = W / 8;
  for (int i = threadIdx.x; i < kRows * NC; i += kThreads) {
    const int r = i / NC, c = i % NC;
    const bool ok = r < valid;
    cp_async16(dst + r * ldd + dcol + c * 8, src + (ok ? r : 0) * lds + c * 8, ok);
  }
}

// The keys [k_nope | kpe] into K and the values into V of `n` key rows (both passes): kv_row points at the
// first row's head slice of kv [·, H, DN + DV] (row stride ldkv), pe_row at its kpe row.
template <int DN, int DR, int DV, int LDQ, int LDV>
__device__ __forceinline__ void load_kv_tile(bf16* K, bf16* V, const bf16* kv_row, int64_t ldkv,
                                             const bf16* pe_row, int n) {
  load_rows<DN>(K, LDQ, 0, kv_row, ldkv, n);
  load_rows<DR>(K, LDQ, DN, pe_row, DR, n);
  load_rows<DV>(V, LDV, 0, kv_row + DN, ldkv, n);
}

// Zeroes an accumulator of NT n-tiles.
template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// Zeroes the padding columns [DQ, DQP) of a q-width tile (cp.async never writes them).
template <int DQ, int DQP, int LDQ>
__device__ __forceinline__ void zero_pad(bf16* t) {
  if constexpr (DQP > DQ)
    for (int i = threadIdx.x; i < kRows * (DQP - DQ); i += kThreads)
      t[(i / (DQP - DQ)) * LDQ + DQ + i % (DQP - DQ)] = __float2bfloat16_rn(0.0f);
}

// acc[16 × 8·NT] += A[16 × 16·KS] · Bᵀ where A's rows are 16 rows of a row-major tile (k contiguous) and
// B's rows (n) are rows of another row-major tile (k contiguous): both by ldmatrix without transposing.
template <int KS, int NT>
__device__ __forceinline__ void mma_nt(float (&acc)[NT][4], const bf16* A, int lda, const bf16* B, int ldb) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, A + (lane & 15) * lda + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      uint32_t b[4];  // b[0], b[1]: n-tile n; b[2], b[3]: n-tile n + 1
      ldsm_x4(b, B + (n * 8 + (lane & 7) + (lane >> 4) * 8) * ldb + kk * 16 + ((lane >> 3) & 1) * 8);
      mma16816<bf16>(acc[n], a, b[0], b[1]);
      mma16816<bf16>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 × 8·NT] += P[16 × 16·KS] · B where P is in registers in the accumulator layout (k = its columns,
// rounded to bf16 here) and B [16·KS, 8·NT] a row-major tile (n contiguous), transposed by ldmatrix.
template <int KS, int NT, int NP>
__device__ __forceinline__ void mma_pn(float (&acc)[NT][4], const float (&p)[NP][4], const bf16* B, int ldb) {
  static_assert(NP == 2 * KS, "P holds 16·KS columns");
  const int lane = threadIdx.x & 31, mi = lane >> 3, ri = lane & 7;
#pragma unroll
  for (int j = 0; j < KS; ++j) {
    const uint32_t a[4] = {pack2<bf16>(p[2 * j][0], p[2 * j][1]), pack2<bf16>(p[2 * j][2], p[2 * j][3]),
                           pack2<bf16>(p[2 * j + 1][0], p[2 * j + 1][1]),
                           pack2<bf16>(p[2 * j + 1][2], p[2 * j + 1][3])};
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      uint32_t b[4];
      ldsm_x4<true>(b, B + (j * 16 + (mi & 1) * 8 + ri) * ldb + n * 8 + (mi >> 1) * 8);
      mma16816<bf16>(acc[n], a, b[0], b[1]);
      mma16816<bf16>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

// dob [N, H, DV] = bf16(d_o); Dsum [H, N] = Σ_c d_o · o: a warp per (row, head), grid-strided.
template <typename TG, typename TO>
__global__ void bwd_prep_kernel(bf16* __restrict__ dob, float* __restrict__ Dsum, const TG* __restrict__ d_o,
                                const TO* __restrict__ o, int64_t N, int H, int DV) {
  const int lane = threadIdx.x & 31;
  const int64_t nw = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; w < N * H; w += nw) {
    const int64_t row = w / H;
    const int h = int(w % H);
    float s = 0.0f;
    for (int c = lane; c < DV; c += 32) {
      const float g = ld(d_o[w * DV + c]);
      dob[w * DV + c] = __float2bfloat16_rn(g);
      s += g * ld(o[w * DV + c]);
    }
    s = warp_sum(s);
    if (lane == 0) Dsum[int64_t(h) * N + row] = s;
  }
}

// Pass 2: dK and dV of 64 keys of one head. dkv [N, H, DN + DV] gets [dk_nope | dv] (TK f32, or bf16 when
// only kv_b's bf16 backward reads it), dpe_h [N, H, DR] the head's rope-key part.
template <int DN, int DR, int DV, typename TK>
__global__ void __launch_bounds__(kThreads)
    flash_dkdv_kernel(TK* __restrict__ dkv, float* __restrict__ dpe_h, const bf16* __restrict__ q,
                      const bf16* __restrict__ kv, const bf16* __restrict__ kpe, const bf16* __restrict__ dob,
                      const float* __restrict__ lse, const float* __restrict__ Dsum,
                      const Tile* __restrict__ tiles, const int64_t* __restrict__ cu, int H, int64_t N,
                      float scale_log2, float scale) {
  using L = Dims<DN, DR, DV>;
  constexpr int DQ = L::DQ, DQP = L::DQP, LDQ = L::LDQ, LDV = L::LDV;
  constexpr int NQ = kRows / 8;  // n-tiles over a query tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + L::QT;
  auto Qst = [&](int st) { return Vs + L::VT + st * (L::QT + L::VT); };
  auto Ost = [&](int st) { return Qst(st) + L::QT; };
  float* stats = reinterpret_cast<float*>(Vs + L::VT + 2 * (L::QT + L::VT));  // [2][lse2 64 | D 64]

  const Tile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int64_t r0 = cu[tile.b];
  const int len = int(cu[tile.b + 1] - r0), k0 = tile.r0, nk = min(kRows, len - k0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t ldq = int64_t(H) * DQ, ldkv = int64_t(H) * (DN + DV), ldo = int64_t(H) * DV;
  const int nqt = (len - k0 + kRows - 1) / kRows;  // query tiles from the diagonal on

  // K = [k_nope | kpe] and V of this tile's keys.
  load_kv_tile<DN, DR, DV, LDQ, LDV>(Ks, Vs, kv + (r0 + k0) * ldkv + int64_t(h) * (DN + DV), ldkv,
                                     kpe + (r0 + k0) * DR, nk);
  auto load_q = [&](int t, int st) {
    const int q0 = k0 + t * kRows, n = min(kRows, len - q0);
    load_rows<DQ>(Qst(st), LDQ, 0, q + (r0 + q0) * ldq + int64_t(h) * DQ, ldq, n);
    load_rows<DV>(Ost(st), LDV, 0, dob + (r0 + q0) * ldo + int64_t(h) * DV, ldo, n);
    cp_async_commit();
    float* sl = stats + st * 2 * kRows;
    for (int r = tid; r < kRows; r += kThreads) {  // rows past the sequence: P = 0
      const bool ok = r < n;
      sl[r] = ok ? lse[int64_t(h) * N + r0 + q0 + r] * kLog2e : INFINITY;
      sl[kRows + r] = ok ? Dsum[int64_t(h) * N + r0 + q0 + r] : 0.0f;
    }
  };
  load_q(0, 0);  // the K/V copies are in this first group too
  zero_pad<DQ, DQP, LDQ>(Ks);
  zero_pad<DQ, DQP, LDQ>(Qst(0));
  zero_pad<DQ, DQP, LDQ>(Qst(1));

  float dk[DQP / 8][4], dv[DV / 8][4];
  zero(dk);
  zero(dv);
  const int key_a = k0 + warp * 16 + g, key_b = key_a + 8;  // this thread's two keys (sequence positions)

  for (int t = 0; t < nqt; ++t) {
    const int st = t & 1, q0 = k0 + t * kRows;
    if (t + 1 < nqt) {
      load_q(t + 1, st ^ 1);  // that stage was released by the barrier that ended the last tile
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* Q = Qst(st);
    const bf16* dO = Ost(st);
    const float* lse2 = stats + st * 2 * kRows;
    const float* Ds = lse2 + kRows;
    // Sᵀ = K_w · Qᵀ: this warp's 16 keys × 64 queries; Pᵀ = exp2(Sᵀ·scale·log2e − lse2), causal on the
    // diagonal tile (t = 0, where queries and keys share positions).
    float s[NQ][4];
    zero(s);
    mma_nt<DQP / 16, NQ>(s, Ks + warp * 16 * LDQ, LDQ, Q, LDQ);
#pragma unroll
    for (int n = 0; n < NQ; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = n * 8 + 2 * tig + (e & 1);
        const int key = e < 2 ? key_a : key_b;
        const float p = exp2f(fmaf(s[n][e], scale_log2, -lse2[qc]));
        s[n][e] = (t == 0 && key > q0 + qc) ? 0.0f : p;
      }
    // dV += Pᵀ · dO
    mma_pn<kRows / 16, DV / 8>(dv, s, dO, LDV);
    // dPᵀ = V_w · dOᵀ, then dSᵀ = Pᵀ ⊙ (dPᵀ − D)
    float dp[NQ][4];
    zero(dp);
    mma_nt<DV / 16, NQ>(dp, Vs + warp * 16 * LDV, LDV, dO, LDV);
#pragma unroll
    for (int n = 0; n < NQ; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[n][e] = s[n][e] * (dp[n][e] - Ds[n * 8 + 2 * tig + (e & 1)]);
    // dK += dSᵀ · Q
    mma_pn<kRows / 16, DQP / 8>(dk, dp, Q, LDQ);
    __syncthreads();  // this stage may be refilled by the next iteration's copies
  }
  // Write this thread's two keys: dk (times the softmax scale) split into k_nope and the rope part, dv.
#pragma unroll
  for (int hb = 0; hb < 2; ++hb) {
    const int key = hb ? key_b : key_a;
    if (key >= len) continue;
    const int64_t row = r0 + key;
    TK* dst = dkv + (row * H + h) * (DN + DV);
    float* pe = dpe_h + (row * H + h) * DR;
#pragma unroll
    for (int n = 0; n < DQP / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = n * 8 + 2 * tig + e;
        const float v = dk[n][2 * hb + e] * scale;
        if (c < DN) {
          dst[c] = st<TK>(v);
        } else if (c < DQ) {
          pe[c - DN] = v;
        }
      }
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) {
      dst[DN + n * 8 + 2 * tig] = st<TK>(dv[n][2 * hb]);
      dst[DN + n * 8 + 2 * tig + 1] = st<TK>(dv[n][2 * hb + 1]);
    }
  }
}

// Pass 3: dQ of 64 queries of one head, dq [N, H, DQ].
template <int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads)
    flash_dq_kernel(float* __restrict__ dq, const bf16* __restrict__ q, const bf16* __restrict__ kv,
                    const bf16* __restrict__ kpe, const bf16* __restrict__ dob, const float* __restrict__ lse,
                    const float* __restrict__ Dsum, const Tile* __restrict__ tiles,
                    const int64_t* __restrict__ cu, int H, int64_t N, float scale_log2, float scale) {
  using L = Dims<DN, DR, DV>;
  constexpr int DQ = L::DQ, DQP = L::DQP, LDQ = L::LDQ, LDV = L::LDV;
  constexpr int NK = kRows / 8;  // n-tiles over a key tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Os = Qs + L::QT;
  auto Kst = [&](int st) { return Os + L::VT + st * (L::QT + L::VT); };
  auto Vst = [&](int st) { return Kst(st) + L::QT; };

  const Tile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int64_t r0 = cu[tile.b];
  const int len = int(cu[tile.b + 1] - r0), q0 = tile.r0, nq = min(kRows, len - q0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t ldq = int64_t(H) * DQ, ldkv = int64_t(H) * (DN + DV), ldo = int64_t(H) * DV;
  const int nkt = q0 / kRows + 1;  // key tiles up to and including the diagonal

  load_rows<DQ>(Qs, LDQ, 0, q + (r0 + q0) * ldq + int64_t(h) * DQ, ldq, nq);
  load_rows<DV>(Os, LDV, 0, dob + (r0 + q0) * ldo + int64_t(h) * DV, ldo, nq);
  auto load_k = [&](int t, int st) {
    const int k0 = t * kRows, n = min(kRows, len - k0);
    load_kv_tile<DN, DR, DV, LDQ, LDV>(Kst(st), Vst(st), kv + (r0 + k0) * ldkv + int64_t(h) * (DN + DV), ldkv,
                                       kpe + (r0 + k0) * DR, n);
    cp_async_commit();
  };
  load_k(0, 0);  // the Q/dO copies are in this first group too
  zero_pad<DQ, DQP, LDQ>(Qs);
  zero_pad<DQ, DQP, LDQ>(Kst(0));
  zero_pad<DQ, DQP, LDQ>(Kst(1));

  const int row_a = warp * 16 + g, row_b = row_a + 8;  // within the tile
  const float lse_a = row_a < nq ? lse[int64_t(h) * N + r0 + q0 + row_a] * kLog2e : INFINITY,
              lse_b = row_b < nq ? lse[int64_t(h) * N + r0 + q0 + row_b] * kLog2e : INFINITY;
  const float D_a = row_a < nq ? Dsum[int64_t(h) * N + r0 + q0 + row_a] : 0.0f,
              D_b = row_b < nq ? Dsum[int64_t(h) * N + r0 + q0 + row_b] : 0.0f;
  float acc[DQP / 8][4];
  zero(acc);

  for (int t = 0; t < nkt; ++t) {
    const int st = t & 1, k0 = t * kRows;
    if (t + 1 < nkt) {
      load_k(t + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* K = Kst(st);
    const bf16* V = Vst(st);
    // S = Q_w · Kᵀ: 16 queries × 64 keys; P = exp2(S·scale·log2e − lse2), causal on the diagonal tile.
    float s[NK][4];
    zero(s);
    mma_nt<DQP / 16, NK>(s, Qs + warp * 16 * LDQ, LDQ, K, LDQ);
    const bool diag = t == nkt - 1;
#pragma unroll
    for (int n = 0; n < NK; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + n * 8 + 2 * tig + (e & 1);
        const int row = q0 + (e < 2 ? row_a : row_b);
        const float p = exp2f(fmaf(s[n][e], scale_log2, -(e < 2 ? lse_a : lse_b)));
        s[n][e] = (diag && key > row) ? 0.0f : p;
      }
    // dP = dO_w · Vᵀ, dS = P ⊙ (dP − D)
    float dp[NK][4];
    zero(dp);
    mma_nt<DV / 16, NK>(dp, Os + warp * 16 * LDV, LDV, V, LDV);
#pragma unroll
    for (int n = 0; n < NK; ++n) {
      dp[n][0] = s[n][0] * (dp[n][0] - D_a);
      dp[n][1] = s[n][1] * (dp[n][1] - D_a);
      dp[n][2] = s[n][2] * (dp[n][2] - D_b);
      dp[n][3] = s[n][3] * (dp[n][3] - D_b);
    }
    // dQ += dS · K
    mma_pn<kRows / 16, DQP / 8>(acc, dp, K, LDQ);
    __syncthreads();
  }
#pragma unroll
  for (int hb = 0; hb < 2; ++hb) {
    const int row = hb ? row_b : row_a;
    if (row >= nq) continue;
    float* dst = dq + ((r0 + q0 + row) * H + h) * DQ;
#pragma unroll
    for (int n = 0; n < DQP / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = n * 8 + 2 * tig + e;
        if (c < DQ) dst[c] = acc[n][2 * hb + e] * scale;
      }
  }
}

// Pass 4: dkpe [N, R] = Σ_h dpe_h [N, H, R], heads in order.
__global__ void head_sum_kernel(float* __restrict__ dkpe, const float* __restrict__ dpe_h, int64_t N, int H,
                                int R) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * R;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / R;
    const int c = int(i % R);
    float s = 0.0f;
    for (int h = 0; h < H; ++h) s += dpe_h[(row * H + h) * R + c];
    dkpe[i] = s;
  }
}

template <typename Kernel>
void allow_smem(Kernel k, size_t bytes, const char* what) {
  if (bytes > 48 * 1024)
    DSEEK_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}

template <int DN, int DR, int DV>
void launch_bwd(Tensor dq, Tensor dkv, Tensor dkpe, const Tensor& dob, const Tensor& Dsum, const Tensor& lse,
                const Tensor& q, const Tensor& kv, const Tensor& kpe, const std::vector<int64_t>& cu,
                float scale) {
  using L = Dims<DN, DR, DV>;
  auto dkdv = flash_dkdv_kernel<DN, DR, DV, float>;
  auto dkdv_b = flash_dkdv_kernel<DN, DR, DV, bf16>;
  auto dqk = flash_dq_kernel<DN, DR, DV>;
  static const bool set = [&] {  // once per instantiation
    allow_smem(dkdv, L::dkdv_bytes, "mla_flash_bwd: shared memory (dk/dv)");
    allow_smem(dkdv_b, L::dkdv_bytes, "mla_flash_bwd: shared memory (dk/dv)");
    allow_smem(dqk, L::dq_bytes, "mla_flash_bwd: shared memory (dq)");
    return true;
  }();
  (void)set;
  const int64_t N = q.size(0);
  const int H = int(q.size(1));
  const float scale_log2 = scale * kLog2e;
  // Key tiles, most work first (the earliest keys are seen by the most queries); then query tiles, most
  // work first (the latest queries see the most keys). One upload for both lists.
  std::vector<Tile> ktiles, qtiles;
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t r = 0; r < cu[b + 1] - cu[b]; r += kRows) {
      ktiles.push_back({int(b), int(r)});
      qtiles.push_back({int(b), int(r)});
    }
  if (ktiles.empty()) return;
  auto remaining = [&](const Tile& x) { return cu[size_t(x.b) + 1] - cu[size_t(x.b)] - x.r0; };
  std::stable_sort(ktiles.begin(), ktiles.end(),
                   [&](const Tile& x, const Tile& y) { return remaining(x) > remaining(y); });
  std::stable_sort(qtiles.begin(), qtiles.end(), [](const Tile& x, const Tile& y) { return x.r0 > y.r0; });
  std::vector<Tile> both(ktiles);
  both.insert(both.end(), qtiles.begin(), qtiles.end());
  const flash::TileList dev = flash::upload_tiles(cu, cu, both);
  const unsigned nt = unsigned(ktiles.size());
  Tensor dpe_h = Tensor::empty({N, H, DR}, DType::F32, Device::CUDA);  // dpe_h: [N, H, R] per head
  const auto* qp = static_cast<const bf16*>(q.raw());
  const auto* kvp = static_cast<const bf16*>(kv.raw());
  const auto* pep = static_cast<const bf16*>(kpe.raw());
  const auto* dop = static_cast<const bf16*>(dob.raw());
  if (dkv.dtype() == DType::BF16) {
    dkdv_b<<<dim3(nt, unsigned(H)), kThreads, L::dkdv_bytes>>>(
        static_cast<bf16*>(dkv.raw()), dpe_h.data<float>(), qp, kvp, pep, dop, lse.data<float>(),
        Dsum.data<float>(), dev.tiles, dev.cu_q, H, N, scale_log2, scale);
  } else {
    dkdv<<<dim3(nt, unsigned(H)), kThreads, L::dkdv_bytes>>>(dkv.data<float>(), dpe_h.data<float>(), qp, kvp,
                                                             pep, dop, lse.data<float>(), Dsum.data<float>(),
                                                             dev.tiles, dev.cu_q, H, N, scale_log2, scale);
  }
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_bwd (dk/dv)");
  dqk<<<dim3(nt, unsigned(H)), kThreads, L::dq_bytes>>>(dq.data<float>(), qp, kvp, pep, dop,
                                                        lse.data<float>(), Dsum.data<float>(), dev.tiles + nt,
                                                        dev.cu_q, H, N, scale_log2, scale);
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_bwd (dq)");
  head_sum_kernel<<<blocks_for(N * DR, 256), 256>>>(dkpe.data<float>(), dpe_h.data<float>(), N, H, DR);
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_bwd (rope-key head sum)");
}

}  // namespace

void mla_flash_bwd(Tensor dq, Tensor dkv, Tensor dkpe, const Tensor& d_o, const Tensor& o, const Tensor& lse,
                   const Tensor& q, const Tensor& kv, const Tensor& kpe, const std::vector<int64_t>& cu,
                   double scale) {
  const int64_t N = q.size(0), H = q.size(1), dv = d_o.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  if (N == 0) return;
  Tensor dob = Tensor::empty({N, H, dv}, DType::BF16, Device::CUDA);  // dob: [N, H, dv] dO as an operand
  Tensor Dsum = Tensor::empty({H, N}, DType::F32, Device::CUDA);      // Dsum: [H, N] rowsum(dO ⊙ O)
  with_act(d_o.dtype(), "mla_flash_bwd (prep)", [&](auto tg) {
    with_act(o.dtype(), "mla_flash_bwd (prep)", [&](auto to) {
      using Tg = decltype(tg);
      using To = decltype(to);
      bwd_prep_kernel<Tg, To><<<blocks_for(N * H * 32, 256), 256>>>(
          static_cast<bf16*>(dob.raw()), Dsum.data<float>(), static_cast<const Tg*>(d_o.raw()),
          static_cast<const To*>(o.raw()), N, int(H), int(dv));
    });
  });
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_bwd (prep)");
  const bool done = flash::with_head_dims(dn, R, dv, [&](auto DN, auto DR, auto DV) {
    launch_bwd<decltype(DN)::value, decltype(DR)::value, decltype(DV)::value>(dq, dkv, dkpe, dob, Dsum, lse,
                                                                              q, kv, kpe, cu, float(scale));
  });
  DSEEK_CHECK(done, "mla_flash_bwd: no kernel for head dims ", dn, "/", R, "/", dv);
}

}  // namespace dseek::ops::cuda
