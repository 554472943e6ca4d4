// router_small.cu — MoE routing of a few tokens (a decode step) on the GPU, one thread block per token
// (spec/model.md §4.2, §4.3): scores (sigmoid or softmax) in parallel, each group's score (top-2 sum for
// noaux_tc, max for group_limited_greedy) by one warp per group, the kept groups, then top-k rounds of a
// block-wide argmax (ties to the lower expert index), ascending ids and normalized, scaled gate weights —
// the same rules as router.cu's one-thread-per-token kernel, which large batches keep using. The decode
// form (router_decode) also computes the logits x · gateᵀ, spread over blocks of 8 experts, and the last
// block of each token to finish routes it, so routing a decode step is one launch (no cuBLAS product).
#include <cstdlib>
#include <cstring>

#include "ops/cuda/gemv.cuh"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kMaxE = 1024, kMaxG = 64, kMaxK = 64;

// The choice of token n from its logits l[0 .. E) (T or f32 in shared memory), by the whole block.
template <typename T, typename L>
__device__ void route_token(int32_t* idx_out, T* w_out, T* scores_out, const L* l, const float* bias, int E,
                            const RouterParams& p, int64_t n) {
  __shared__ float sc[kMaxE], sel[kMaxE], gscore[kMaxG];
  __shared__ bool keep[kMaxG], used[kMaxE];
  __shared__ int chosen[kMaxK];
  __shared__ float rv[32];
  __shared__ int ri[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  const int K = int(p.top_k);
  float mx = 0, z = 1;
  if (p.scoring == ScoringFunc::Softmax) {
    float m = -INFINITY;
    for (int e = tid; e < E; e += blockDim.x) m = fmaxf(m, ld(l[e]));
    mx = block_max(m);
    float s = 0;
    for (int e = tid; e < E; e += blockDim.x) s += __expf(ld(l[e]) - mx);
    z = block_sum(s);
  }
  for (int e = tid; e < E; e += blockDim.x) {
    const float v = ld(l[e]);
    const float s = p.scoring == ScoringFunc::Sigmoid ? 1.0f / (1.0f + __expf(-v)) : __expf(v - mx) / z;
    sc[e] = s;
    sel[e] = s + (bias ? bias[e] : 0.0f);
    used[e] = false;
    if (scores_out) scores_out[n * E + e] = st<T>(s);
  }
  const int G = p.method == TopkMethod::Greedy ? 1 : int(p.n_group);
  const int gs = E / G;
  const bool limit = p.method != TopkMethod::Greedy && p.topk_group < p.n_group;
  for (int g = tid; g < G; g += blockDim.x) keep[g] = !limit;
  __syncthreads();
  if (limit) {
    for (int g = warp; g < G; g += nw) {  // one warp per group: the top two values (as a multiset)
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int j = lane; j < gs; j += 32) {
        const float v = sel[g * gs + j];
        if (v > m1) {
          m2 = m1;
          m1 = v;
        } else if (v > m2) {
          m2 = v;
        }
      }
      for (int o = 16; o > 0; o >>= 1) {
        const float b1 = __shfl_xor_sync(0xffffffffu, m1, o), b2 = __shfl_xor_sync(0xffffffffu, m2, o);
        const float hi = fmaxf(m1, b1), lo = fminf(m1, b1);
        m2 = fmaxf(lo, fmaxf(m2, b2));
        m1 = hi;
      }
      if (lane == 0) gscore[g] = p.method == TopkMethod::NoauxTc ? (gs >= 2 ? m1 + m2 : m1) : m1;
    }
    __syncthreads();
    if (tid == 0)
      for (int r = 0; r < int(p.topk_group); ++r) {  // the best remaining group; ties to the lower index
        int best = -1;
        for (int g = 0; g < G; ++g)
          if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
        keep[best] = true;
      }
    __syncthreads();
  }
  for (int k = 0; k < K; ++k) {  // block argmax over kept, unused experts
    float bv = -INFINITY;
    int be = -1;
    for (int e = tid; e < E; e += blockDim.x)
      if (keep[e / gs] && !used[e] && beats(sel[e], e, bv, be)) {
        bv = sel[e];
        be = e;
      }
    warp_best(bv, be);
    if (lane == 0) {
      rv[warp] = bv;
      ri[warp] = be;
    }
    __syncthreads();
    if (tid == 0) {
      float v = rv[0];
      int e = ri[0];
      for (int w = 1; w < nw; ++w)
        if (beats(rv[w], ri[w], v, e)) {
          v = rv[w];
          e = ri[w];
        }
      chosen[k] = e;
      if (e >= 0) used[e] = true;
    }
    __syncthreads();
  }
  if (tid == 0) {
    for (int a = 1; a < K; ++a)  // ascending ids
      for (int b = a; b > 0 && chosen[b - 1] > chosen[b]; --b) {
        const int t = chosen[b];
        chosen[b] = chosen[b - 1];
        chosen[b - 1] = t;
      }
    float total = 0;
    for (int k = 0; k < K; ++k) total += sc[chosen[k]];
    const float denom = p.norm_topk_prob ? total + 1e-20f : 1.0f;
    for (int k = 0; k < K; ++k) {
      idx_out[n * K + k] = chosen[k];
      w_out[n * K + k] = st<T>(sc[chosen[k]] / denom * float(p.routed_scaling_factor));
    }
  }
}

