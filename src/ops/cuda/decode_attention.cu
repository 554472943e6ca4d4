// decode_attention.cu — the decode step's attention on the GPU over the paged latent cache
// (spec/model.md §2.5 absorbed MLA; spec/serving.md paged cache, flash-decoding split):
//   * sm90_paged_cache_write: new latent rows into their cache slots;
//   * sm90_absorb_q / sm90_absorb_o: the W_UK and W_UV absorptions of every head in one launch each (the
//     q RoPE applied inside the query's);
//   * sm90_mla_decode_paged: one thread block per (sequence, key split, group of ≤ 16 heads) streams the
//     split's cached rows through shared memory in tiles of 32 once for all heads of the group (so with
//     H ≤ 16 each latent row is read once per step), with an online softmax in f32; a second kernel
//     combines the splits (FlashDecoding). Before its dependency wait (common.cuh launch_dep) a block
//     reads the host-written lengths and block table and asks L2 for its first tiles; a grid of one
//     wave stages each tile with all of a thread's loads in flight (latency), larger grids keep the
//     registers low (occupancy);
//   * sm90_argmax_rows / sm90_argmax_split: greedy choice on the device, so only token ids go back to the
//     host (rows of a decode step split over blocks, the last block of a row combining them).
#include <algorithm>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/decode.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kTK = 32;        // keys per shared-memory tile
constexpr int kHG = 16;        // heads per thread block
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxSplits = 256;  // key splits of one sequence (the combine's block has a thread per split)

template <typename T>
__global__ void sm90_paged_cache_write(T* pool, const T* rows, const int32_t* slots, int W) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  const int64_t s = slots[n];
  for (int i = threadIdx.x; i < W; i += blockDim.x) pool[s * W + i] = rows[n * W + i];
}

constexpr int kRowsPerBlock = 8;  // activation rows sharing one pass over a head's weights
constexpr int kColsQ = 64;        // absorb_q: columns per block (x 4 slices of dn)

// grid (H, ceil(C / 64), ceil(N / 8)), 256 threads = 64 columns x 4 interleaved slices of the dn sum:
// qa[n, h, c] = Σ_i q[n, h, i] · W_UK[h][i, c], partial sums combined through shared memory; the blocks
// of column chunk 0 also copy the roped part qa[n, h, C:] = q[n, h, dn:], rotated on the way when pos is
// given (rope_fwd's rotation at position pos[n], cos/sin scaled by af).
template <typename T, typename Wt>
__global__ void __launch_bounds__(256)
    sm90_absorb_q(T* qa, const T* q, const Wt* kvb, int N, int H, int dn, int dv, int R, int C,
                  const int64_t* pos, const float* inv_freq, float af) {
  extern __shared__ float sm_q[];
  float* qs = sm_q;                        // [8, dn]
  float* red = sm_q + kRowsPerBlock * dn;  // [4, 8, 64]
  dep_launch();
  const int h = blockIdx.x, c0 = blockIdx.y * kColsQ, n0 = blockIdx.z * kRowsPerBlock;
  const int nr = min(kRowsPerBlock, N - n0);
  const int Dq = dn + R, W = C + R;
  const int cl = threadIdx.x & (kColsQ - 1), slice = threadIdx.x / kColsQ, c = c0 + cl;
  const Wt* wk = kvb + int64_t(h) * (dn + dv) * C;  // W_UK[h]: [dn, C]
  // The thread's first kPreQ weights (rows slice, slice + 4, ...), read before the wait.
  constexpr int kPreQ = 16;
  float wpre[kPreQ];
#pragma unroll
  for (int t = 0; t < kPreQ; ++t) {
    const int i = slice + 4 * t;
    wpre[t] = c < C && i < dn ? ld(wk[int64_t(i) * C + c]) : 0.0f;
  }
  dep_wait();
  // Column chunk 0's blocks also produce the roped part: a thread's pair (its first one) is read now,
  // with the queries, so that part adds no round trip of its own at the end.
  const bool rope0 = blockIdx.y == 0 && int(threadIdx.x) < nr * (R / 2);
  const int rr = rope0 ? int(threadIdx.x) / (R / 2) : 0, rj = rope0 ? int(threadIdx.x) - rr * (R / 2) : 0;
  float ra = 0.0f, rb = 0.0f, rang = 0.0f;
  if (rope0) {
    const T* src = q + (int64_t(n0 + rr) * H + h) * Dq + dn + 2 * rj;
    ra = ld(src[0]);
    rb = ld(src[1]);
    if (pos) rang = float(pos[n0 + rr]) * inv_freq[rj];
  }
  for (int i = threadIdx.x; i < kRowsPerBlock * dn; i += blockDim.x) {
    const int r = i / dn, j = i - r * dn;
    qs[i] = r < nr ? ld(q[(int64_t(n0 + r) * H + h) * Dq + j]) : 0.0f;
  }
  __syncthreads();
  float acc[kRowsPerBlock] = {};
  if (c < C) {
#pragma unroll
    for (int t = 0; t < kPreQ; ++t) {
      const int i = slice + 4 * t;
      if (i < dn)
#pragma unroll
        for (int r = 0; r < kRowsPerBlock; ++r) acc[r] += qs[r * dn + i] * wpre[t];
    }
#pragma unroll 4
    for (int i = slice + 4 * kPreQ; i < dn; i += 4) {
      const float w = ld(wk[int64_t(i) * C + c]);
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) acc[r] += qs[r * dn + i] * w;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerBlock; ++r) red[(slice * kRowsPerBlock + r) * kColsQ + cl] = acc[r];
  __syncthreads();
  if (slice == 0 && c < C)
    for (int r = 0; r < nr; ++r) {
      float v = 0.0f;
#pragma unroll
      for (int sl = 0; sl < 4; ++sl) v += red[(sl * kRowsPerBlock + r) * kColsQ + cl];
      qa[(int64_t(n0 + r) * H + h) * W + c] = st<T>(v);
    }
  // The roped part, pairs (2j, 2j + 1): rotated at position pos[n] when pos is given (rope_fwd's
  // rotation, cos/sin scaled by af), else copied. The thread's first pair was read above.
  const auto rope_pair = [&](int r, int j, float a, float b, float ang) {
    T* dst = qa + (int64_t(n0 + r) * H + h) * W + C + 2 * j;
    if (!pos) {
      dst[0] = st<T>(a);
      dst[1] = st<T>(b);
      return;
    }
    float s, c;
    sincosf(ang, &s, &c);
    c *= af;
    s *= af;
    dst[0] = st<T>(a * c - b * s);
    dst[1] = st<T>(a * s + b * c);
  };
  if (rope0) rope_pair(rr, rj, ra, rb, rang);
  if (blockIdx.y == 0)
    for (int i = threadIdx.x + blockDim.x; i < nr * (R / 2); i += blockDim.x) {
      const int r = i / (R / 2), j = i - r * (R / 2);
      const T* src = q + (int64_t(n0 + r) * H + h) * Dq + dn + 2 * j;
      rope_pair(r, j, ld(src[0]), ld(src[1]), pos ? float(pos[n0 + r]) * inv_freq[j] : 0.0f);
    }
}

