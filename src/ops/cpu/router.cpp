// router.cpp — CPU MoE routing (spec/model.md §4.2 V3 noaux_tc, §4.3 V2 greedy / group_limited_greedy).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

namespace {

template <typename T>
void route_impl(int32_t* idx_out, T* w_out, T* scores_out, const T* logits, const float* bias, int64_t N,
                int64_t E, const RouterParams& p) {
  const int64_t K = p.top_k;
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<T> s(static_cast<size_t>(E)), sc(static_cast<size_t>(E));
    std::vector<int64_t> order(static_cast<size_t>(E)), gorder(size_t(std::max<int64_t>(p.n_group, 1)));
    std::vector<T> gscore(gorder.size());
    std::vector<char> keep(static_cast<size_t>(E));
    for (int64_t n = n0; n < n1; ++n) {
      const T* l = logits + n * E;
      if (p.scoring == ScoringFunc::Sigmoid) {
        for (int64_t e = 0; e < E; ++e) s[size_t(e)] = T(1) / (T(1) + std::exp(-l[e]));
      } else {
        T mx = *std::max_element(l, l + E), sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += (s[size_t(e)] = std::exp(l[e] - mx));
        for (int64_t e = 0; e < E; ++e) s[size_t(e)] /= sum;
      }
      if (scores_out) std::copy(s.begin(), s.end(), scores_out + n * E);
      for (int64_t e = 0; e < E; ++e) sc[size_t(e)] = s[size_t(e)] + (bias ? T(bias[e]) : T(0));
      // Ties go to the lower expert / group index.
      auto by_score = [](const std::vector<T>& v) {
        return [&v](int64_t a, int64_t b) {
          return v[size_t(a)] != v[size_t(b)] ? v[size_t(a)] > v[size_t(b)] : a < b;
        };
      };
      std::fill(keep.begin(), keep.end(), 1);
      if (p.method != TopkMethod::Greedy && p.topk_group < p.n_group) {
        const int64_t G = p.n_group, gs = E / G;
        for (int64_t g = 0; g < G; ++g) {
          const T* b = sc.data() + g * gs;
          if (p.method == TopkMethod::NoauxTc) {
            // Sum of the group's two largest biased scores (one when a group has a single expert).
            T m1 = -std::numeric_limits<T>::infinity(), m2 = m1;
            for (int64_t j = 0; j < gs; ++j) {
              if (b[j] > m1) {
                m2 = m1;
                m1 = b[j];
              } else if (b[j] > m2) {
                m2 = b[j];
              }
            }
            gscore[size_t(g)] = gs >= 2 ? m1 + m2 : m1;
          } else {
            gscore[size_t(g)] = *std::max_element(b, b + gs);
          }
        }
        std::iota(gorder.begin(), gorder.end(), 0);
        std::partial_sort(gorder.begin(), gorder.begin() + p.topk_group, gorder.end(), by_score(gscore));
        std::fill(keep.begin(), keep.end(), 0);
        for (int64_t i = 0; i < p.topk_group; ++i) std::fill_n(keep.begin() + gorder[size_t(i)] * gs, gs, 1);
      }
      order.clear();
      for (int64_t e = 0; e < E; ++e)
        if (keep[size_t(e)]) order.push_back(e);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), by_score(sc));
      std::sort(order.begin(), order.begin() + K);
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += s[size_t(order[size_t(k)])];
      const T denom = p.norm_topk_prob ? sum + T(1e-20) : T(1);
      for (int64_t k = 0; k < K; ++k) {
        idx_out[n * K + k] = int32_t(order[size_t(k)]);
        w_out[n * K + k] = s[size_t(order[size_t(k)])] / denom * T(p.routed_scaling_factor);
      }
    }
  });
}

template <typename T>
void router_bwd_impl(T* dlogits, const T* dw, const int32_t* idx, const T* scores, int64_t N, int64_t E,
                     const RouterParams& p) {
  const int64_t K = p.top_k;
  const T rsf = T(p.routed_scaling_factor);
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<T> ds(static_cast<size_t>(E));
    for (int64_t n = n0; n < n1; ++n) {
      const T* s = scores + n * E;
      std::fill(ds.begin(), ds.end(), T(0));
      // w_k = rsf · s_k / den,  den = Σ_j s_j + 1e-20 (norm_topk_prob), else w_k = rsf · s_k.
      T den = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) {
        den += s[idx[n * K + k]];
        dot += dw[n * K + k] * s[idx[n * K + k]];
      }
      den += T(1e-20);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[n * K + k];
        ds[size_t(e)] +=
            p.norm_topk_prob ? rsf * (dw[n * K + k] / den - dot / (den * den)) : rsf * dw[n * K + k];
      }
      T* dl = dlogits + n * E;
      if (p.scoring == ScoringFunc::Sigmoid) {
        for (int64_t e = 0; e < E; ++e) dl[e] = ds[size_t(e)] * s[e] * (T(1) - s[e]);
      } else {
        T sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += ds[size_t(e)] * s[e];
        for (int64_t e = 0; e < E; ++e) dl[e] = s[e] * (ds[size_t(e)] - sum);
      }
    }
  });
}

}  // namespace