template <typename T>
__global__ void sm90_router_small(int32_t* idx_out, T* w_out, T* scores_out, const T* logits,
                                  const float* bias, int E, RouterParams p) {
  const int64_t n = blockIdx.x;
  route_token<T, T>(idx_out, w_out, scores_out, logits + n * E, bias, E, p, n);
}

// grid (ceil(E / 8), N), 8 warps: logits[n, e] = x[n] · gate[e] in f32 for the block's 8 experts (one warp
// per row, 16-byte loads when vec) into global memory; the last block of token n to arrive (arrive[n]
// counts them, then is reset) routes it from the logits as sm90_router_small does. NORM: token n's input
// is the normalized input of na, built by each block in shared memory ([D] f32); block (0, n) writes its
// h_out / x_out row.
template <typename Tg, bool NORM>
__global__ void __launch_bounds__(256)
    sm90_router_decode(int32_t* idx_out, float* w_out, float* logits, int* arrive, const float* x,
                       const Tg* gate, const float* bias, int E, int D, bool vec, RouterParams p,
                       NormArgs na) {
  extern __shared__ __align__(16) float xs[];
  __shared__ float lg[kMaxE];
  __shared__ bool last;
  dep_launch();
  const int64_t n = blockIdx.y;
  const int lane = threadIdx.x & 31, e = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const float* xr = NORM ? xs : x + n * D;
  const Tg* g = gate + int64_t(e < E ? e : 0) * D;
  // The lane's first kPre chunks of its gate row, read before the wait (weights only).
  constexpr int kPre = 4;
  float pre[kPre][8] = {};
  if (e < E && vec)
#pragma unroll
    for (int j = 0; j < kPre; ++j)
      if (lane * 8 + j * 256 < D) load8(g + lane * 8 + j * 256, pre[j]);
  dep_wait();
  if constexpr (NORM) normed_rows<1>(xs, na, n, D, blockIdx.x == 0);
  if (e < E) {
    float acc = 0.0f;
    if (vec) {
#pragma unroll
      for (int j = 0; j < kPre; ++j)
        if (lane * 8 + j * 256 < D) acc += dot8(pre[j], xr + lane * 8 + j * 256);
#pragma unroll 4
      for (int i = lane * 8 + kPre * 256; i < D; i += 256) {
        float w8[8];
        load8(g + i, w8);
        acc += dot8(w8, xr + i);
      }
    } else {
      for (int i = lane; i < D; i += 32) acc += ld(g[i]) * xr[i];
    }
    acc = warp_sum(acc);
    if (lane == 0) logits[n * E + e] = acc;
  }
  __threadfence();  // the logits are visible device-wide before this block counts itself in
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&arrive[n], 1) == int(gridDim.x) - 1;
  __syncthreads();
  if (!last) return;
  if (threadIdx.x == 0) arrive[n] = 0;  // ready for the next launch
  for (int j = threadIdx.x; j < E; j += blockDim.x) lg[j] = __ldcg(logits + n * E + j);
  __syncthreads();
  route_token<float, float>(idx_out, w_out, nullptr, lg, bias, E, p, n);
}

}  // namespace

