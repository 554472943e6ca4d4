// flash_attention.cu — causal MLA prefill attention on the GPU (ops/flash_attention.h; spec/model.md §2.2,
// §2.6), flash-style: a block takes 64 query rows of one head, walks the visible keys in tiles of 64 with
// an online softmax, and never writes the score matrix. Both products run on the tensor cores
// (mma.sync m16n8k16, fp16 operands, f32 accumulation; ops/flash_attention.h says why not bf16); keys
// [k_nope | k_pe] and values are read in place from the kv_b_proj output and the rope-key rows (fp16), staged
// through shared memory with cp.async in two stages. Four warps per block, 16 query rows each. Head dims
// other than the instantiated ones, and f32 operands, take the exact per-row kernel of attention.cu after
// assembling k and v.
#include <algorithm>
#include <vector>

#include <cuda_fp16.h>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/mma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int kBr = 64;  // query rows per block
constexpr int kBc = 64;  // keys per tile
constexpr int kThreads = 128;

__host__ __device__ constexpr int round16(int x) {
  return (x + 15) / 16 * 16;
}

__device__ __forceinline__ uint32_t pack_half(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// One work item: sequence b, query rows [q0, q0 + 64) of it.
struct Tile {
  int b, q0;
};

// Shared memory (fp16): Q [64][LDQ], then two stages of K [64][LDQ] and V [64][LDV] (row-major, keys
// down); the +8 columns stagger the banks and keep every row 16-byte aligned.
template <int DN, int DR, int DV>
struct Layout {
  static constexpr int DQ = DN + DR, DQP = round16(DQ);
  static constexpr int LDQ = DQP + 8, LDV = DV + 8;
  static constexpr int Q_ELEMS = kBr * LDQ, K_ELEMS = kBc * LDQ, V_ELEMS = kBc * LDV;
  static constexpr size_t bytes = size_t(Q_ELEMS + 2 * (K_ELEMS + V_ELEMS)) * sizeof(half);
};

// The fp16 path: kv [S, H, DN + DV] and kpe [S, DR] in fp16 (copied to shared memory with cp.async, two
// stages, so the next tile's loads overlap this tile's products); q and out of the activation type T.
template <typename T, int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads)
    mla_flash_kernel(T* __restrict__ out, const T* __restrict__ q, const half* __restrict__ kv,
                     const half* __restrict__ kpe, const Tile* __restrict__ tiles,
                     const int64_t* __restrict__ cu_q, const int64_t* __restrict__ cu_k, int H,
                     float scale_log2) {
  using Lay = Layout<DN, DR, DV>;
  constexpr int DQ = Lay::DQ, DQP = Lay::DQP, LDQ = Lay::LDQ, LDV = Lay::LDV;
  static_assert(DN % 8 == 0 && DR % 8 == 0 && DV % 16 == 0, "head dims: 16-byte rows, 16-wide value tiles");
  constexpr int NT_S = kBc / 8;  // score n-tiles per warp (keys)
  constexpr int NT_O = DV / 8;   // output n-tiles per warp (value dims)
  constexpr int KQ = DQP / 16;   // k-steps of the score product
  extern __shared__ __align__(16) unsigned char smem_raw[];
  half* Qs = reinterpret_cast<half*>(smem_raw);
  half* Ks[2] = {Qs + Lay::Q_ELEMS, Qs + Lay::Q_ELEMS + Lay::K_ELEMS + Lay::V_ELEMS};
  half* Vs[2] = {Ks[0] + Lay::K_ELEMS, Ks[1] + Lay::K_ELEMS};

  const Tile tile = tiles[blockIdx.x];
  const int h = blockIdx.y;
  const int64_t qr0 = cu_q[tile.b], kr0 = cu_k[tile.b];
  const int Lq = int(cu_q[tile.b + 1] - qr0), Lk = int(cu_k[tile.b + 1] - kr0);
  const int off = Lk - Lq;  // position of query row 0
  const int q0 = tile.q0, nq = min(kBr, Lq - q0);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t ldq = int64_t(H) * DQ, ldkv = int64_t(H) * (DN + DV);
  const int last_visible = off + q0 + nq - 1;  // the last key any row of the block sees
  const int ntiles = last_visible / kBc + 1;

  // Issues the cp.async copies of key tile t into stage st: per row DN/8 chunks of k_nope, DR/8 of kpe,
  // DV/8 of v (rows past the sequence are zero-filled).
  auto load_tile = [&](int t, int st) {
    constexpr int CK = DN / 8, CP = DR / 8, CV = DV / 8, CR = CK + CP + CV;
    for (int i = tid; i < kBc * CR; i += kThreads) {
      const int r = i / CR, c = i % CR, key = t * kBc + r;
      const bool valid = key < Lk;
      const int64_t row = kr0 + (valid ? key : 0);
      if (c < CK) {
        cp_async16(Ks[st] + r * LDQ + c * 8, kv + row * ldkv + int64_t(h) * (DN + DV) + c * 8, valid);
      } else if (c < CK + CP) {
        cp_async16(Ks[st] + r * LDQ + DN + (c - CK) * 8, kpe + row * DR + (c - CK) * 8, valid);
      } else {
        cp_async16(Vs[st] + r * LDV + (c - CK - CP) * 8,
                   kv + row * ldkv + int64_t(h) * (DN + DV) + DN + (c - CK - CP) * 8, valid);
      }
    }
    cp_async_commit();
  };
  load_tile(0, 0);

  // Q tile, rounded to fp16 (rows past the sequence and the padding columns are zero); the padding
  // columns of both K stages are zeroed once (cp.async never writes them).
  for (int i = tid; i < kBr * DQP; i += kThreads) {
    const int r = i / DQP, c = i % DQP;
    float x = 0.0f;
    if (r < nq && c < DQ) x = ld(q[(qr0 + q0 + r) * ldq + int64_t(h) * DQ + c]);
    Qs[r * LDQ + c] = __float2half_rn(x);
  }
  if constexpr (DQP > DQ) {
    for (int i = tid; i < 2 * kBc * (DQP - DQ); i += kThreads) {
      const int st = i / (kBc * (DQP - DQ)), j = i % (kBc * (DQP - DQ));
      Ks[st][(j / (DQP - DQ)) * LDQ + DQ + j % (DQP - DQ)] = __float2half_rn(0.0f);
    }
  }
  __syncthreads();
  const int row_a = warp * 16 + g, row_b = row_a + 8;  // this thread's two rows within the tile
  const int pos_a = off + q0 + row_a, pos_b = off + q0 + row_b;
  const int warp_last = min(off + q0 + warp * 16 + 15, last_visible);
  const bool warp_active = warp * 16 < nq;
  uint32_t aq[KQ][4];  // this warp's Q fragments, kept in registers for every tile
#pragma unroll
  for (int kk = 0; kk < KQ; ++kk) {
    const half* qa = Qs + row_a * LDQ + kk * 16 + 2 * tig;
    const half* qb = Qs + row_b * LDQ + kk * 16 + 2 * tig;
    aq[kk][0] = lds32(qa);
    aq[kk][1] = lds32(qb);
    aq[kk][2] = lds32(qa + 8);
    aq[kk][3] = lds32(qb + 8);
  }
  float o[NT_O][4];
#pragma unroll
  for (int n = 0; n < NT_O; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
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
      const half* K = Ks[st];
      const half* V = Vs[st];
      // S = Q_w · K_tileᵀ: 16 rows × 64 keys per warp.
      float s[NT_S][4];
#pragma unroll
      for (int n = 0; n < NT_S; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KQ; ++kk) {
#pragma unroll
        for (int n = 0; n < NT_S; ++n) {
          const half* kb = K + (n * 8 + g) * LDQ + kk * 16 + 2 * tig;
          mma16816<half>(s[n], aq[kk], lds32(kb), lds32(kb + 8));
        }
      }
      // Causal mask (only the tiles that reach past a row's position need it) and the online softmax in
      // the log2 domain; each row's 64 scores live in the 4 threads of its quad.
      const bool full = k0 + kBc - 1 <= off + q0 + warp * 16 && k0 + kBc <= Lk;
      float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
      for (int n = 0; n < NT_S; ++n) {
        const int key = k0 + n * 8 + 2 * tig;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (full) {
            s[n][e] *= scale_log2;
            s[n][2 + e] *= scale_log2;
          } else {
            const bool keep = key + e < Lk;
            s[n][e] = (keep && key + e <= pos_a) ? s[n][e] * scale_log2 : -INFINITY;
            s[n][2 + e] = (keep && key + e <= pos_b) ? s[n][2 + e] * scale_log2 : -INFINITY;
          }
          mx_a = fmaxf(mx_a, s[n][e]);
          mx_b = fmaxf(mx_b, s[n][2 + e]);
        }
      }
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
      const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
      // A row with nothing visible yet keeps max −inf; 0 as its reference makes exp2 give 0, not NaN.
      const float ref_a = mn_a == -INFINITY ? 0.0f : mn_a, ref_b = mn_b == -INFINITY ? 0.0f : mn_b;
      const float alpha_a = exp2f(m_a - ref_a), alpha_b = exp2f(m_b - ref_b);
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int n = 0; n < NT_S; ++n) {
        s[n][0] = exp2f(s[n][0] - ref_a);
        s[n][1] = exp2f(s[n][1] - ref_a);
        s[n][2] = exp2f(s[n][2] - ref_b);
        s[n][3] = exp2f(s[n][3] - ref_b);
        sum_a += s[n][0] + s[n][1];
        sum_b += s[n][2] + s[n][3];
      }
      sum_a += __shfl_xor_sync(0xffffffffu, sum_a, 1);
      sum_a += __shfl_xor_sync(0xffffffffu, sum_a, 2);
      sum_b += __shfl_xor_sync(0xffffffffu, sum_b, 1);
      sum_b += __shfl_xor_sync(0xffffffffu, sum_b, 2);
      l_a = l_a * alpha_a + sum_a;
      l_b = l_b * alpha_b + sum_b;
      m_a = mn_a;
      m_b = mn_b;
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
        const uint32_t a[4] = {pack_half(s[2 * j][0], s[2 * j][1]), pack_half(s[2 * j][2], s[2 * j][3]),
                               pack_half(s[2 * j + 1][0], s[2 * j + 1][1]),
                               pack_half(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
        for (int n = 0; n < NT_O; n += 2) {
          uint32_t b[4];  // b[0], b[1]: value n-tile n; b[2], b[3]: n-tile n + 1
          ldsm_x4<true>(b, V + (j * 16 + (mi & 1) * 8 + ri) * LDV + n * 8 + (mi >> 1) * 8);
          mma16816<half>(o[n], a, b[0], b[1]);
          mma16816<half>(o[n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this stage may be refilled by the next iteration's copies
  }
  // Normalize and write this thread's two rows.
  const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
  const int64_t ldo = int64_t(H) * DV;
#pragma unroll
  for (int n = 0; n < NT_O; ++n) {
    const int c = n * 8 + 2 * tig;
    if (row_a < nq) {
      T* p = out + (qr0 + q0 + row_a) * ldo + int64_t(h) * DV + c;
      p[0] = st<T>(o[n][0] * inv_a);
      p[1] = st<T>(o[n][1] * inv_a);
    }
    if (row_b < nq) {
      T* p = out + (qr0 + q0 + row_b) * ldo + int64_t(h) * DV + c;
      p[0] = st<T>(o[n][2] * inv_b);
      p[1] = st<T>(o[n][3] * inv_b);
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

template <typename T, int DN, int DR, int DV>
void launch_flash(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                  const std::vector<Tile>& tiles, const Tensor& dcu_q, const Tensor& dcu_k,
                  float scale_log2) {
  using Lay = Layout<DN, DR, DV>;
  auto kernel = mla_flash_kernel<T, DN, DR, DV>;
  static const bool set = [&] {  // once per instantiation; only layouts above 48 KiB need the opt-in
    if (Lay::bytes > 48 * 1024)
      DSEEK_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Lay::bytes)),
          "mla_flash_fwd: shared memory");
    return true;
  }();
  (void)set;
  Tensor dt = Tensor::empty({int64_t(tiles.size() * sizeof(Tile))}, DType::U8, Device::CUDA);
  copy_bytes(dt.raw(), Device::CUDA, tiles.data(), Device::CPU, tiles.size() * sizeof(Tile));
  const int H = int(q.size(1));
  kernel<<<dim3(unsigned(tiles.size()), unsigned(H)), kThreads, Lay::bytes>>>(
      static_cast<T*>(out.raw()), static_cast<const T*>(q.raw()), static_cast<const half*>(kv.raw()),
      static_cast<const half*>(kpe.raw()), static_cast<const Tile*>(dt.raw()), dcu_q.data<int64_t>(),
      dcu_k.data<int64_t>(), H, scale_log2);
  DSEEK_CUDA_LAUNCH_CHECK("mla_flash_fwd");
}

// Calls fn(integral_constant DN, DR, DV) for the instantiated head dims; false when none matches.
template <typename Fn>
bool with_head_dims(int64_t dn, int64_t R, int64_t dv, Fn&& fn) {
  using std::integral_constant;
  if (dn == 64 && R == 32 && dv == 64) {  // bench-1b
    fn(integral_constant<int, 64>{}, integral_constant<int, 32>{}, integral_constant<int, 64>{});
  } else if (dn == 128 && R == 64 && dv == 128) {  // DeepSeek-V3 / R1 / V2
    fn(integral_constant<int, 128>{}, integral_constant<int, 64>{}, integral_constant<int, 128>{});
  } else if (dn == 16 && R == 8 && dv == 16) {  // the test fixtures
    fn(integral_constant<int, 16>{}, integral_constant<int, 8>{}, integral_constant<int, 16>{});
  } else {
    return false;
  }
  return true;
}

}  // namespace

void mla_flash_fwd(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale,
                   bool fp16_operands) {
  const int64_t H = q.size(1), dv = out.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  if (q.size(0) == 0) return;
  const int64_t B = int64_t(cu_q.size()) - 1;
  if (fp16_operands) {
    // Work items, the longest first (later query tiles see more keys), so the tail of the grid is short.
    std::vector<Tile> tiles;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t q0 = 0; q0 < cu_q[size_t(b) + 1] - cu_q[size_t(b)]; q0 += kBr)
        tiles.push_back({int(b), int(q0)});
    auto keys_seen = [&](const Tile& x) {
      const size_t b = size_t(x.b);
      return (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b]) + x.q0;
    };
    std::stable_sort(tiles.begin(), tiles.end(),
                     [&](const Tile& x, const Tile& y) { return keys_seen(x) > keys_seen(y); });
    Tensor dq = Tensor::empty({B + 1}, DType::I64, Device::CUDA),
           dk = Tensor::empty({B + 1}, DType::I64, Device::CUDA);
    copy_bytes(dq.raw(), Device::CUDA, cu_q.data(), Device::CPU, cu_q.size() * 8);
    copy_bytes(dk.raw(), Device::CUDA, cu_k.data(), Device::CPU, cu_k.size() * 8);
    const Tensor kvb = kv.dtype() == DType::F16 ? kv : kv.to(DType::F16),
                 peb = kpe.dtype() == DType::F16 ? kpe : kpe.to(DType::F16);
    const float scale_log2 = float(scale * 1.4426950408889634);
    bool done = false;
    with_act(q.dtype(), "mla_flash_fwd", [&](auto t) {
      using Tt = decltype(t);
      done = with_head_dims(dn, R, dv, [&](auto DN, auto DR, auto DV) {
        launch_flash<Tt, decltype(DN)::value, decltype(DR)::value, decltype(DV)::value>(
            out, q, kvb, peb, tiles, dq, dk, scale_log2);
      });
    });
    if (done) return;
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

}  // namespace dseek::ops::cuda
