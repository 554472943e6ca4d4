// gemv_bf16.cpp — bf16-weight × f32-activation products for decoding (DESIGN.md "CPU backend":
// hand-vectorised bf16→f32 GEMV). Weights are read once per call and widened exactly (bf16 is the top
// half of an f32); products accumulate in f32. AVX-512 where the CPU has it, AVX2+FMA otherwise.
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* temporaries.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "core/cpu_features.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

namespace {

__attribute__((target("avx2,fma"))) inline __m256 load8_bf16(const uint16_t* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NB tokens at once; two 8-wide accumulators per token.
template <int NB>
__attribute__((target("avx2,fma"))) void rows_avx2(float* y, int64_t ldy, const float* x, int64_t ldx,
                                                   const uint16_t* w, int64_t I, int64_t o0, int64_t o1) {
  const int64_t I16 = I & ~int64_t(15);
  for (int64_t o = o0; o < o1; ++o) {
    const uint16_t* wr = w + o * I;
    __m256 a0[NB], a1[NB];
    for (int n = 0; n < NB; ++n) a0[n] = a1[n] = _mm256_setzero_ps();
    for (int64_t i = 0; i < I16; i += 16) {
      __m256 w0 = load8_bf16(wr + i), w1 = load8_bf16(wr + i + 8);
      for (int n = 0; n < NB; ++n) {
        a0[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + n * ldx + i), a0[n]);
        a1[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + n * ldx + i + 8), a1[n]);
      }
    }
    for (int n = 0; n < NB; ++n) {
      float s = hsum8(_mm256_add_ps(a0[n], a1[n]));
      for (int64_t i = I16; i < I; ++i) s += bf16_to_f32(wr[i]) * x[n * ldx + i];
      y[n * ldy + o] = s;
    }
  }
}

__attribute__((target("avx512f,avx512bw"))) inline __m512 load16_bf16(const uint16_t* p) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

template <int NB>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(float* y, int64_t ldy, const float* x,
                                                             int64_t ldx, const uint16_t* w, int64_t I,
                                                             int64_t o0, int64_t o1) {
  const int64_t I32 = I & ~int64_t(31);
  for (int64_t o = o0; o < o1; ++o) {
    const uint16_t* wr = w + o * I;
    __m512 a0[NB], a1[NB];
    for (int n = 0; n < NB; ++n) a0[n] = a1[n] = _mm512_setzero_ps();
    for (int64_t i = 0; i < I32; i += 32) {
      __m512 w0 = load16_bf16(wr + i), w1 = load16_bf16(wr + i + 16);
      for (int n = 0; n < NB; ++n) {
        a0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + n * ldx + i), a0[n]);
        a1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + n * ldx + i + 16), a1[n]);
      }
    }
    for (int n = 0; n < NB; ++n) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(a0[n], a1[n]));
      for (int64_t i = I32; i < I; ++i) s += bf16_to_f32(wr[i]) * x[n * ldx + i];
      y[n * ldy + o] = s;
    }
  }
}

void run_block(float* y, int64_t ldy, const float* x, int64_t ldx, const uint16_t* w, int64_t nb, int64_t I,
               int64_t o0, int64_t o1) {
  const bool wide = cpu_has_avx512();
#define DSEEK_GEMV_CASE(NB)                          \
  case NB:                                           \
    if (wide) {                                      \
      rows_avx512<NB>(y, ldy, x, ldx, w, I, o0, o1); \
    } else {                                         \
      rows_avx2<NB>(y, ldy, x, ldx, w, I, o0, o1);   \
    }                                                \
    return;
  switch (nb) {
    DSEEK_GEMV_CASE(1)
    DSEEK_GEMV_CASE(2)
    DSEEK_GEMV_CASE(3)
    DSEEK_GEMV_CASE(4)
    default:
      break;
  }
#undef DSEEK_GEMV_CASE
}

}  // namespace

void gemv_bf16_rows(float* y, int64_t ldy, const float* x, int64_t ldx, const uint16_t* w, int64_t N,
                    int64_t I, int64_t o0, int64_t o1) {
  for (int64_t n0 = 0; n0 < N; n0 += 4) {
    const int64_t nb = std::min<int64_t>(4, N - n0);
    run_block(y + n0 * ldy, ldy, x + n0 * ldx, ldx, w, nb, I, o0, o1);
  }
}

}  // namespace dseek::ops::cpu