// grid (H, ceil(dv / 8), ceil(N / 8)), 8 warps, one output column j per warp:
// o[n, h, j] = o_lat[n, h, :] · W_UV[h][j, :], lanes along C (8 at a time when vec).
template <typename T, typename Wt>
__global__ void __launch_bounds__(256)
    sm90_absorb_o(T* o, const T* olat, const Wt* kvb, int N, int H, int dn, int dv, int C, bool vec) {
  extern __shared__ __align__(16) float ls[];  // [8, C]
  dep_launch();
  const int h = blockIdx.x, n0 = blockIdx.z * kRowsPerBlock, nr = min(kRowsPerBlock, N - n0);
  const int lane = threadIdx.x & 31, j = blockIdx.y * 8 + (threadIdx.x >> 5);
  const Wt* wv = kvb + (int64_t(h) * (dn + dv) + dn + (j < dv ? j : 0)) * C;  // W_UV[h][j]: [C]
  // The lane's first kPreO chunks of its row, read before the wait.
  constexpr int kPreO = 2;
  float pre[kPreO][8] = {};
  if (vec && j < dv)
#pragma unroll
    for (int t = 0; t < kPreO; ++t)
      if (lane * 8 + t * 256 < C) load8(wv + lane * 8 + t * 256, pre[t]);
  dep_wait();
  for (int i = threadIdx.x; i < kRowsPerBlock * C; i += blockDim.x) {
    const int r = i / C, c = i - r * C;
    ls[i] = r < nr ? ld(olat[(int64_t(n0 + r) * H + h) * C + c]) : 0.0f;
  }
  __syncthreads();
  if (j >= dv) return;
  float acc[kRowsPerBlock] = {};
  if (vec) {
    const auto dot = [&](const float* w8, int c) {
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) acc[r] += dot8(w8, ls + r * C + c);
    };
#pragma unroll
    for (int t = 0; t < kPreO; ++t)
      if (lane * 8 + t * 256 < C) dot(pre[t], lane * 8 + t * 256);
    for (int c = lane * 8 + kPreO * 256; c < C; c += 256) {
      float w8[8];
      load8(wv + c, w8);
      dot(w8, c);
    }
  } else {
    for (int c = lane; c < C; c += 32) {
      const float w = ld(wv[c]);
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) acc[r] += ls[r * C + c] * w;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerBlock; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0)
    for (int r = 0; r < nr; ++r) o[(int64_t(n0 + r) * H + h) * dv + j] = st<T>(acc[r]);
}

