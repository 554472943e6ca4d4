// router.cu — MoE routing on the GPU in one kernel (spec/model.md §4.2, §4.3): scores, bias for the
// selection, group-limited top-k, gate weights. One warp per token for layers of up to 256 experts, 32
// groups and 32 chosen experts (every DeepSeek model), else one thread per token (E ≤ 1024); a few tokens
// (a decode step) take router_small.cu's block per token.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kMaxExperts = 1024, kMaxGroups = 64;

template <typename T>
__global__ void router_kernel(int32_t* idx_out, T* w_out, T* scores_out, const T* logits, const float* bias,
                              int64_t N, int E, RouterParams p) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const T* l = logits + n * E;
  const int K = int(p.top_k);
  // Unbiased scores s (written to scores_out when asked) and the selection scores sc.
  float mx = -INFINITY, z = 0;
  if (p.scoring == ScoringFunc::Softmax) {
    for (int e = 0; e < E; ++e) mx = fmaxf(mx, ld(l[e]));
    for (int e = 0; e < E; ++e) z += __expf(ld(l[e]) - mx);
  }
  auto score = [&](int e) {
    const float v = ld(l[e]);
    return p.scoring == ScoringFunc::Sigmoid ? 1.0f / (1.0f + __expf(-v)) : __expf(v - mx) / z;
  };
  auto sel = [&](int e) { return score(e) + (bias ? bias[e] : 0.0f); };
  if (scores_out)
    for (int e = 0; e < E; ++e) scores_out[n * E + e] = st<T>(score(e));
  // Kept groups.
  bool keep_group[kMaxGroups];
  const int G = p.method == TopkMethod::Greedy ? 1 : int(p.n_group);
  const int gs = E / G;
  for (int g = 0; g < G; ++g) keep_group[g] = true;
  if (p.method != TopkMethod::Greedy && p.topk_group < p.n_group) {
    float gscore[kMaxGroups];
    for (int g = 0; g < G; ++g) {
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int j = 0; j < gs; ++j) {
        const float v = sel(g * gs + j);
        if (v > m1) {
          m2 = m1;
          m1 = v;
        } else if (v > m2) {
          m2 = v;
        }
      }
      gscore[g] = p.method == TopkMethod::NoauxTc ? (gs >= 2 ? m1 + m2 : m1) : m1;
      keep_group[g] = false;
    }
    for (int r = 0; r < int(p.topk_group); ++r) {  // pick the best remaining group; ties to the lower index
      int best = -1;
      for (int g = 0; g < G; ++g)
        if (!keep_group[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
      keep_group[best] = true;
    }
  }
  // Top-k experts among kept groups by repeated selection (ties to the lower index), then ascending order.
  int chosen[64];
  float total = 0;
  for (int k = 0; k < K; ++k) {
    int best = -1;
    float bv = -INFINITY;
    for (int e = 0; e < E; ++e) {
      if (!keep_group[e / gs]) continue;
      bool used = false;
      for (int j = 0; j < k; ++j) used |= chosen[j] == e;
      if (used) continue;
      const float v = sel(e);
      if (best < 0 || v > bv) {
        best = e;
        bv = v;
      }
    }
    chosen[k] = best;
  }
  for (int a = 1; a < K; ++a)  // insertion sort
    for (int b = a; b > 0 && chosen[b - 1] > chosen[b]; --b) {
      const int t = chosen[b];
      chosen[b] = chosen[b - 1];
      chosen[b - 1] = t;
    }
  for (int k = 0; k < K; ++k) total += score(chosen[k]);
  const float denom = p.norm_topk_prob ? total + 1e-20f : 1.0f;
  for (int k = 0; k < K; ++k) {
    idx_out[n * K + k] = chosen[k];
    w_out[n * K + k] = st<T>(score(chosen[k]) / denom * float(p.routed_scaling_factor));
  }
}

constexpr int kWarpMaxE = 256, kWarpMaxG = 32, kWarpMaxK = 32, kWarpsPerBlock = 8;

// The same rules as router_kernel, a warp per token: lane l holds experts l, l + 32, ...; the selection
// scores sit in shared memory for the per-group top-2 (lane g takes group g).
template <typename T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    router_warp_kernel(int32_t* idx_out, T* w_out, T* scores_out, const T* logits, const float* bias,
                       int64_t N, int E, RouterParams p) {
  __shared__ float sel_s[kWarpsPerBlock][kWarpMaxE];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = blockIdx.x * int64_t(kWarpsPerBlock) + warp;
  if (n >= N) return;
  const T* l = logits + n * E;
  const int K = int(p.top_k), J = (E + 31) / 32;
  float mx = 0.0f, z = 1.0f;
  if (p.scoring == ScoringFunc::Softmax) {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, ld(l[e]));
    mx = warp_max(m);
    float zz = 0.0f;
    for (int e = lane; e < E; e += 32) zz += __expf(ld(l[e]) - mx);
    z = warp_sum(zz);
  }
  float sc[kWarpMaxE / 32];  // this lane's unbiased scores
  float* sel = sel_s[warp];
