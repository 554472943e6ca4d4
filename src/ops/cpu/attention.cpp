// attention.cpp — CPU causal attention, naive (per-head BLAS products) and absorbed MLA (one BLAS
// product for all heads against the shared latent rows) (spec/model.md §2.2, §2.5, §2.6).

#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "ops/attention.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/vec.h"

namespace dseek::ops::cpu {

namespace {

// C[M, N] = alpha · A[M, K] · op(B) with leading dims (row-major); op(B) = Bᵀ when trans_b.
inline void gemm(bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float* C, int64_t ldc) {
  cpu::gemm(false, trans_b, M, N, K, float(alpha), A, lda, B, ldb, 0.0f, C, ldc);
}
inline void gemm(bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                 const double* B, int64_t ldb, double* C, int64_t ldc) {
  cpu::gemm(false, trans_b, M, N, K, alpha, A, lda, B, ldb, 0.0, C, ldc);
}

// Row-wise causal softmax in place: row r may see columns [0, visible(r)); columns [visible(r), cols)
// become 0.
template <typename T, typename Visible>
void causal_softmax(T* p, int64_t rows, int64_t ldp, int64_t cols, Visible visible) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = p + r * ldp;
    const int64_t n = visible(r);
    if constexpr (std::is_same_v<T, float>) {
      const float mx = vec::max(row, n);
      vec::scale(row, n, 1.0f / vec::exp_shift_sum(row, n, mx));
    } else {
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
      T sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    }
    std::fill(row + n, row + cols, T(0));
  }
}

// Queries are taken in blocks of this many rows: a block's products stop at its last visible key,
// which skips most of the masked upper triangle.
constexpr int64_t kQueryBlock = 64;

// One head of one sequence: P[T, Se] (leading dim ldp ≥ Se) = softmax(scale · q_h k_hᵀ, causal) and
// out_h = P v_h. q/k/v/out rows are H·Dq (H·Dv) apart. Query block [r0, r1) sees keys [0, q_pos0 + r1).
template <typename T>
void head_fwd(T* out, T* P, int64_t ldp, const T* q, const T* k, const T* v, int64_t T_, int64_t H,
              int64_t Dq, int64_t Dv, double scale, int64_t q_pos0, int64_t h) {
  for (int64_t r0 = 0; r0 < T_; r0 += kQueryBlock) {
    const int64_t n = std::min(kQueryBlock, T_ - r0), S = q_pos0 + r0 + n;
    T* Pb = P + r0 * ldp;  // Pb: rows [r0, r0 + n) of P
    gemm(true, n, S, Dq, scale, q + r0 * H * Dq + h * Dq, H * Dq, k + h * Dq, H * Dq, Pb, ldp);
    causal_softmax(Pb, n, ldp, ldp, [&](int64_t t) { return q_pos0 + r0 + t + 1; });
    gemm(false, n, Dv, S, 1.0, Pb, ldp, v + h * Dv, H * Dv, out + r0 * H * Dv + h * Dv, H * Dv);
  }
}

template <typename T>
void attention_impl(T* out, T* probs, const T* q, const T* k, const T* v, int64_t T_, int64_t H, int64_t Dq,
                    int64_t Dv, int64_t S, double scale, int64_t q_pos0) {
  const int64_t Se = q_pos0 + T_;  // keys any query can see
  // Heads in parallel, each product single-threaded inside.
#pragma omp parallel
  {
    std::vector<T> local;
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      if (!probs) local.resize(size_t(T_ * Se));
      T* P = probs ? probs + h * T_ * S : local.data();
      head_fwd(out, P, probs ? S : Se, q, k, v, T_, H, Dq, Dv, scale, q_pos0, h);
    }
  }
}

template <typename T>
void absorbed_impl(T* o_lat, const T* q, const T* rows, int64_t T_, int64_t H, int64_t W, int64_t C,
                   double scale, int64_t q_pos0) {
  const int64_t Se = q_pos0 + T_;
  std::vector<T> P(size_t(T_ * H * Se));
  // P[T·H, Se] = scale · q[T·H, W] · rows[Se, W]ᵀ   — every head reads the same latent rows (MQA)
  gemm(true, T_ * H, Se, W, scale, q, W, rows, W, P.data(), Se);
  causal_softmax(P.data(), T_ * H, Se, Se, [&](int64_t r) { return q_pos0 + r / H + 1; });
  // o_lat[T·H, C] = P · rows[:, :C]
  gemm(false, T_ * H, C, Se, 1.0, P.data(), Se, rows, W, o_lat, C);
}

