// cross_entropy.cpp — CPU LM head + cross-entropy, fused and chunked over tokens so only a
// [chunk, V] block of logits exists at a time (DESIGN.md model/: "LM head + fused cross-entropy").

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/vec.h"

namespace dseek::ops::cpu {

namespace {

template <typename T>
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                 int64_t ldb, T beta, T* C, int64_t ldc) {
  cpu::gemm(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
CrossEntropyResult ce_impl(T* dh, T* dw, const T* h, const T* w, const int64_t* tgt, int64_t N, int64_t D,
                           int64_t V, double scale) {
  const int64_t chunk =
      std::max<int64_t>(16, std::min<int64_t>(1024, (int64_t(1) << 22) / std::max<int64_t>(V, 1)));
  std::vector<T> L(size_t(chunk * V));
  std::vector<double> row_loss(static_cast<size_t>(chunk));
  CrossEntropyResult r;
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t n = std::min(chunk, N - n0);
    gemm(false, true, n, V, D, h + n0 * D, D, w, D, T(0), L.data(), V);  // logits [n, V]
    parallel_for(n, 32, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) {
        T* l = L.data() + i * V;
        const int64_t t = tgt[n0 + i];
        row_loss[size_t(i)] = 0;
        if (t < 0) {
          if (dh) std::fill_n(l, V, T(0));
          continue;
        }
        if constexpr (std::is_same_v<T, float>) {
          // one pass of e^(l − max) kept in place, then dlogits = scale · (softmax − onehot)
          const float lt = l[t], mx = vec::max(l, V);
          const float z = vec::exp_shift_sum(l, V, mx);
          row_loss[size_t(i)] = std::log(double(z)) + double(mx) - double(lt);
          if (dh) {
            vec::scale(l, V, float(scale / double(z)));
            l[t] -= float(scale);
          }
        } else {
          T mx = l[0];
          for (int64_t v = 1; v < V; ++v) mx = std::max(mx, l[v]);
          double z = 0;
          for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v] - mx));
          row_loss[size_t(i)] = std::log(z) + double(mx) - double(l[t]);
          if (dh) {  // dlogits = scale · (softmax − onehot)
            const double inv = 1.0 / z;
            for (int64_t v = 0; v < V; ++v) l[v] = T(scale * std::exp(double(l[v] - mx)) * inv);
            l[t] -= T(scale);
          }
        }
      }
    });
    for (int64_t i = 0; i < n; ++i)
      if (tgt[n0 + i] >= 0) {
        r.loss_sum += row_loss[size_t(i)];
        ++r.count;
      }
    if (dh) {
      gemm(false, false, n, D, V, L.data(), V, w, D, T(0), dh + n0 * D, D);  // dh [n, D] = dlogits · w
      if (dw) gemm(true, false, V, D, n, L.data(), V, h + n0 * D, D, T(1), dw, D);  // dw += dlogitsᵀ · h
    }
  }
  return r;
}

}  // namespace

CrossEntropyResult lm_head_cross_entropy(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                         const Tensor& targets, double scale) {
  const int64_t N = h.size(0), D = h.size(1), V = w.size(0);
  if (h.dtype() == DType::F64) {
    return ce_impl(dh.defined() ? dh.data<double>() : nullptr, dw.defined() ? dw.data<double>() : nullptr,
                   h.data<double>(), w.data<double>(), targets.data<int64_t>(), N, D, V, scale);
  }
  return ce_impl(dh.defined() ? dh.data<float>() : nullptr, dw.defined() ? dw.data<float>() : nullptr,
                 h.data<float>(), w.data<float>(), targets.data<int64_t>(), N, D, V, scale);
}

}  // namespace dseek::ops::cpu