void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p) {
  const int64_t N = scores.size(0), E = scores.size(1);
  if (scores.dtype() == DType::F64) {
    router_bwd_impl(dlogits.data<double>(), dtopk_w.data<double>(), topk_idx.data<int32_t>(),
                    scores.data<double>(), N, E, p);
  } else {
    router_bwd_impl(dlogits.data<float>(), dtopk_w.data<float>(), topk_idx.data<int32_t>(),
                    scores.data<float>(), N, E, p);
  }
}

void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p) {
  const int64_t N = logits.size(0), E = logits.size(1);
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  if (logits.dtype() == DType::F64) {
    route_impl(topk_idx.data<int32_t>(), topk_w.data<double>(),
               scores.defined() ? scores.data<double>() : nullptr, logits.data<double>(), b, N, E, p);
  } else {
    route_impl(topk_idx.data<int32_t>(), topk_w.data<float>(),
               scores.defined() ? scores.data<float>() : nullptr, logits.data<float>(), b, N, E, p);
  }
}

namespace {
template <typename T>
double balance_impl(T* dlogits, const T* scores, const int32_t* idx, int64_t N, int64_t E, int64_t seq_len,
                    double alpha, const RouterParams& p) {
  const int64_t K = p.top_k, B = N / seq_len;
  double loss = 0;
  std::vector<double> f(static_cast<size_t>(E)), P(static_cast<size_t>(E)), g(static_cast<size_t>(E));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
      for (int64_t k = 0; k < K; ++k) f[size_t(idx[t * K + k])] += double(E) / double(K * seq_len);
      const T* s = scores + t * E;
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += double(s[e]);
      for (int64_t e = 0; e < E; ++e) P[size_t(e)] += double(s[e]) / z / double(seq_len);
    }
    for (int64_t e = 0; e < E; ++e) loss += alpha * f[size_t(e)] * P[size_t(e)] / double(B);
    if (!dlogits) continue;
    // ∂L/∂s'_{i,t} = α f_i / (T·B); s' = s / Σ s; then through the scoring function.
    for (int64_t e = 0; e < E; ++e) g[size_t(e)] = alpha * f[size_t(e)] / double(seq_len * B);
    for (int64_t t = b * seq_len; t < (b + 1) * seq_len; ++t) {
      const T* s = scores + t * E;
      double z = 0, dot = 0;
      for (int64_t e = 0; e < E; ++e) z += double(s[e]);
      for (int64_t e = 0; e < E; ++e) dot += g[size_t(e)] * double(s[e]) / z;
      T* dl = dlogits + t * E;
      if (p.scoring == ScoringFunc::Sigmoid) {
        for (int64_t e = 0; e < E; ++e) {
          const double ds = (g[size_t(e)] - dot) / z;
          dl[e] += T(ds * double(s[e]) * (1.0 - double(s[e])));
        }
      } else {
        std::vector<double> ds(static_cast<size_t>(E));
        double sum = 0;
        for (int64_t e = 0; e < E; ++e) {
          ds[size_t(e)] = (g[size_t(e)] - dot) / z;
          sum += ds[size_t(e)] * double(s[e]);
        }
        for (int64_t e = 0; e < E; ++e) dl[e] += T(double(s[e]) * (ds[size_t(e)] - sum));
      }
    }
  }
  return loss;
}
}  // namespace

double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p) {
  const int64_t N = scores.size(0), E = scores.size(1);
  if (scores.dtype() == DType::F64)
    return balance_impl(dlogits.defined() ? dlogits.data<double>() : nullptr, scores.data<double>(),
                        topk_idx.data<int32_t>(), N, E, seq_len, alpha, p);
  return balance_impl(dlogits.defined() ? dlogits.data<float>() : nullptr, scores.data<float>(),
                      topk_idx.data<int32_t>(), N, E, seq_len, alpha, p);
}

}  // namespace dseek::ops::cpu