// Four consecutive elements as f32 (aligned vector loads for f32 and bf16).
__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 ld4(const bf16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&u.x),
                       b = *reinterpret_cast<const __nv_bfloat162*>(&u.y);
  const float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
  return make_float4(fa.x, fa.y, fb.x, fb.y);
}

// Row stride of the shared tile: with 16-byte loads (VEC, W % 4 == 0) W + 4, so rows start 4 banks
// apart and each quarter-warp of lanes reading 8 different rows hits all 32 banks once; with scalar
// loads W rounded up to odd, so 32 lanes reading 32 different rows hit 32 different banks.
__host__ __device__ constexpr int tile_stride(int W, bool vec) {
  return vec ? W + 4 : (W | 1);
}
__host__ __device__ constexpr int round4(int n) {
  return (n + 3) & ~3;
}
// Offsets (floats) of rs and ps in the decode kernel's shared memory, and its size; ps 16-byte aligned.
__host__ __device__ constexpr int rs_offset(int W) {
  return round4(kHG * W);
}
__host__ __device__ constexpr int ps_offset(int W, bool vec) {
  return round4(rs_offset(W) + kTK * tile_stride(W, vec));
}
__host__ __device__ constexpr int decode_smem_floats(int W, bool vec) {
  return ps_offset(W, vec) + kHG * kTK + 3 * kHG;
}

