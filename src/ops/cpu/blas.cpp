// blas.cpp — BLAS products split over dseek's OpenMP threads, OpenBLAS itself kept at one thread.
#include "ops/cpu/blas.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

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

enum class Split { Rows, Cols, Inner };

// The cost of one thread's share, in multiply-adds: its part of the product, plus the panels OpenBLAS
// copies before multiplying (every thread packs all of the operand it does not split), plus, for a
// split of the inner dimension, writing and summing the partial products. The copy weights are rough
// (a packed element costs a few multiply-adds of a vectorised kernel); they only need to rank the
// three choices.
double split_cost(Split s, double M, double N, double K, double p) {
  constexpr double kPack = 3.0, kReduce = 2.0;
  switch (s) {
    case Split::Rows:
      return M * N * K / p + kPack * (M * K / p + K * N);
    case Split::Cols:
      return M * N * K / p + kPack * (M * K + K * N / p);
    case Split::Inner:
      return M * N * K / p + kPack * (M + N) * K / p + kReduce * M * N;
  }
  return 0;
}

// Partial products of an inner-dimension split (threads 1.. write here; thread 0 writes C), kept
// between calls so the step allocates nothing.
template <typename T>
std::vector<T>& partial_buffer() {
  thread_local std::vector<T> buf;
  return buf;
}

// Splits C's rows, its columns, or the inner dimension K into one block per thread, whichever the
// cost model finds cheapest. A row block of C takes the matching rows of op(A); a column block the
// matching columns of op(B); an inner block the matching columns of op(A) and rows of op(B), and the
// partial products are then summed in thread order (the same result for the same thread count).
template <typename T>
void split_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int threads = omp_in_parallel() ? 1 : num_threads();
  if (threads <= 1 || flops < 4e5) {
    call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Block counts: at least 4 rows / columns, at least 64 of K, and at least kMinMacsPerThread
  // multiply-adds per thread (~0.1 ms of a core's work; less is outweighed by the call's fixed costs and
  // the region's barrier: on the 16-core H200 host the MLA projections of the demo model ran slower at
  // 16 threads than at 8, in a run that also paid for thread re-creation, see parallel_for).
  constexpr double kMinMacsPerThread = 4e6;
  const int64_t by_work = std::max<int64_t>(1, int64_t(flops / 2 / kMinMacsPerThread));
  const int cap = int(std::min<int64_t>(threads, by_work));
  const int p_rows = int(std::min<int64_t>(cap, std::max<int64_t>(M / 4, 1)));
  const int p_cols = int(std::min<int64_t>(cap, std::max<int64_t>(N / 4, 1)));
  const int p_inner = int(std::min<int64_t>(cap, std::max<int64_t>(K / 64, 1)));
  Split best = Split::Rows;
  int nt = p_rows;
  double cost = split_cost(Split::Rows, double(M), double(N), double(K), p_rows);
  for (auto [s, p] : {std::pair{Split::Cols, p_cols}, std::pair{Split::Inner, p_inner}}) {
    const double c = split_cost(s, double(M), double(N), double(K), p);
    if (p > 1 && c < 0.95 * cost) {
      best = s;
      nt = p;
      cost = c;
    }
  }
  if (nt <= 1) {
    call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Every region starts the whole team (see parallel_for) and hands out the nt blocks dynamically.
  if (best != Split::Inner) {
    const bool by_rows = best == Split::Rows;
    const int64_t total = by_rows ? M : N;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int c = 0; c < nt; ++c) {
      const int64_t b = total * c / nt, e = total * (c + 1) / nt;
      if (b >= e) continue;
      if (by_rows) {  // rows b..e of op(A): A[b, 0] (no trans) or A[0, b] (trans)
        const T* Ab = ta ? A + b : A + b * lda;
        call(ta, tb, e - b, N, K, alpha, Ab, lda, B, ldb, beta, C + b * ldc, ldc);
      } else {  // columns b..e of op(B): B[0, b] (no trans) or B[b, 0] (trans)
        const T* Bb = tb ? B + b * ldb : B + b;
        call(ta, tb, M, e - b, K, alpha, A, lda, Bb, ldb, beta, C + b, ldc);
      }
    }
    return;
  }
  // Inner split: block 0 accumulates into C with beta, block c > 0 into partial c − 1 (each [M, N],
  // dense), then every row of C adds the partials 1.. in order.
  std::vector<T>& part = partial_buffer<T>();
  const size_t block = size_t(M) * size_t(N);
  if (part.size() < block * size_t(nt - 1)) part.resize(block * size_t(nt - 1));
  T* P = part.data();
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < nt; ++c) {
      const int64_t b = K * c / nt, e = K * (c + 1) / nt;
      // columns b..e of op(A): A[0, b] (no trans) or A[b, 0] (trans); rows b..e of op(B): B[b, 0] or
      // B[0, b]
      const T* Ab = ta ? A + b * lda : A + b;
      const T* Bb = tb ? B + b : B + b * ldb;
      if (c == 0) {
        call(ta, tb, M, N, e - b, alpha, Ab, lda, Bb, ldb, beta, C, ldc);
      } else {
        call(ta, tb, M, N, e - b, alpha, Ab, lda, Bb, ldb, T(0), P + block * size_t(c - 1), N);
      }
    }  // (the loop ends with a barrier)
    const int64_t rows_per = 8, row_blocks = (M + rows_per - 1) / rows_per;
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < row_blocks; ++rb)
      for (int64_t r = rb * rows_per; r < std::min(M, (rb + 1) * rows_per); ++r) {
        T* c = C + r * ldc;
        for (int u = 1; u < nt; ++u) {
          const T* src = P + block * size_t(u - 1) + size_t(r * N);
          for (int64_t j = 0; j < N; ++j) c[j] += src[j];
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