// Backward of one head of one sequence from its probabilities P [T, S] (ld S); dP is scratch
// [kQueryBlock, Se]. Query blocks run last to first: the last one sees every key and writes dK, dV
// (beta 0), the earlier ones add into the keys they see.
template <typename T>
void head_bwd(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* P, int64_t S,
              T* dP, int64_t T_, int64_t H, int64_t Dq, int64_t Dv, double scale, int64_t q_pos0, int64_t h) {
  const int64_t last = (T_ - 1) / kQueryBlock * kQueryBlock;
  for (int64_t r0 = last; r0 >= 0; r0 -= kQueryBlock) {
    const int64_t n = std::min(kQueryBlock, T_ - r0), Sb = q_pos0 + r0 + n;
    const T beta = r0 == last ? T(0) : T(1);
    const T* Pb = P + r0 * S;                    // Pb: [n, Sb] rows r0.. of P
    const T* dOb = dout + r0 * H * Dv + h * Dv;  // dOb: [n, Dv] rows r0.. of this head's dO
    // dV_h[Sb, Dv] (+)= Pbᵀ · dOb
    cpu::gemm(true, false, Sb, Dv, n, T(1), Pb, S, dOb, H * Dv, beta, dv + h * Dv, H * Dv);
    // dP[n, Sb] = dOb · V_h[:Sb]ᵀ
    cpu::gemm(false, true, n, Sb, Dv, T(1), dOb, H * Dv, v + h * Dv, H * Dv, T(0), dP, Sb);
    // dS = P ⊙ (dP − Σ_j dP_j P_j)
    for (int64_t t = 0; t < n; ++t) {
      const T* p = Pb + t * S;
      T* d = dP + t * Sb;
      const int64_t m = q_pos0 + r0 + t + 1;
      if constexpr (std::is_same_v<T, float>) {
        const float dot = vec::dot(d, p, m);
        for (int64_t j = 0; j < m; ++j) d[j] = p[j] * (d[j] - dot);
      } else {
        T dot = 0;
        for (int64_t j = 0; j < m; ++j) dot += d[j] * p[j];
        for (int64_t j = 0; j < m; ++j) d[j] = p[j] * (d[j] - dot);
      }
      std::fill(d + m, d + Sb, T(0));
    }
    // dQ_h[rows] = scale · dS · K_h[:Sb];  dK_h[:Sb] (+)= scale · dSᵀ · Q_h[rows]
    cpu::gemm(false, false, n, Dq, Sb, T(scale), dP, Sb, k + h * Dq, H * Dq, T(0), dq + r0 * H * Dq + h * Dq,
              H * Dq);
    cpu::gemm(true, false, Sb, Dq, n, T(scale), dP, Sb, q + r0 * H * Dq + h * Dq, H * Dq, beta, dk + h * Dq,
              H * Dq);
  }
}

template <typename T>
void attention_bwd_impl(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, int64_t T_, int64_t H, int64_t Dq, int64_t Dv, int64_t S,
                        double scale, int64_t q_pos0) {
  const int64_t Se = q_pos0 + T_;
  // Keys past Se get no gradient.
  for (int64_t s = Se; s < S; ++s) {
    std::fill_n(dk + s * H * Dq, H * Dq, T(0));
    std::fill_n(dv + s * H * Dv, H * Dv, T(0));
  }
#pragma omp parallel
  {
    std::vector<T> dP;
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < H; ++h) {
      dP.resize(size_t(std::min(T_, kQueryBlock) * Se));
      head_bwd(dq, dk, dv, dout, q, k, v, probs + h * T_ * S, S, dP.data(), T_, H, Dq, Dv, scale, q_pos0, h);
    }
  }
}

// Varlen: every (sequence, head) pair is one task; the pairs run in parallel.
template <typename T>
void varlen_fwd(T* out, T* probs, const T* q, const T* k, const T* v, const std::vector<int64_t>& cu,
                int64_t H, int64_t Dq, int64_t Dv, double scale) {
  const int64_t B = int64_t(cu.size()) - 1;
  const std::vector<int64_t> poff = varlen_probs_offsets(cu, H);  // start of each sequence's probs
#pragma omp parallel
  {
    std::vector<T> local;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t L = cu[b + 1] - cu[b], r0 = cu[b];
        if (L == 0) continue;
        if (!probs) local.resize(size_t(L * L));
        T* P = probs ? probs + poff[size_t(b)] + h * L * L : local.data();
        head_fwd(out + r0 * H * Dv, P, L, q + r0 * H * Dq, k + r0 * H * Dq, v + r0 * H * Dv, L, H, Dq, Dv,
                 scale, 0, h);
      }
    }
  }
}

