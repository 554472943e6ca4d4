// vec.h — AVX2 helpers for the f32 loops of the CPU training step (softmax, SwiGLU, cross-entropy,
// RMSNorm, MoE gate gradients): a vectorised e^x and the row reductions built on it (DESIGN.md "CPU
// backend": hand-vectorised AVX2/FMA). The build's floor is x86-64-v3, so AVX2 + FMA are always there.
// Sums run over lanes and then the lanes in a fixed order: the same input gives the same result
// whatever the thread count (resumed runs must be bitwise equal).
//
// e^x: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two parts), e^r by a degree-7 series in r
// (Cephes's minimax coefficients for expf), 2^n put into the exponent bits. Relative error about 2e-7
// (≈2 ulp) over [−87, 88]; inputs are clamped to that range (e^−87 ≈ 1.6e-38 stands in for smaller
// results, e^88 for larger ones); NaN stays NaN.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace dseek::ops::cpu::vec {

inline __m256 exp8(__m256 x) {
  // max/min return their second operand when either is NaN: x goes second, so NaN passes through.
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
  const __m256 magic = _mm256_set1_ps(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Loads / stores the first n ≤ 8 floats, the other lanes read as `fill`.
inline __m256 load_part(const float* p, int64_t n, float fill) {
  if (n >= 8) return _mm256_loadu_ps(p);
  alignas(32) float b[8];
  for (int i = 0; i < 8; ++i) b[i] = i < n ? p[i] : fill;
  return _mm256_load_ps(b);
}
inline void store_part(float* p, int64_t n, __m256 v) {
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  for (int64_t i = 0; i < n; ++i) p[i] = b[i];
}

inline float hsum(__m256 v) {
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  return ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}
inline float hmax(__m256 v) {
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  float m = b[0];
  for (int i = 1; i < 8; ++i) m = b[i] > m ? b[i] : m;
  return m;
}

// max_i x[i] (n ≥ 1).
inline float max(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-__builtin_inff());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  if (i < n) m = _mm256_max_ps(m, load_part(x + i, n - i, -__builtin_inff()));
  return hmax(m);
}

// x[i] = e^(x[i] − shift) for i < n; returns Σ_i x[i].
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (i < n) {
    const __m256 e = exp8(_mm256_sub_ps(load_part(x + i, n - i, shift), s));
    store_part(x + i, n - i, e);
    // lanes past n held e^0 = 1: leave them out of the sum
    alignas(32) float b[8];
    _mm256_store_ps(b, e);
    for (int64_t j = n - i; j < 8; ++j) b[j] = 0;
    acc = _mm256_add_ps(acc, _mm256_load_ps(b));
  }
  return hsum(acc);
}

// x[i] *= a for i < n.
inline void scale(float* x, int64_t n, float a) {
  const __m256 s = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), s));
  for (; i < n; ++i) x[i] *= a;
}

// Σ_i x[i]·y[i].
inline float dot(const float* x, const float* y, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc);
  if (i < n) acc = _mm256_fmadd_ps(load_part(x + i, n - i, 0.0f), load_part(y + i, n - i, 0.0f), acc);
  return hsum(acc);
}

// Σ_i x[i]·y[i] with the products and the sum in f64 (four f64 lanes × 2).
inline double dot_f64(const float* x, const float* y, int64_t n) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(y + i);
    acc0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                           _mm256_cvtps_pd(_mm256_castps256_ps128(b)), acc0);
    acc1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                           _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)), acc1);
  }
  alignas(32) double l[4];
  _mm256_store_pd(l, _mm256_add_pd(acc0, acc1));
  double s = (l[0] + l[1]) + (l[2] + l[3]);
  for (; i < n; ++i) s += double(x[i]) * double(y[i]);
  return s;
}

// 1 / (1 + e^−x)
inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

}  // namespace dseek::ops::cpu::vec