// grid (splits, B, ceil(H / 16)), 256 threads. Shared memory: qs [16, W] (queries pre-scaled by
// scale·log2 e), rs [32, RS] (a tile of cached rows), ps [32 keys, 16 heads] (the tile's probabilities,
// key-major so one key's 16 weights are 4 broadcast 16-byte loads), and per head m, l, alpha.
// With splits == 1 the block writes the normalized result to out; else its unnormalized accumulator to
// part_o [B, splits, H, C] and (m, l) to part_ml [B, splits, H, 2].
template <typename T, int CPT, bool VEC, bool FLAT>
__global__ void __launch_bounds__(kThreads, FLAT       ? 1
                                            : CPT == 1 ? 3
                                                       : 2)
    sm90_mla_decode_paged(T* out, float* part_o, float* part_ml, const T* q, const T* pool, const int32_t* bt,
                          const int32_t* lens, int H, int W, int C, int MB, int keys_per_split,
                          float qscale) {
  extern __shared__ __align__(16) float sm[];
  const int RS = tile_stride(W, VEC);
  float* qs = sm;
  float* rs = sm + rs_offset(W);
  float* ps = sm + ps_offset(W, VEC);
  float* m = ps + kHG * kTK;
  float* l = m + kHG;
  float* alpha = l + kHG;
  dep_launch();
  const int split = blockIdx.x, splits = gridDim.x, b = blockIdx.y, h0 = blockIdx.z * kHG;
  const int nh = min(kHG, H - h0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Before the wait: the lengths and block tables (host-written: uploaded before the step, see
  // ops/decode.h), and an L2 prefetch of the split's cached rows (a hint; the rows are read after it).
  const int L = lens[b];
  const int k_begin = split * keys_per_split, k_end = min(L, k_begin + keys_per_split);
  const int32_t* table = bt + int64_t(b) * MB;
  // A tile of 32 keys at k0 (a multiple of 32) is 32 consecutive rows of cache block table[k0 / 64].
  const auto tile_src = [&](int k0) {
    return pool + (int64_t(table[k0 / kCacheBlock]) * kCacheBlock + k0 % kCacheBlock) * W;
  };
  // (The first two tiles only: a long split's later tiles stream while earlier ones are used, and
  // prefetching all splits of a large batch at once would overflow L2.)
  if (VEC && warp == 0 && lane < 2 && (W * sizeof(T)) % 16 == 0) {
    const int k0 = k_begin + lane * kTK;
    if (k0 < k_end) prefetch_l2(tile_src(k0), int64_t(min(kTK, k_end - k0)) * W * int64_t(sizeof(T)), 0, 1);
  }
  dep_wait();
  if constexpr (VEC) {  // the queries: a thread's 4 loads at a time in flight
    const T* qb = q + (int64_t(b) * H + h0) * W;
    const int W4 = W / 4, n4 = kHG * W4, nq4 = nh * W4;
    for (int base = 0; base < n4; base += 4 * kThreads) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = base + tid + u * kThreads;
        v[u] = i < nq4 ? ld4(qb + 4 * i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = base + tid + u * kThreads;
        if (i < n4)
          *reinterpret_cast<float4*>(qs + 4 * i) =
              make_float4(v[u].x * qscale, v[u].y * qscale, v[u].z * qscale, v[u].w * qscale);
      }
    }
  } else {
    for (int i = tid; i < kHG * W; i += kThreads)
      qs[i] = i < nh * W ? ld(q[(int64_t(b) * H + h0) * W + i]) * qscale : 0.0f;
  }
  if (tid < kHG) {
    m[tid] = -INFINITY;
    l[tid] = 0.0f;
  }
  float acc[kHG][CPT];
#pragma unroll
  for (int h = 0; h < kHG; ++h)
#pragma unroll
    for (int j = 0; j < CPT; ++j) acc[h][j] = 0.0f;
  for (int k0 = k_begin; k0 < k_end; k0 += kTK) {
    const int nk = min(kTK, k_end - k0);
    __syncthreads();  // the previous tile is consumed (and qs, m, l are ready on the first)
    const T* src = tile_src(k0);
    if constexpr (VEC && FLAT) {  // the tile's nk·W / 4 float4, a thread's 8 at a time in flight
      const int W4 = W / 4, n4 = nk * W4;
      for (int base = 0; base < n4; base += 8 * kThreads) {
        float4 v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int i = base + tid + u * kThreads;
          if (i < n4) v[u] = ld4(src + 4 * i);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int i = base + tid + u * kThreads;
          if (i < n4) {
            const int kk = i / W4, c = i - kk * W4;
            *reinterpret_cast<float4*>(rs + kk * RS + 4 * c) = v[u];
          }
        }
      }
    } else if constexpr (VEC) {  // each warp loads whole rows: lanes along the row, coalesced
      for (int kk = warp; kk < nk; kk += kWarps)
        for (int i = lane * 4; i < W; i += 128)
          *reinterpret_cast<float4*>(rs + kk * RS + i) = ld4(src + int64_t(kk) * W + i);
    } else {  // each warp loads whole rows: lanes along the row, coalesced
      for (int kk = warp; kk < nk; kk += kWarps)
        for (int i = lane; i < W; i += 32) rs[kk * RS + i] = ld(src[int64_t(kk) * W + i]);
    }
    __syncthreads();
    // Scores: warp w takes heads w and w + 8 (the second may be past nh: its query is zero), lane = key.
    // Then the online-softmax update of both heads.
    {
      const int ha = warp, hb = warp + kWarps;
      float da = 0.0f, db = 0.0f;
      if (lane < nk && ha < nh) {
        const float* r = rs + lane * RS;
        const float* qa = qs + ha * W;
        const float* qb = qs + hb * W;
        if constexpr (VEC) {
          for (int i = 0; i < W; i += 4) {
            const float4 rv = *reinterpret_cast<const float4*>(r + i);
            const float4 av = *reinterpret_cast<const float4*>(qa + i);
            const float4 bv = *reinterpret_cast<const float4*>(qb + i);
            da += av.x * rv.x + av.y * rv.y + av.z * rv.z + av.w * rv.w;
            db += bv.x * rv.x + bv.y * rv.y + bv.z * rv.z + bv.w * rv.w;
          }
        } else {
          for (int i = 0; i < W; ++i) {
            da += qa[i] * r[i];
            db += qb[i] * r[i];
          }
        }
      }
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int h = t == 0 ? ha : hb;
        if (h >= nh) break;  // warp-uniform
        const float s = lane < nk ? (t == 0 ? da : db) : -INFINITY;
        const float m_old = m[h], m_new = fmaxf(m_old, warp_max(s));
        const float p = lane < nk ? exp2f(s - m_new) : 0.0f;
        const float psum = warp_sum(p);
        ps[lane * kHG + h] = p;
        if (lane == 0) {
          const float a = exp2f(m_old - m_new);  // 0 on the first tile (m_old = −inf)
          alpha[h] = a;
          l[h] = l[h] * a + psum;
          m[h] = m_new;
        }
      }
      if (nh < kHG && lane < kTK)  // heads past nh: zero weights (their accumulators are never written)
        for (int h = nh + warp; h < kHG; h += kWarps) {
          ps[lane * kHG + h] = 0.0f;
          if (lane == 0) alpha[h] = 1.0f;
        }
    }
    __syncthreads();
    // Accumulate: thread owns columns c = tid + j·256 of every head.
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int c = tid + j * kThreads;
      if (c >= C) break;
#pragma unroll
      for (int h = 0; h < kHG; ++h) acc[h][j] *= alpha[h];
      for (int kk = 0; kk < nk; ++kk) {
        const float r = rs[kk * RS + c];
        const float4* p4 = reinterpret_cast<const float4*>(ps + kk * kHG);
#pragma unroll
        for (int g = 0; g < kHG / 4; ++g) {
          const float4 p = p4[g];
          acc[4 * g][j] += p.x * r;
          acc[4 * g + 1][j] += p.y * r;
          acc[4 * g + 2][j] += p.z * r;
          acc[4 * g + 3][j] += p.w * r;
        }
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int c = tid + j * kThreads;
    if (c >= C) break;
#pragma unroll
    for (int h = 0; h < kHG; ++h) {
      if (h >= nh) break;
      const int64_t bh = int64_t(b) * H + h0 + h;
      if (splits == 1) {
        out[bh * C + c] = st<T>(acc[h][j] / l[h]);
      } else {
        part_o[((int64_t(b) * splits + split) * H + h0 + h) * C + c] = acc[h][j];
      }
    }
  }
  if (splits > 1 && tid < nh) {
    const int64_t i = (int64_t(b) * splits + split) * H + h0 + tid;
    part_ml[2 * i] = m[tid];
    part_ml[2 * i + 1] = l[tid];
  }
}

