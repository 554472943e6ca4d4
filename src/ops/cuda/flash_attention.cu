// flash_attention.cu — causal MLA prefill attention on the GPU (ops/flash_attention.h; spec/model.md §2.2,
// §2.6) and the training forward (bf16 operands, each row's log-sum-exp kept for the backward in
// flash_attention_bwd.cu), flash-style: a block takes 128 query rows of one head (64 for the wide V3 head
// dims), walks the visible keys in tiles of 64 with an online softmax, and never writes the score matrix.
// Both products run on the tensor cores (mma.sync m16n8k16, f32 accumulation; fp16 operands for inference —
// ops/flash_attention.h says why not bf16 — and bf16 for training); keys [k_nope | k_pe] and values are read
// in place from the kv_b_proj output and the rope-key rows (in the operand type), staged through shared
// memory with cp.async in two stages; Q, K and V fragments by ldmatrix. Eight warps per block (four for the
// wide dims), 16 query rows each. Head dims other than the instantiated ones, and f32 operands, take the
// exact per-row kernel of attention.cu after assembling k and v.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <cuda_fp16.h>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/flash_common.cuh"
#include "ops/cuda/mma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int kBc = 64;  // keys per tile

using flash::pack2;
using flash::round16;
using flash::Tile;
using flash::to_op;
using flash::with_head_dims;

// Warps per block (16 query rows each) for the head dims: 8 where the fragments fit in 128 registers (two
// blocks per SM), else 4.
template <int DN, int DR, int DV>
constexpr int warps_for() {
  return round16(DN + DR) + DV <= 192 ? 8 : 4;
}

// Shared memory (fp16): Q [BR][LDQ], then two stages of K [64][LDQ] and V [64][LDV] (row-major, keys
// down); the +8 columns stagger the banks and keep every row 16-byte aligned.
template <int DN, int DR, int DV>
struct Layout {
  static constexpr int WARPS = warps_for<DN, DR, DV>(), THREADS = 32 * WARPS, BR = 16 * WARPS;
  static constexpr int DQ = DN + DR, DQP = round16(DQ);
  static constexpr int LDQ = DQP + 8, LDV = DV + 8;
  static constexpr int Q_ELEMS = BR * LDQ, K_ELEMS = kBc * LDQ, V_ELEMS = kBc * LDV;
  static constexpr size_t bytes = size_t(Q_ELEMS + 2 * (K_ELEMS + V_ELEMS)) * sizeof(half);
};

