// router_small.cu — MoE routing of a few tokens (a decode step) on the GPU, one thread block per token
// (spec/model.md §4.2, §4.3): scores (sigmoid or softmax) in parallel, each group's score (top-2 sum for
// noaux_tc, max for group_limited_greedy) by one thread per group, the kept groups and the chosen experts
// by rank (ties to the lower index), ascending ids and normalized, scaled gate weights — the same rules as
// router.cu's one-thread-per-token kernel, which large batches keep using. The decode form (router_decode)
// also computes the logits x · gateᵀ, spread over blocks of 8 experts, and the last block of each token to
// finish routes it, so routing a decode step is one launch (no cuBLAS product).
#include <cstdlib>
#include <cstring>

#include "ops/cuda/gemv.cuh"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kMaxE = 1024, kMaxG = 64, kMaxK = 64;

// The choice of token n from its logits l[0 .. E) (T or f32 in shared memory), by the whole block. Built
// for latency (a decode step waits on it): no rounds of block-wide argmax; each group's score is one
// thread's, a group is kept when fewer than topk_group groups beat it, an expert is chosen when it is in
// a kept group and fewer than top_k kept experts beat it (`beats`: a larger value, ties to the lower
// index — the same set the rounds of argmax pick), and one warp lists the chosen in ascending id with
// ballots. A NaN selection value ranks as −∞ (so exactly top_k experts are chosen).
template <typename T, typename L>
__device__ void route_token(int32_t* idx_out, T* w_out, T* scores_out, const L* l, const float* bias, int E,
                            const RouterParams& p, int64_t n) {
  __shared__ float sc[kMaxE], sel[kMaxE], gscore[kMaxG];
  __shared__ bool keep[kMaxG], pick[kMaxE];
  __shared__ int chosen[kMaxK];
  const int tid = threadIdx.x, lane = tid & 31;
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
    const float q = s + (bias ? bias[e] : 0.0f);
    sc[e] = s;
    sel[e] = isnan(q) ? -INFINITY : q;
    if (scores_out) scores_out[n * E + e] = st<T>(s);
  }
  const int G = p.method == TopkMethod::Greedy ? 1 : int(p.n_group);
  const int gs = E / G;
  const bool limit = p.method != TopkMethod::Greedy && p.topk_group < p.n_group;
  __syncthreads();
  if (limit) {
    for (int g = tid; g < G; g += blockDim.x) {  // the group's top two values (as a multiset)
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int j = 0; j < gs; ++j) {
        const float v = sel[g * gs + j];
        if (v > m1) {
          m2 = m1;
          m1 = v;
        } else if (v > m2) {
          m2 = v;
        }
      }
      gscore[g] = p.method == TopkMethod::NoauxTc ? (gs >= 2 ? m1 + m2 : m1) : m1;
    }
    __syncthreads();
    for (int g = tid; g < G; g += blockDim.x) {
      int above = 0;
      for (int o = 0; o < G; ++o) above += beats(gscore[o], o, gscore[g], g);
      keep[g] = above < int(p.topk_group);
    }
  } else {
    for (int g = tid; g < G; g += blockDim.x) keep[g] = true;
  }
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) {
    bool c = keep[e / gs];
    if (c) {
      int above = 0;
      const float v = sel[e];
      for (int g = 0; g < G && above < K; ++g)
        if (keep[g])
          for (int o = g * gs; o < (g + 1) * gs; ++o) above += beats(sel[o], o, v, e);
      c = above < K;
    }
    pick[e] = c;
  }
  __syncthreads();
  if (tid < 32) {
    int count = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const bool c = e0 + lane < E && pick[e0 + lane];
      const unsigned b = __ballot_sync(0xffffffffu, c);
      if (c && count + __popc(b & ((1u << lane) - 1u)) < K)
        chosen[count + __popc(b & ((1u << lane) - 1u))] = e0 + lane;
      count += __popc(b);
    }
    for (int k = count + lane; k < K; k += 32) chosen[k] = -1;  // fewer kept experts than top_k
    __syncwarp();
    if (lane == 0) {
      float total = 0;
      for (int k = 0; k < K; ++k) total += chosen[k] >= 0 ? sc[chosen[k]] : 0.0f;
      const float denom = p.norm_topk_prob ? total + 1e-20f : 1.0f;
      for (int k = 0; k < K; ++k) {
        idx_out[n * K + k] = chosen[k];
        w_out[n * K + k] =
            st<T>(chosen[k] >= 0 ? sc[chosen[k]] / denom * float(p.routed_scaling_factor) : 0.0f);
      }
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
