// adamw.cpp — CPU AdamW (decoupled weight decay, bias correction, as torch.optim.AdamW) with f32 or
// bf16 moments, and a thread-count-independent sum of squares for global-norm clipping.
#include <immintrin.h>

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

namespace {
template <typename M>
inline float load_m(const M* p, int64_t i) {
  if constexpr (std::is_same_v<M, float>) {
    return p[i];
  } else {
    return bf16_to_f32(p[i]);
  }
}
template <typename M>
inline void store_m(M* p, int64_t i, float v) {
  if constexpr (std::is_same_v<M, float>) {
    p[i] = v;
  } else {
    p[i] = f32_to_bf16(v);
  }
}

template <typename M>
void adamw_impl(float* w, const float* g, M* m, M* v, int64_t n, const AdamWParams& p) {
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step)), bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  const float step_size = float(p.lr / bc1), bc2_sqrt = float(std::sqrt(bc2));
  const float decay = float(1.0 - p.lr * p.weight_decay);
  const float b1 = float(p.beta1), b2 = float(p.beta2), eps = float(p.eps), gs = float(p.grad_scale);
  parallel_for(n, 1 << 14, [&](int64_t a, int64_t b) {
    int64_t i = a;
    if constexpr (std::is_same_v<M, float>) {
      // 8 lanes, the same operations in the same order as the scalar loop (no contraction to FMA), so
      // an element's result does not depend on where a thread's chunk starts.
      const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vc1 = _mm256_set1_ps(1 - b1),
                   vc2 = _mm256_set1_ps(1 - b2), vgs = _mm256_set1_ps(gs), vbc2 = _mm256_set1_ps(bc2_sqrt),
                   veps = _mm256_set1_ps(eps), vdecay = _mm256_set1_ps(decay),
                   vstep = _mm256_set1_ps(step_size);
      for (; i + 8 <= b; i += 8) {
        const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vgs);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(vc1, gi));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                        _mm256_mul_ps(_mm256_mul_ps(vc2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), vbc2), veps);
        const __m256 wi = _mm256_loadu_ps(w + i);
        _mm256_storeu_ps(
            w + i, _mm256_sub_ps(_mm256_mul_ps(wi, vdecay), _mm256_div_ps(_mm256_mul_ps(vstep, mi), denom)));
      }
    }
    for (; i < b; ++i) {
      const float gi = g[i] * gs;
      const float mi = b1 * load_m(m, i) + (1 - b1) * gi;
      const float vi = b2 * load_m(v, i) + (1 - b2) * gi * gi;
      store_m(m, i, mi);
      store_m(v, i, vi);
      const float denom = std::sqrt(load_m(v, i)) / bc2_sqrt + eps;
      w[i] = w[i] * decay - step_size * load_m(m, i) / denom;
    }
  });
}
}  // namespace

void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p) {
  const int64_t n = param.numel();
  if (m.dtype() == DType::F32) {
    adamw_impl(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), n, p);
  } else {
    adamw_impl(param.data<float>(), grad.data<float>(), m.data<uint16_t>(), v.data<uint16_t>(), n, p);
  }
}

double sum_squares(const Tensor& t) {
  const int64_t n = t.numel(), block = 1 << 16, nb = (n + block - 1) / block;
  std::vector<double> part(static_cast<size_t>(nb));
  parallel_for(nb, 1, [&](int64_t a, int64_t b) {
    for (int64_t k = a; k < b; ++k) {
      double s = 0;
      const int64_t e = std::min(n, (k + 1) * block);
      if (t.dtype() == DType::F64) {
        const double* x = t.data<double>();
        for (int64_t i = k * block; i < e; ++i) s += x[i] * x[i];
      } else {  // four f64 lanes × 2 accumulators, summed in a fixed order
        const float* x = t.data<float>();
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        int64_t i = k * block;
        for (; i + 8 <= e; i += 8) {
          const __m256 v = _mm256_loadu_ps(x + i);
          const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                        hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
          a0 = _mm256_fmadd_pd(lo, lo, a0);
          a1 = _mm256_fmadd_pd(hi, hi, a1);
        }
        alignas(32) double lanes[4];
        _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
        s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for (; i < e; ++i) s += double(x[i]) * double(x[i]);
      }
      part[size_t(k)] = s;
    }
  });
  double total = 0;
  for (double s : part) total += s;  // fixed order: independent of the thread count
  return total;
}

}  // namespace dseek::ops::cpu