// The tensor-core path: kv [S, H, DN + DV] and kpe [S, DR] in the operand type OP (fp16 for inference,
// bf16 for training; copied to shared memory with cp.async, two stages, so the next tile's loads overlap
// this tile's products); q and out of the activation types T and TO. lse (when not null) [H, n_rows] gets
// each row's natural-log sum of exp(scale · score) (training).
template <typename T, typename TO, typename OP, int DN, int DR, int DV>
__global__ void __launch_bounds__(Layout<DN, DR, DV>::THREADS, Layout<DN, DR, DV>::WARPS == 8 ? 2 : 1)
    mla_flash_kernel(TO* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                     const OP* __restrict__ kv, const OP* __restrict__ kpe, const Tile* __restrict__ tiles,
                     const int64_t* __restrict__ cu_q, const int64_t* __restrict__ cu_k, int H,
                     int64_t n_rows, float scale_log2) {
  using Lay = Layout<DN, DR, DV>;
  constexpr int DQ = Lay::DQ, DQP = Lay::DQP, LDQ = Lay::LDQ, LDV = Lay::LDV, BR = Lay::BR,
                THREADS = Lay::THREADS;
  static_assert(DN % 8 == 0 && DR % 8 == 0 && DV % 16 == 0, "head dims: 16-byte rows, 16-wide value tiles");
  constexpr int NT_S = kBc / 8;  // score n-tiles per warp (keys)
  constexpr int NT_O = DV / 8;   // output n-tiles per warp (value dims)
  constexpr int KQ = DQP / 16;   // k-steps of the score product
  extern __shared__ __align__(16) unsigned char smem_raw[];
  OP* Qs = reinterpret_cast<OP*>(smem_raw);
  // Stage st: K at Kst(st), V right after it (computed, not indexed, so nothing lands in local memory).
  auto Kst = [&](int st) { return Qs + Lay::Q_ELEMS + st * (Lay::K_ELEMS + Lay::V_ELEMS); };
  auto Vst = [&](int st) { return Kst(st) + Lay::K_ELEMS; };

  const Tile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int64_t qr0 = cu_q[tile.b], kr0 = cu_k[tile.b];
  const int Lq = int(cu_q[tile.b + 1] - qr0), Lk = int(cu_k[tile.b + 1] - kr0);
  const int off = Lk - Lq;  // position of query row 0
  const int q0 = tile.r0, nq = min(BR, Lq - q0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t ldq = int64_t(H) * DQ;
  const int ldkv = H * (DN + DV);
  const int last_visible = off + q0 + nq - 1;  // the last key any row of the block sees
  const int ntiles = last_visible / kBc + 1;
  const OP* kv_h = kv + kr0 * ldkv + h * (DN + DV);  // key row 0 of this sequence, this head
  const OP* pe_0 = kpe + kr0 * DR;

  // Issues the cp.async copies of key tile t into stage st: per row DN/8 chunks of k_nope, DR/8 of kpe,
  // DV/8 of v, one loop per part so a warp's lanes take the same path (rows past the sequence are
  // zero-filled).
  auto load_tile = [&](int t, int st) {
    constexpr int CK = DN / 8, CP = DR / 8, CV = DV / 8;
    const int k0 = t * kBc;
    const OP* kvt = kv_h + int64_t(k0) * ldkv;  // this tile's first key row
    const OP* pet = pe_0 + int64_t(k0) * DR;
    OP* Kd = Kst(st);
    OP* Vd = Vst(st);
    auto part = [&](auto chunks, OP* dst, int ldd, int dcol, const OP* src, int lds, int scol) {
      constexpr int NC = decltype(chunks)::value;
#pragma unroll
      for (int j = 0; j < (kBc * NC + THREADS - 1) / THREADS; ++j) {
        const int i = tid + j * THREADS;
        if (kBc * NC % THREADS != 0 && i >= kBc * NC) break;
        const int r = i / NC, c = i % NC;
        const bool valid = k0 + r < Lk;
        cp_async16(dst + r * ldd + dcol + c * 8, src + (valid ? r : 0) * lds + scol + c * 8, valid);
      }
    };
    part(std::integral_constant<int, CK>{}, Kd, LDQ, 0, kvt, ldkv, 0);
    part(std::integral_constant<int, CP>{}, Kd, LDQ, DN, pet, DR, 0);
    part(std::integral_constant<int, CV>{}, Vd, LDV, 0, kvt, ldkv, DN);
    cp_async_commit();
  };
  load_tile(0, 0);

  // Q tile, rounded to the operand type (rows past the sequence and the padding columns are zero); the
  // padding columns of both K stages are zeroed once (cp.async never writes them).
  for (int i = tid; i < BR * DQP; i += THREADS) {
    const int r = i / DQP, c = i % DQP;
    float x = 0.0f;
    if (r < nq && c < DQ) x = ld(q[(qr0 + q0 + r) * ldq + int64_t(h) * DQ + c]);
    Qs[r * LDQ + c] = to_op<OP>(x);
  }
  if constexpr (DQP > DQ) {
    for (int i = tid; i < 2 * kBc * (DQP - DQ); i += THREADS) {
      const int st = i / (kBc * (DQP - DQ)), j = i % (kBc * (DQP - DQ));
      Kst(st)[(j / (DQP - DQ)) * LDQ + DQ + j % (DQP - DQ)] = to_op<OP>(0.0f);
    }
  }
  __syncthreads();
  const int row_a = warp * 16 + g, row_b = row_a + 8;  // this thread's two rows within the tile
  const int pos_a = off + q0 + row_a, pos_b = off + q0 + row_b;
  const int warp_last = min(off + q0 + warp * 16 + 15, last_visible);
  const bool warp_active = warp * 16 < nq;
  uint32_t aq[KQ][4];  // this warp's Q fragments, kept in registers for every tile
#pragma unroll
  for (int kk = 0; kk < KQ; ++kk)
    ldsm_x4(aq[kk], Qs + (warp * 16 + (lane & 15)) * LDQ + kk * 16 + (lane >> 4) * 8);
  float o[NT_O][4];
#pragma unroll
  for (int n = 0; n < NT_O; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  // Running maxima in raw score units (scaled at the exponent), and the rows' denominators.
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  for (int t = 0; t < ntiles; ++t) {
    const int st = t & 1, k0 = t * kBc;
    if (t + 1 < ntiles) {
      load_tile(t + 1, st ^ 1);  // that stage was released by the barrier that ended the last tile
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (warp_active && k0 <= warp_last) {
      const OP* K = Kst(st);
      const OP* V = Vst(st);
      // S = Q_w · K_tileᵀ: 16 rows × 64 keys per warp; K's B fragments by ldmatrix, two key n-tiles each.
      float s[NT_S][4];
#pragma unroll
      for (int n = 0; n < NT_S; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KQ; ++kk) {
#pragma unroll
        for (int n = 0; n < NT_S; n += 2) {
          uint32_t b[4];  // b[0], b[1]: keys n·8 .. + 7; b[2], b[3]: the next 8 keys
          ldsm_x4(b, K + (n * 8 + (lane & 7) + (lane >> 4) * 8) * LDQ + kk * 16 + ((lane >> 3) & 1) * 8);
          mma16816<OP>(s[n], aq[kk], b[0], b[1]);
          mma16816<OP>(s[n + 1], aq[kk], b[2], b[3]);
        }
      }
      // Causal mask (only the tiles that reach past a row's position need it) and the online softmax in
      // the log2 domain; each row's 64 scores live in the 4 threads of its quad.
      const bool full = k0 + kBc - 1 <= off + q0 + warp * 16 && k0 + kBc <= Lk;
      if (!full) {
#pragma unroll
        for (int n = 0; n < NT_S; ++n) {
          const int key = k0 + n * 8 + 2 * tig;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const bool keep = key + e < Lk;
            if (!(keep && key + e <= pos_a)) s[n][e] = -INFINITY;
            if (!(keep && key + e <= pos_b)) s[n][2 + e] = -INFINITY;
          }
        }
      }
      float mx_a = m_a, mx_b = m_b;
#pragma unroll
      for (int n = 0; n < NT_S; ++n) {
        mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
        mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
      }
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
      // A row with nothing visible yet keeps max −inf; 0 as its reference makes exp2 give 0, not NaN.
      const float ref_a = mx_a == -INFINITY ? 0.0f : mx_a * scale_log2,
                  ref_b = mx_b == -INFINITY ? 0.0f : mx_b * scale_log2;
      const float alpha_a = exp2f(fmaf(m_a, scale_log2, -ref_a)),
                  alpha_b = exp2f(fmaf(m_b, scale_log2, -ref_b));
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int n = 0; n < NT_S; ++n) {
        s[n][0] = exp2f(fmaf(s[n][0], scale_log2, -ref_a));
        s[n][1] = exp2f(fmaf(s[n][1], scale_log2, -ref_a));
        s[n][2] = exp2f(fmaf(s[n][2], scale_log2, -ref_b));
        s[n][3] = exp2f(fmaf(s[n][3], scale_log2, -ref_b));
        sum_a += s[n][0] + s[n][1];
        sum_b += s[n][2] + s[n][3];
      }
      // The partial sums stay per thread; the quad adds them once at the end.
      l_a = l_a * alpha_a + sum_a;
      l_b = l_b * alpha_b + sum_b;
      m_a = mx_a;
      m_b = mx_b;
#pragma unroll
      for (int n = 0; n < NT_O; ++n) {
        o[n][0] *= alpha_a;
        o[n][1] *= alpha_a;
        o[n][2] *= alpha_b;
        o[n][3] *= alpha_b;
      }
      // O += P · V_tile: the score accumulators are already in the A-operand layout, 16 keys per step;
      // V's B fragments come transposed out of its row-major tile, two value n-tiles per ldmatrix.
      const int mi = lane >> 3, ri = lane & 7;
#pragma unroll
      for (int j = 0; j < kBc / 16; ++j) {
        const uint32_t a[4] = {pack2<OP>(s[2 * j][0], s[2 * j][1]), pack2<OP>(s[2 * j][2], s[2 * j][3]),
                               pack2<OP>(s[2 * j + 1][0], s[2 * j + 1][1]),
                               pack2<OP>(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
        for (int n = 0; n < NT_O; n += 2) {
          uint32_t b[4];  // b[0], b[1]: value n-tile n; b[2], b[3]: n-tile n + 1
          ldsm_x4<true>(b, V + (j * 16 + (mi & 1) * 8 + ri) * LDV + n * 8 + (mi >> 1) * 8);
          mma16816<OP>(o[n], a, b[0], b[1]);
          mma16816<OP>(o[n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this stage may be refilled by the next iteration's copies
  }
  // Each row's denominator is spread over its quad (per-thread partial sums, rescaled alike): add them.
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  // The rows' log-sum-exp for the backward (natural log: m·scale + ln l), written by one thread of the quad.
  if (lse != nullptr && tig == 0) {
    constexpr float kLn2 = 0.6931471805599453f;
    if (row_a < nq) lse[h * n_rows + qr0 + q0 + row_a] = (m_a * scale_log2 + log2f(l_a)) * kLn2;
    if (row_b < nq) lse[h * n_rows + qr0 + q0 + row_b] = (m_b * scale_log2 + log2f(l_b)) * kLn2;
  }
  // Normalize and write this thread's two rows.
  const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
  const int64_t ldo = int64_t(H) * DV;
#pragma unroll
  for (int n = 0; n < NT_O; ++n) {
    const int c = n * 8 + 2 * tig;
    if (row_a < nq) {
      TO* p = out + (qr0 + q0 + row_a) * ldo + int64_t(h) * DV + c;
      p[0] = st<TO>(o[n][0] * inv_a);
      p[1] = st<TO>(o[n][1] * inv_a);
    }
    if (row_b < nq) {
      TO* p = out + (qr0 + q0 + row_b) * ldo + int64_t(h) * DV + c;
      p[0] = st<TO>(o[n][2] * inv_b);
      p[1] = st<TO>(o[n][3] * inv_b);
    }
  }
}

// k [S, H, dn + R] = [k_nope | kpe], v [S, H, dv] from kv [S, H, dn + dv] and kpe [S, R] (the exact
// path's materialized keys/values).
template <typename T>
__global__ void assemble_kernel(T* k, T* v, const T* kv, const T* kpe, int64_t S, int H, int dn, int R,
                                int dv) {
  const int w = dn + R + dv;
  const int64_t n = S * H * w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t sh = i / w;  // (key, head)
    const int c = int(i % w);
    const T* src = kv + sh * (dn + dv);
    if (c < dn) {
      k[sh * (dn + R) + c] = src[c];
    } else if (c < dn + R) {
      k[sh * (dn + R) + c] = kpe[(sh / H) * R + (c - dn)];
    } else {
      v[sh * dv + (c - dn - R)] = src[c - R];
    }
  }
}

template <typename T, typename TO, typename OP, int DN, int DR, int DV>
void launch_flash(Tensor out, Tensor lse, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                  const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, float scale_log2) {
  using Lay = Layout<DN, DR, DV>;
  auto kernel = mla_flash_kernel<T, TO, OP, DN, DR, DV>;
  static const bool set = [&] {  // once per instantiation; only layouts above 48 KiB need the opt-in
    if (Lay::bytes > 48 * 1024)
      DSEEK_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Lay::bytes)),
          "mla_flash_fwd: shared memory");
    return true;
  }();
  (void)set;
  // Work items, the longest first (later query tiles see more keys), so the tail of the grid is short.
  const size_t B = cu_q.size() - 1;
  std::vector<Tile> tiles;
  for (size_t b = 0; b < B; ++b)
    for (int64_t q0 = 0; q0 < cu_q[b + 1] - cu_q[b]; q0 += Lay::BR) tiles.push_back({int(b), int(q0)});
  auto keys_seen = [&](const Tile& x) {
    const size_t b = size_t(x.b);
    return (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b]) + x.r0;
  };
  std::stable_sort(tiles.begin(), tiles.end(),
                   [&](const Tile& x, const Tile& y) { return keys_seen(x) > keys_seen(y); });
  const flash::TileList dev = flash::upload_tiles(cu_q, cu_k, tiles);  // kept alive until the launch
  const int H = int(q.size(1));
  kernel<<<dim3(unsigned(tiles.size()), unsigned(H)), Lay::THREADS, Lay::bytes>>>(
      static_cast<TO*>(out.raw()), lse.defined() ? lse.data<float>() : nullptr,
      static_cast<const T*>(q.raw()), static_cast<const OP*>(kv.raw()), static_cast<const OP*>(kpe.raw()),
      dev.tiles, dev.cu_q, dev.cu_k, H, q.size(0), scale_log2);
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_fwd");
}

}  // namespace

void mla_flash_fwd(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale,
                   bool fp16_operands) {
  const int64_t H = q.size(1), dv = out.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  if (q.size(0) == 0) return;
  const int64_t B = int64_t(cu_q.size()) - 1;
  if (fp16_operands) {
    const Tensor kvb = kv.dtype() == DType::F16 ? kv : kv.to(DType::F16),
                 peb = kpe.dtype() == DType::F16 ? kpe : kpe.to(DType::F16);
    const float scale_log2 = float(scale * 1.4426950408889634);
    bool done = false;
    with_act(q.dtype(), "mla_flash_fwd", [&](auto t) {
      with_act(out.dtype(), "mla_flash_fwd", [&](auto to) {
        using Tt = decltype(t);
        using To = decltype(to);
        done = with_head_dims(dn, R, dv, [&](auto DN, auto DR, auto DV) {
          launch_flash<Tt, To, __half, decltype(DN)::value, decltype(DR)::value, decltype(DV)::value>(
              out, Tensor(), q, kvb, peb, cu_q, cu_k, scale_log2);
        });
      });
    });
    if (done) return;
    if (out.dtype() != q.dtype()) {  // the exact path writes q's dtype
      Tensor o = Tensor::empty(out.shape(), q.dtype(), Device::CUDA);
      mla_flash_fwd(o, q, kv, kpe, cu_q, cu_k, scale, false);
      out.copy_from(o.to(out.dtype()));
      return;
    }
  }
  // Exact path: assemble the keys/values and run the per-row kernel sequence by sequence.
  const int64_t Nk = kv.size(0);
  const Tensor kvq = kv.dtype() == q.dtype() ? kv : kv.to(q.dtype()),
               peq = kpe.dtype() == q.dtype() ? kpe : kpe.to(q.dtype());
  Tensor k = Tensor::empty({Nk, H, dn + R}, q.dtype(), Device::CUDA),
         v = Tensor::empty({Nk, H, dv}, q.dtype(), Device::CUDA);
  with_act(q.dtype(), "mla_flash_fwd (assemble)", [&](auto t) {
    using Tt = decltype(t);
    assemble_kernel<Tt><<<blocks_for(Nk * H * (dn + R + dv), 256), 256>>>(
        static_cast<Tt*>(k.raw()), static_cast<Tt*>(v.raw()), static_cast<const Tt*>(kvq.raw()),
        static_cast<const Tt*>(peq.raw()), Nk, int(H), int(dn), int(R), int(dv));
  });
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_fwd (assemble)");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t Lq = cu_q[size_t(b) + 1] - cu_q[size_t(b)], Lk = cu_k[size_t(b) + 1] - cu_k[size_t(b)];
    if (Lq == 0) continue;
    attention_fwd(out.slice(cu_q[size_t(b)], Lq), Tensor(), q.slice(cu_q[size_t(b)], Lq),
                  k.slice(cu_k[size_t(b)], Lk), v.slice(cu_k[size_t(b)], Lk), scale, Lk - Lq);
  }
}

void mla_flash_train_fwd(Tensor out, Tensor lse, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                         const std::vector<int64_t>& cu, double scale) {
  const int64_t dv = out.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  if (q.size(0) == 0) return;
  const float scale_log2 = float(scale * 1.4426950408889634);
  with_act(q.dtype(), "mla_flash_train_fwd", [&](auto t) {
    with_act(out.dtype(), "mla_flash_train_fwd", [&](auto to) {
      using Tt = decltype(t);
      using To = decltype(to);
      const bool done = with_head_dims(dn, R, dv, [&](auto DN, auto DR, auto DV) {
        launch_flash<Tt, To, bf16, decltype(DN)::value, decltype(DR)::value, decltype(DV)::value>(
            out, lse, q, kv, kpe, cu, cu, scale_log2);
      });
      DSEEK_CHECK(done, "mla_flash_train_fwd: no kernel for head dims ", dn, "/", R, "/", dv);
    });
  });
}

bool mla_flash_train_dims(int64_t dn, int64_t R, int64_t dv) {
  return with_head_dims(dn, R, dv, [](auto, auto, auto) {});
}

}  // namespace dseek::ops::cuda