// The split combine of (sequence b, head h), by the whole block (splits ≤ blockDim.x): wt[s] = split s's
// weight 2^(m_s − M) / Σ_s 2^(m_s − M) l_s (0: an empty split), then ends with __syncthreads().
__device__ void split_weights(float* wt, const float* part_ml, int b, int h, int H, int splits) {
  float ms = -INFINITY, lsum = 0.0f;  // thread s's split
  if (int(threadIdx.x) < splits) {
    const int64_t i = (int64_t(b) * splits + threadIdx.x) * H + h;
    ms = part_ml[2 * i];
    lsum = part_ml[2 * i + 1];
  }
  const float M = block_max(ms);
  const float den = block_sum(ms == -INFINITY ? 0.0f : exp2f(ms - M) * lsum);
  if (int(threadIdx.x) < splits) wt[threadIdx.x] = ms == -INFINITY ? 0.0f : exp2f(ms - M) / den;
  __syncthreads();
}
// Column c of the combined output: Σ_s wt[s] · o_s[c].
__device__ __forceinline__ float combined(const float* wt, const float* part_o, int b, int h, int H, int C,
                                          int c, int splits) {
  float acc = 0.0f;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) acc += wt[s] * part_o[((int64_t(b) * splits + s) * H + h) * C + c];
  return acc;
}

// grid (H, B): out[b, h] = Σ_s 2^(m_s − M) o_s / Σ_s 2^(m_s − M) l_s.
template <typename T>
__global__ void sm90_mla_decode_combine(T* out, const float* part_o, const float* part_ml, int H, int C,
                                        int splits) {
  __shared__ float wt[kMaxSplits];  // split s's weight 2^(m_s − M) / Σ_s 2^(m_s − M) l_s (0: empty)
  dep_launch();
  dep_wait();
  const int h = blockIdx.x, b = blockIdx.y;
  split_weights(wt, part_ml, b, h, H, splits);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    out[(int64_t(b) * H + h) * C + c] = st<T>(combined(wt, part_o, b, h, H, C, c, splits));
}

// grid (H, B), 256 threads: o[b, h, j] = W_UV[h][j] · o_lat[b, h] for j < dv, where o_lat[b, h] is the
// combine of the splits as sm90_mla_decode_combine computes it (rounded to T), or with one split the
// attention kernel's own output (olat). The output absorption thus rides in the combine's launch. Warp w
// takes rows j = w, w + 8, ...; a lane's first 8 columns of its first kRowsPre rows are read before the
// dependency wait. Shared memory: the latent [C] f32.
template <typename T, typename Wt>
__global__ void __launch_bounds__(256)
    sm90_mla_decode_combine_o(T* o, const T* olat, const float* part_o, const float* part_ml, const Wt* kvb,
                              int H, int C, int dn, int dv, int splits, bool vec) {
  extern __shared__ __align__(16) float ls[];  // [C]
  __shared__ float wt[kMaxSplits];
  constexpr int kRowsPre = 8;
  dep_launch();
  const int h = blockIdx.x, b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Wt* wv = kvb + (int64_t(h) * (dn + dv) + dn) * C;  // W_UV[h]: [dv, C]
  float pre[kRowsPre][8] = {};
#pragma unroll
  for (int t = 0; t < kRowsPre; ++t) {
    const int j = warp + t * kWarps;
    if (vec && j < dv && lane * 8 < C) load8(wv + int64_t(j) * C + lane * 8, pre[t]);
  }
  dep_wait();
  if (splits == 1) {
    for (int c = threadIdx.x; c < C; c += blockDim.x) ls[c] = ld(olat[(int64_t(b) * H + h) * C + c]);
  } else {
    split_weights(wt, part_ml, b, h, H, splits);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      ls[c] = ld(st<T>(combined(wt, part_o, b, h, H, C, c, splits)));
  }
  __syncthreads();
  for (int t = 0; warp + t * kWarps < dv; ++t) {
    const int j = warp + t * kWarps;
    const Wt* wr = wv + int64_t(j) * C;
    float acc = 0.0f;
    if (vec) {
      int c0 = lane * 8;
      if (t < kRowsPre) {
#pragma unroll
        for (int u = 0; u < kRowsPre; ++u)  // pre[t] without dynamic register indexing
          if (u == t && c0 < C) acc += dot8(pre[u], ls + c0);
        c0 += 256;
      }
      for (int c = c0; c < C; c += 256) {
        float w8[8];
        load8(wr + c, w8);
        acc += dot8(w8, ls + c);
      }
    } else {
      for (int c = lane; c < C; c += 32) acc += ld(wr[c]) * ls[c];
    }
    acc = warp_sum(acc);
    if (lane == 0) o[(int64_t(b) * H + h) * dv + j] = st<T>(acc);
  }
}