#pragma unroll
  for (int j = 0; j < kWarpMaxE / 32; ++j) {
    const int e = lane + 32 * j;
    if (j >= J || e >= E) continue;
    const float v = ld(l[e]);
    sc[j] = p.scoring == ScoringFunc::Sigmoid ? 1.0f / (1.0f + __expf(-v)) : __expf(v - mx) / z;
    sel[e] = sc[j] + (bias ? bias[e] : 0.0f);
    if (scores_out) scores_out[n * E + e] = st<T>(sc[j]);
  }
  __syncwarp();
  const int G = p.method == TopkMethod::Greedy ? 1 : int(p.n_group);
  const int gs = E / G;
  uint32_t kept = 0xffffffffu;  // bit g: group g may be chosen from
  if (p.method != TopkMethod::Greedy && p.topk_group < p.n_group) {
    float gscore = -INFINITY;
    if (lane < G) {
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int j = 0; j < gs; ++j) {
        const float v = sel[lane * gs + j];
        if (v > m1) {
          m2 = m1;
          m1 = v;
        } else if (v > m2) {
          m2 = v;
        }
      }
      gscore = p.method == TopkMethod::NoauxTc ? (gs >= 2 ? m1 + m2 : m1) : m1;
    }
    kept = 0;
    for (int r = 0; r < int(p.topk_group); ++r) {
      float v = gscore;
      int i = lane < G && !((kept >> lane) & 1u) ? lane : -1;
      warp_best(v, i);
      if (i >= 0) kept |= 1u << i;
    }
  }
  // Top-k among the kept groups: K rounds of the warp's best remaining expert.
  uint32_t mine = 0;  // bit j: expert lane + 32j was chosen
  int chosen = -1;    // lane k < K ends up holding the k-th choice
  for (int k = 0; k < K; ++k) {
    float v = -INFINITY;
    int i = -1;
#pragma unroll
    for (int j = 0; j < kWarpMaxE / 32; ++j) {
      const int e = lane + 32 * j;
      if (j >= J || e >= E || ((mine >> j) & 1u) || !((kept >> (e / gs)) & 1u)) continue;
      if (beats(sel[e], e, v, i)) {
        v = sel[e];
        i = e;
      }
    }
    warp_best(v, i);
    if (i >= 0 && (i & 31) == lane) mine |= 1u << (i >> 5);
    if (lane == k) chosen = i;
  }
  // Ascending ids: lane k's rank among the chosen is its output position; weights from the unbiased
  // scores, summed in ascending id order as router_kernel does.
  int rank = 0;
  for (int k = 0; k < K; ++k) {
    const int c = __shfl_sync(0xffffffffu, chosen, k);
    rank += (lane < K && c < chosen) ? 1 : 0;
  }
  float s_mine = 0.0f;
  if (lane < K) {
    const float v = ld(l[chosen]);
    s_mine = p.scoring == ScoringFunc::Sigmoid ? 1.0f / (1.0f + __expf(-v)) : __expf(v - mx) / z;
  }
  float total = 0.0f;
  for (int pos = 0; pos < K; ++pos) {  // the score at output position pos, in order
    const unsigned at = __ballot_sync(0xffffffffu, lane < K && rank == pos);
    total += __shfl_sync(0xffffffffu, s_mine, __ffs(at) - 1);
  }
  const float denom = p.norm_topk_prob ? total + 1e-20f : 1.0f;
  if (lane < K) {
    idx_out[n * K + rank] = chosen;
    w_out[n * K + rank] = st<T>(s_mine / denom * float(p.routed_scaling_factor));
  }
}

// bias[e] += γ · sign(mean − load[e]) — the CPU's arithmetic (the step in double, rounded to f32, then
// an f32 add), so both give the same bits.
__global__ void bias_update_kernel(float* bias, const int64_t* load, int64_t E, double mean, double gamma) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= E) return;
  const double d = mean - double(load[e]);
  bias[e] = __fadd_rn(bias[e], float(gamma * double((d > 0) - (d < 0))));
}

}  // namespace

void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p) {
  const int64_t N = logits.size(0), E = logits.size(1);
  DSEEK_CHECK(
      E <= kMaxExperts && p.top_k <= 64 && (p.method == TopkMethod::Greedy || p.n_group <= kMaxGroups),
      "router_fwd (CUDA): at most ", kMaxExperts, " experts, 64 per token, ", kMaxGroups, " groups");
  if (N == 0) return;
  if (router_small_applies(N, E, p)) return router_fwd_small(topk_idx, topk_w, scores, logits, bias, p);
  const bool warp_fits = E <= kWarpMaxE && p.top_k <= kWarpMaxK &&
                         (p.method == TopkMethod::Greedy || p.n_group <= kWarpMaxG) && E >= p.top_k;
  with_act(logits.dtype(), "router_fwd", [&](auto t) {
    using T = decltype(t);
    if (warp_fits) {
      router_warp_kernel<<<unsigned((N + kWarpsPerBlock - 1) / kWarpsPerBlock), 32 * kWarpsPerBlock>>>(
          topk_idx.data<int32_t>(), static_cast<T*>(topk_w.raw()),
          scores.defined() ? static_cast<T*>(scores.raw()) : nullptr, static_cast<const T*>(logits.raw()),
          bias.defined() ? bias.data<float>() : nullptr, N, int(E), p);
      return;
    }
    router_kernel<<<blocks_for(N, 128), 128>>>(topk_idx.data<int32_t>(), static_cast<T*>(topk_w.raw()),
                                               scores.defined() ? static_cast<T*>(scores.raw()) : nullptr,
                                               static_cast<const T*>(logits.raw()),
                                               bias.defined() ? bias.data<float>() : nullptr, N, int(E), p);
  });
  DSEEK_CUDA_LAUNCH_CHECK("router_fwd");
}

void router_bias_update(Tensor bias, const std::vector<int64_t>& load, double mean, double gamma) {
  const int64_t E = int64_t(load.size());
  const Tensor dl = upload_i64(load);  // the counts go up; the bias never comes down
  bias_update_kernel<<<unsigned((E + 255) / 256), 256>>>(bias.data<float>(), dl.data<int64_t>(), E, mean,
                                                         gamma);
  DSEEK_CUDA_LAUNCH_CHECK("router_bias_update");
}

}  // namespace dseek::ops::cuda
