// blas.h — the one way CPU ops call BLAS. OpenBLAS runs single-threaded and dseek splits each product
// across its own OpenMP threads, so the result is the same whichever OpenBLAS build a machine has: a
// pthreads OpenBLAS beside our OpenMP threads would otherwise oversubscribe the cores (measured on a
// 16-core machine: 13× slower training).
#pragma once

#include <cstdint>

namespace dseek::ops::cpu {

// C[M, N] = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions (as cblas_?gemm).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

}  // namespace dseek::ops::cpu