// The block's best (value, index) from each thread's, in thread 0.
__device__ void block_argmax(float& best, int64_t& idx) {
  __shared__ float bv[32];
  __shared__ int64_t bi[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (!beats(best, idx, ob, oi)) {
      best = ob;
      idx = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    bv[warp] = best;
    bi[warp] = idx;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    best = lane < nw ? bv[lane] : -INFINITY;
    idx = lane < nw ? bi[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
      if (!beats(best, idx, ob, oi)) {
        best = ob;
        idx = oi;
      }
    }
  }
}

// Each thread's first index of the largest value among row[v0 .. v1) (strided), then the block's.
template <typename T>
__device__ void scan_argmax(const T* row, int64_t v0, int64_t v1, float& best, int64_t& idx) {
  best = -INFINITY;
  idx = -1;  // none yet
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const float f = ld(row[v]);
    if (idx < 0 || f > best) {
      best = f;
      idx = v;
    }
  }
  block_argmax(best, idx);
}

// One block per row: the first index of the largest value.
template <typename T>
__global__ void sm90_argmax_rows(int64_t* ids, const T* x, int64_t V) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  float best;
  int64_t idx;
  scan_argmax(x + n * V, 0, V, best, idx);
  if (threadIdx.x == 0) ids[n] = idx < 0 ? 0 : idx;
}

// grid (G, N): block g takes row n's chunk [g·chunk, (g + 1)·chunk) into part_*[n, g]; the row's last block
// to arrive (arrive[n] counts them, then is reset) combines the G partial results in order.
template <typename T>
__global__ void __launch_bounds__(1024) sm90_argmax_split(int64_t* ids, float* part_v, int64_t* part_i,
                                                          int* arrive, const T* x, int64_t V, int64_t chunk) {
  __shared__ bool last;
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.y;
  const int G = gridDim.x, g = blockIdx.x;
  float best;
  int64_t idx;
  const int64_t v0 = g * chunk, v1 = v0 + chunk < V ? v0 + chunk : V;
  scan_argmax(x + n * V, v0, v1, best, idx);
  if (threadIdx.x == 0) {
    part_v[n * G + g] = best;
    part_i[n * G + g] = idx;
  }
  __threadfence();  // the partial result is visible device-wide before this block counts itself in
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&arrive[n], 1) == G - 1;
  __syncthreads();
  if (!last) return;
  if (threadIdx.x == 0) arrive[n] = 0;  // ready for the next launch
  best = -INFINITY;
  idx = -1;
  for (int j = threadIdx.x; j < G; j += blockDim.x) {
    const float v = __ldcg(part_v + n * G + j);
    const int64_t i = __ldcg(reinterpret_cast<const long long*>(part_i) + n * G + j);
    if (beats(v, i, best, idx)) {
      best = v;
      idx = i;
    }
  }
  block_argmax(best, idx);
  if (threadIdx.x == 0) ids[n] = idx < 0 ? 0 : idx;
}

// Calls fn(Wt{}) for the weight dtype (f32 or bf16).
template <typename Fn>
void with_weight(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32:
      return fn(float{});
    case DType::BF16:
      return fn(bf16{});
    default:
      fail(op, ": weights must be f32 or bf16 here, not ", dtype_name(dt));
  }
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    DSEEK_CUDA_CHECK(cudaGetDevice(&dev), "cudaGetDevice");
    DSEEK_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "sm count");
    return v;
  }();
  return n;
}

}  // namespace

void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots) {
  const int64_t N = rows.size(0), W = rows.size(1);
  with_act(rows.dtype(), "paged_cache_write", [&](auto t) {
    using T = decltype(t);
    launch_dep("paged_cache_write", sm90_paged_cache_write<T>, unsigned(N), 128, 0,
               static_cast<T*>(pool.raw()), static_cast<const T*>(rows.raw()), slots.data<int32_t>(), int(W));
  });
}