bool router_small_applies(int64_t N, int64_t E, const RouterParams& p) {
  static const bool off = [] {
    const char* v = std::getenv("DSEEK_ROUTER_SMALL");
    return v && std::strcmp(v, "0") == 0;
  }();
  return !off && N >= 1 && N <= 64 && E <= kMaxE && p.top_k <= kMaxK &&
         (p.method == TopkMethod::Greedy || p.n_group <= kMaxG);
}

void router_fwd_small(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                      const RouterParams& p) {
  const int64_t N = logits.size(0), E = logits.size(1);
  const int threads = E <= 128 ? 128 : 256;
  with_act(logits.dtype(), "router_fwd", [&](auto t) {
    using T = decltype(t);
    sm90_router_small<T><<<unsigned(N), threads>>>(topk_idx.data<int32_t>(), static_cast<T*>(topk_w.raw()),
                                                   scores.defined() ? static_cast<T*>(scores.raw()) : nullptr,
                                                   static_cast<const T*>(logits.raw()),
                                                   bias.defined() ? bias.data<float>() : nullptr, int(E), p);
  });
  DSEEK_CUDA_LAUNCH_CHECK("router_fwd (small batch)");
}

}  // namespace dseek::ops::cuda

namespace dseek::ops::cuda {

namespace {
// x or the normalized input `in` (x undefined) as the routers' input.
void router_launch(Tensor topk_idx, Tensor topk_w, const Tensor& x, const NormedInput* in, const Tensor& gate,
                   const Tensor& bias, const RouterParams& p) {
  const Tensor& xi = in ? in->h : x;
  const int64_t N = xi.size(0), D = xi.size(1), E = gate.size(0);
  const auto al = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  const bool vec = D % 8 == 0 && (in || al(x.raw())) && al(gate.raw());
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  Tensor logits = Tensor::empty({N, E}, DType::F32, Device::CUDA);  // logits: [N, E]
  int* arrive = arrival_counters() + kRouterCounters;
  const dim3 grid{unsigned((E + 7) / 8), unsigned(N)};
  const size_t smem = in ? size_t(D) * sizeof(float) : 0;
  const NormArgs na = in ? norm_args(*in) : NormArgs{};
  const float* xp = in ? nullptr : x.data<float>();
  auto run = [&](auto wt, auto norm) {
    using Tg = decltype(wt);
    const auto kernel = sm90_router_decode<Tg, decltype(norm)::value>;
    allow_smem(kernel, smem, "router_decode");
    launch_dep("router_decode", kernel, grid, 256, smem, topk_idx.data<int32_t>(), topk_w.data<float>(),
               logits.data<float>(), arrive, xp, static_cast<const Tg*>(gate.raw()), b, int(E), int(D), vec,
               p, na);
  };
  auto by_gate = [&](auto norm) {
    if (gate.dtype() == DType::F32) {
      run(float{}, norm);
    } else {
      run(bf16{}, norm);
    }
  };
  if (in) {
    by_gate(std::true_type{});
  } else {
    by_gate(std::false_type{});
  }
}
}  // namespace

void router_decode(Tensor topk_idx, Tensor topk_w, const Tensor& x, const Tensor& gate, const Tensor& bias,
                   const RouterParams& p) {
  router_launch(topk_idx, topk_w, x, nullptr, gate, bias, p);
}

void router_decode_normed(Tensor topk_idx, Tensor topk_w, const NormedInput& in, const Tensor& gate,
                          const Tensor& bias, const RouterParams& p) {
  router_launch(topk_idx, topk_w, Tensor(), &in, gate, bias, p);
}

}  // namespace dseek::ops::cuda