template <typename T>
void varlen_bwd(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* probs,
                const std::vector<int64_t>& cu, int64_t H, int64_t Dq, int64_t Dv, double scale) {
  const int64_t B = int64_t(cu.size()) - 1;
  const std::vector<int64_t> poff = varlen_probs_offsets(cu, H);  // start of each sequence's probs
#pragma omp parallel
  {
    std::vector<T> dP;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t L = cu[b + 1] - cu[b], r0 = cu[b];
        if (L == 0) continue;
        dP.resize(size_t(std::min(L, kQueryBlock) * L));
        head_bwd(dq + r0 * H * Dq, dk + r0 * H * Dq, dv + r0 * H * Dv, dout + r0 * H * Dv, q + r0 * H * Dq,
                 k + r0 * H * Dq, v + r0 * H * Dv, probs + poff[size_t(b)] + h * L * L, L, dP.data(), L, H,
                 Dq, Dv, scale, 0, h);
      }
    }
  }
}

}  // namespace

void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0) {
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2), S = k.size(0), Dv = v.size(2);
  if (T == 0) return;
  if (q.dtype() == DType::F64) {
    attention_bwd_impl(dq.data<double>(), dk.data<double>(), dv.data<double>(), dout.data<double>(),
                       q.data<double>(), k.data<double>(), v.data<double>(), probs.data<double>(), T, H, Dq,
                       Dv, S, scale, q_pos0);
  } else {
    attention_bwd_impl(dq.data<float>(), dk.data<float>(), dv.data<float>(), dout.data<float>(),
                       q.data<float>(), k.data<float>(), v.data<float>(), probs.data<float>(), T, H, Dq, Dv,
                       S, scale, q_pos0);
  }
}

void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0) {
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2), S = k.size(0), Dv = v.size(2);
  if (T == 0) return;
  if (q.dtype() == DType::F64) {
    attention_impl(out.data<double>(), probs.defined() ? probs.data<double>() : nullptr, q.data<double>(),
                   k.data<double>(), v.data<double>(), T, H, Dq, Dv, S, scale, q_pos0);
  } else {
    attention_impl(out.data<float>(), probs.defined() ? probs.data<float>() : nullptr, q.data<float>(),
                   k.data<float>(), v.data<float>(), T, H, Dq, Dv, S, scale, q_pos0);
  }
}

void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0) {
  const int64_t T = q.size(0), H = q.size(1), W = q.size(2), C = o_lat.size(2);
  if (T == 0) return;
  if (q.dtype() == DType::F64) {
    absorbed_impl(o_lat.data<double>(), q.data<double>(), rows.data<double>(), T, H, W, C, scale, q_pos0);
  } else {
    absorbed_impl(o_lat.data<float>(), q.data<float>(), rows.data<float>(), T, H, W, C, scale, q_pos0);
  }
}

void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu, double scale) {
  const int64_t H = q.size(1), Dq = q.size(2), Dv = v.size(2);
  if (q.dtype() == DType::F64) {
    varlen_fwd(out.data<double>(), probs.defined() ? probs.data<double>() : nullptr, q.data<double>(),
               k.data<double>(), v.data<double>(), cu, H, Dq, Dv, scale);
  } else {
    varlen_fwd(out.data<float>(), probs.defined() ? probs.data<float>() : nullptr, q.data<float>(),
               k.data<float>(), v.data<float>(), cu, H, Dq, Dv, scale);
  }
}

void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu, double scale) {
  const int64_t H = q.size(1), Dq = q.size(2), Dv = v.size(2);
  if (q.dtype() == DType::F64) {
    varlen_bwd(dq.data<double>(), dk.data<double>(), dv.data<double>(), dout.data<double>(), q.data<double>(),
               k.data<double>(), v.data<double>(), probs.data<double>(), cu, H, Dq, Dv, scale);
  } else {
    varlen_bwd(dq.data<float>(), dk.data<float>(), dv.data<float>(), dout.data<float>(), q.data<float>(),
               k.data<float>(), v.data<float>(), probs.data<float>(), cu, H, Dq, Dv, scale);
  }
}

}  // namespace dseek::ops::cpu