void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv,
                  const RopeAt* rope) {
  const int64_t N = q.size(0), H = q.size(1), R = q.size(2) - dn, C = kv_b.size(1);
  DSEEK_CHECK(R % 2 == 0, "mla_absorb_q: the rope part of the query has an odd width ", R);
  const dim3 grid{unsigned(H), unsigned((C + kColsQ - 1) / kColsQ),
                  unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock)};
  const size_t smem = size_t(kRowsPerBlock * dn + 4 * kRowsPerBlock * kColsQ) * sizeof(float);
  with_act(q.dtype(), "mla_absorb_q", [&](auto t) {
    using T = decltype(t);
    with_weight(kv_b.dtype(), "mla_absorb_q", [&](auto wt) {
      using Wt = decltype(wt);
      allow_smem(sm90_absorb_q<T, Wt>, smem, "mla_absorb_q");
      launch_dep("mla_absorb_q", sm90_absorb_q<T, Wt>, grid, 256, smem, static_cast<T*>(qa.raw()),
                 static_cast<const T*>(q.raw()), static_cast<const Wt*>(kv_b.raw()), int(N), int(H), int(dn),
                 int(dv), int(R), int(C), rope ? rope->positions.data<int64_t>() : nullptr,
                 rope ? rope->inv_freq.data<float>() : nullptr, rope ? float(rope->attention_factor) : 1.0f);
    });
  });
}

void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv) {
  const int64_t N = o_lat.size(0), H = o_lat.size(1), C = o_lat.size(2);
  const dim3 grid{unsigned(H), unsigned((dv + 7) / 8), unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock)};
  const size_t smem = size_t(kRowsPerBlock * C) * sizeof(float);
  const bool vec = C % 8 == 0 && (reinterpret_cast<uintptr_t>(kv_b.raw()) & 15) == 0;
  with_act(o_lat.dtype(), "mla_absorb_o", [&](auto t) {
    using T = decltype(t);
    with_weight(kv_b.dtype(), "mla_absorb_o", [&](auto wt) {
      using Wt = decltype(wt);
      allow_smem(sm90_absorb_o<T, Wt>, smem, "mla_absorb_o");
      launch_dep("mla_absorb_o", sm90_absorb_o<T, Wt>, grid, 256, smem, static_cast<T*>(o.raw()),
                 static_cast<const T*>(o_lat.raw()), static_cast<const Wt*>(kv_b.raw()), int(N), int(H),
                 int(dn), int(dv), int(C), vec);
    });
  });
}

namespace {

// The attention kernel of mla_decode_paged: o_lat gets the result when the grid has one key split; else
// the splits' partial results go to part_o / part_ml (allocated here) for a combine launch.
struct PagedSplits {
  int64_t splits = 1;
  Tensor part_o, part_ml;  // [B, S, H, C], [B, S, H, 2] f32 when splits > 1
};
PagedSplits paged_attention(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                            const Tensor& seq_lens, double scale, int64_t max_len) {
  const int64_t B = q.size(0), H = q.size(1), W = q.size(2), C = o_lat.size(2), MB = block_table.size(1);
  if (max_len == 0) {  // read the lengths back (a synchronisation; the engine passes max_len instead)
    Tensor lens = seq_lens.to(Device::CPU);
    for (int64_t b = 0; b < B; ++b) max_len = std::max<int64_t>(max_len, lens.data<int32_t>()[b]);
  }
  DSEEK_CHECK(C <= 4 * kThreads, "mla_decode_paged: latent width ", C, " exceeds ", 4 * kThreads);
  const int64_t groups = (H + kHG - 1) / kHG;
  // Split long sequences so that about two blocks per SM are busy; splits hold whole tiles.
  const int64_t tiles = std::max<int64_t>(1, (max_len + kTK - 1) / kTK);
  int64_t splits = std::clamp<int64_t>((2 * sm_count() + B * groups - 1) / (B * groups), 1,
                                       std::min<int64_t>(tiles, kMaxSplits));
  const int64_t keys_per_split = ((tiles + splits - 1) / splits) * kTK;
  splits = std::max<int64_t>(1, (max_len + keys_per_split - 1) / keys_per_split);
  PagedSplits r{.splits = splits, .part_o = Tensor(), .part_ml = Tensor()};
  if (splits > 1) {
    r.part_o = Tensor::empty({B, splits, H, C}, DType::F32, Device::CUDA);   // part_o: [B, S, H, C]
    r.part_ml = Tensor::empty({B, splits, H, 2}, DType::F32, Device::CUDA);  // part_ml: [B, S, H, (m, l)]
  }
  const bool vec = W % 4 == 0;
  const size_t smem = size_t(decode_smem_floats(int(W), vec)) * sizeof(float);
  const float qscale = float(scale) * kLog2e;
  const dim3 grid{unsigned(splits), unsigned(B), unsigned(groups)};
  with_act(q.dtype(), "mla_decode_paged", [&](auto t) {
    using T = decltype(t);
    auto launch = [&](auto kernel) {
      allow_smem(kernel, smem, "mla_decode_paged");
      launch_dep("mla_decode_paged", kernel, grid, kThreads, smem, static_cast<T*>(o_lat.raw()),
                 r.part_o.defined() ? r.part_o.data<float>() : nullptr,
                 r.part_ml.defined() ? r.part_ml.data<float>() : nullptr, static_cast<const T*>(q.raw()),
                 static_cast<const T*>(pool.raw()), block_table.data<int32_t>(), seq_lens.data<int32_t>(),
                 int(H), int(W), int(C), int(MB), int(keys_per_split), qscale);
    };
    auto by_width = [&](auto v, auto f) {
      constexpr bool V = decltype(v)::value, F = decltype(f)::value;
      if (C <= kThreads) {
        launch(sm90_mla_decode_paged<T, 1, V, F>);
      } else if (C <= 2 * kThreads) {
        launch(sm90_mla_decode_paged<T, 2, V, F>);
      } else {
        launch(sm90_mla_decode_paged<T, 4, V, F>);
      }
    };
    // Grids of one wave (a decode step of few sequences) are latency-bound: there a tile is one round
    // trip (FLAT: registers for 8 loads per thread, one block per SM); larger grids keep occupancy.
    if (vec && splits * B * groups <= sm_count()) {
      by_width(std::true_type{}, std::true_type{});
    } else if (vec) {
      by_width(std::true_type{}, std::false_type{});
    } else {
      by_width(std::false_type{}, std::false_type{});
    }
  });
  return r;
}

}  // namespace

