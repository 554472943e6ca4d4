// blas.cpp — BLAS products split over dseek's OpenMP threads, OpenBLAS itself kept at one thread.
#include "ops/cpu/blas.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "core/parallel.h"

extern "C" void openblas_set_num_threads(int);

namespace dseek::ops::cpu {

namespace {

struct SingleThreadedBlas {
  SingleThreadedBlas() {
    // OpenBLAS's OpenMP build also sets OpenMP's thread count here: keep ours.
    const int ours = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(ours);
  }
};
const SingleThreadedBlas kInit;

inline void call(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N),
              int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
inline void call(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N),
              int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// Splits C's rows (or, when there are few, its columns) into one block per thread. A row block of C
// takes the matching rows of op(A); a column block takes the matching columns of op(B).
template <typename T>
void split_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int threads = omp_in_parallel() ? 1 : num_threads();
  if (threads <= 1 || flops < 4e5) {
    call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_rows = M >= N || M >= 16 * int64_t(threads);
  const int64_t total = by_rows ? M : N;
  const int nt = int(std::min<int64_t>(threads, std::max<int64_t>(total / 4, 1)));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T_ = omp_get_num_threads();
    const int64_t b = total * t / T_, e = total * (t + 1) / T_;
    if (b < e) {
      if (by_rows) {  // rows b..e of op(A): A[b, 0] (no trans) or A[0, b] (trans)
        const T* Ab = ta ? A + b : A + b * lda;
        call(ta, tb, e - b, N, K, alpha, Ab, lda, B, ldb, beta, C + b * ldc, ldc);
      } else {  // columns b..e of op(B): B[0, b] (no trans) or B[b, 0] (trans)
        const T* Bb = tb ? B + b * ldb : B + b;
        call(ta, tb, M, e - b, K, alpha, A, lda, Bb, ldb, beta, C + b, ldc);
      }
    }
  }
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  split_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  split_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace dseek::ops::cpu
