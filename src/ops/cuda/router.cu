// router.cu — MoE routing on the GPU in one kernel (spec/model.md §4.2, §4.3): scores, bias for the
// selection, group-limited top-k, gate weights; one thread per token (E ≤ 1024).
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

}  // namespace

void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p) {
  const int64_t N = logits.size(0), E = logits.size(1);
  DSEEK_CHECK(
      E <= kMaxExperts && p.top_k <= 64 && (p.method == TopkMethod::Greedy || p.n_group <= kMaxGroups),
      "router_fwd (CUDA): at most ", kMaxExperts, " experts, 64 per token, ", kMaxGroups, " groups");
  if (N == 0) return;
  if (router_small_applies(N, E, p)) return router_fwd_small(topk_idx, topk_w, scores, logits, bias, p);
  with_act(logits.dtype(), "router_fwd", [&](auto t) {
    using T = decltype(t);
    router_kernel<<<blocks_for(N, 128), 128>>>(topk_idx.data<int32_t>(), static_cast<T*>(topk_w.raw()),
                                               scores.defined() ? static_cast<T*>(scores.raw()) : nullptr,
                                               static_cast<const T*>(logits.raw()),
                                               bias.defined() ? bias.data<float>() : nullptr, N, int(E), p);
  });
  DSEEK_CUDA_LAUNCH_CHECK("router_fwd");
}

}  // namespace dseek::ops::cuda