void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t max_len) {
  const PagedSplits r = paged_attention(o_lat, q, pool, block_table, seq_lens, scale, max_len);
  if (r.splits == 1) return;
  const int64_t B = q.size(0), H = q.size(1), C = o_lat.size(2);
  with_act(q.dtype(), "mla_decode_paged", [&](auto t) {
    using T = decltype(t);
    launch_dep("mla_decode_paged (combine)", sm90_mla_decode_combine<T>, dim3(unsigned(H), unsigned(B)), 256,
               0, static_cast<T*>(o_lat.raw()), r.part_o.data<float>(), r.part_ml.data<float>(), int(H),
               int(C), int(r.splits));
  });
}

void mla_decode_paged_o(Tensor o, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                        const Tensor& seq_lens, double scale, int64_t max_len, const Tensor& kv_b, int64_t dn,
                        int64_t dv) {
  const int64_t B = q.size(0), H = q.size(1), C = kv_b.size(1);
  Tensor o_lat = Tensor::empty({B, H, C}, q.dtype(), Device::CUDA);  // o_lat: [B, H, C] (one split only)
  const PagedSplits r = paged_attention(o_lat, q, pool, block_table, seq_lens, scale, max_len);
  const bool vec = C % 8 == 0 && (reinterpret_cast<uintptr_t>(kv_b.raw()) & 15) == 0;
  const size_t smem = size_t(C) * sizeof(float);
  with_act(q.dtype(), "mla_decode_paged_o", [&](auto t) {
    using T = decltype(t);
    with_weight(kv_b.dtype(), "mla_decode_paged_o", [&](auto wt) {
      using Wt = decltype(wt);
      allow_smem(sm90_mla_decode_combine_o<T, Wt>, smem, "mla_decode_paged_o");
      launch_dep("mla_decode_paged_o (combine + output absorption)", sm90_mla_decode_combine_o<T, Wt>,
                 dim3(unsigned(H), unsigned(B)), 256, smem, static_cast<T*>(o.raw()),
                 static_cast<const T*>(o_lat.raw()), r.part_o.defined() ? r.part_o.data<float>() : nullptr,
                 r.part_ml.defined() ? r.part_ml.data<float>() : nullptr, static_cast<const Wt*>(kv_b.raw()),
                 int(H), int(C), int(dn), int(dv), int(r.splits), vec);
    });
  });
}

void argmax_rows(Tensor ids, const Tensor& x) {
  const int64_t N = x.size(0), V = x.size(1);
  with_act(x.dtype(), "argmax_rows", [&](auto t) {
    using T = decltype(t);
    constexpr int64_t kChunk = 4096;       // values per block when a row is split
    if (N <= kArgmaxRows && V > kChunk) {  // a decode step: every row over many blocks, one launch
      const int64_t G = (V + kChunk - 1) / kChunk;
      Tensor pv = Tensor::empty({N, G}, DType::F32, Device::CUDA);  // pv, pi: [N, G] each block's best
      Tensor pi = Tensor::empty({N, G}, DType::I64, Device::CUDA);
      launch_dep("argmax_rows", sm90_argmax_split<T>, dim3(unsigned(G), unsigned(N)), 1024, 0,
                 ids.data<int64_t>(), pv.data<float>(), pi.data<int64_t>(),
                 arrival_counters() + kArgmaxCounters, static_cast<const T*>(x.raw()), V, kChunk);
    } else {
      launch_dep("argmax_rows", sm90_argmax_rows<T>, unsigned(N), 1024, 0, ids.data<int64_t>(),
                 static_cast<const T*>(x.raw()), V);
    }
  });
}

}  // namespace dseek::ops::cuda
