// linear.cpp — CPU matrix products (DESIGN.md "CPU backend"): OpenBLAS sgemm/dgemm for f32/f64
// weights and for bf16 weights at prefill sizes (converted block by block), the vectorised bf16 GEMV
// (gemv_bf16.cpp) for decoding. fp32 accumulation throughout.

#include <vector>

#include "core/parallel.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {

namespace {

constexpr int64_t kGemvMaxTokens = 8;  // up to this many rows of x, stream bf16 weights once (GEMV)
constexpr int64_t kConvertRows = 256;  // rows of a bf16 weight converted per sgemm block

// y[N, O] (ldy) = x[N, I] · Wᵀ with W bf16 [O, I] (trans_w) or x · W with W bf16 [I, O] (!trans_w).
void gemm_bf16_blocked(float* y, int64_t ldy, const float* x, const uint16_t* w, int64_t N, int64_t I,
                       int64_t O, bool trans_w) {
  const int64_t rows_total = trans_w ? O : I;  // rows of W
  const int64_t cols = trans_w ? I : O;
  std::vector<float> buf(static_cast<size_t>(kConvertRows * cols));
  for (int64_t r0 = 0; r0 < rows_total; r0 += kConvertRows) {
    const int64_t nr = std::min(kConvertRows, rows_total - r0);
    const uint16_t* src = w + r0 * cols;
    parallel_for(nr * cols, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) buf[size_t(i)] = bf16_to_f32(src[i]);
    });
    if (trans_w) {
      // y[:, r0:r0+nr] = x · buf[nr, I]ᵀ
      gemm(false, true, int(N), int(nr), int(I), 1.0f, x, int(I), buf.data(), int(I), 0.0f, y + r0, int(ldy));
    } else {
      // y += x[:, r0:r0+nr] · buf[nr, O]
      gemm(false, false, int(N), int(O), int(nr), 1.0f, x + r0, int(I), buf.data(), int(O),
           r0 == 0 ? 0.0f : 1.0f, y, int(ldy));
    }
  }
}

}  // namespace

void linear(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  if (N == 0 || O == 0) return;
  if (I == 0) {
    out.fill(0);
    return;
  }
  if (x.dtype() == DType::F64) {
    gemm(false, true, int(N), int(O), int(I), 1.0, x.data<double>(), int(I), w.data<double>(), int(I), 0.0,
         out.data<double>(), int(O));
    return;
  }
  float* y = out.data<float>();
  const float* xp = x.data<float>();
  if (w.dtype() == DType::F32) {
    gemm(false, true, int(N), int(O), int(I), 1.0f, xp, int(I), w.data<float>(), int(I), 0.0f, y, int(O));
    return;
  }
  const uint16_t* wp = w.data<uint16_t>();
  if (N <= kGemvMaxTokens) {
    parallel_for(O, 64, [&](int64_t o0, int64_t o1) { gemv_bf16_rows(y, O, xp, I, wp, N, I, o0, o1); });
    return;
  }
  gemm_bf16_blocked(y, O, xp, wp, N, I, O, /*trans_w=*/true);
}

void matmul_nn(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(1);
  if (N == 0 || O == 0) return;
  if (I == 0) {
    out.fill(0);
    return;
  }
  if (x.dtype() == DType::F64) {
    gemm(false, false, int(N), int(O), int(I), 1.0, x.data<double>(), int(I), w.data<double>(), int(O), 0.0,
         out.data<double>(), int(O));
    return;
  }
  float* y = out.data<float>();
  const float* xp = x.data<float>();
  if (w.dtype() == DType::F32) {
    gemm(false, false, int(N), int(O), int(I), 1.0f, xp, int(I), w.data<float>(), int(O), 0.0f, y, int(O));
    return;
  }
  const uint16_t* wp = w.data<uint16_t>();
  if (N <= kGemvMaxTokens) {
    // Stream W's rows once: y[n, :] += x[n, i] · W[i, :], columns split across threads.
    parallel_for(O, 256, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < N; ++n) {
        float* yr = y + n * O;
        for (int64_t c = c0; c < c1; ++c) yr[c] = 0.0f;
      }
      for (int64_t i = 0; i < I; ++i) {
        const uint16_t* wr = wp + i * O;
        for (int64_t n = 0; n < N; ++n) {
          const float a = xp[n * I + i];
          float* yr = y + n * O;
          for (int64_t c = c0; c < c1; ++c) yr[c] += a * bf16_to_f32(wr[c]);
        }
      }
    });
    return;
  }
  gemm_bf16_blocked(y, O, xp, wp, N, I, O, /*trans_w=*/false);
}

void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  if (N == 0) {
    if (dx.defined()) dx.fill(0);
    return;
  }
  if (x.dtype() == DType::F64) {
    if (dx.defined())  // dx[N, I] = dy[N, O] · w[O, I]
      gemm(false, false, int(N), int(I), int(O), 1.0, dy.data<double>(), int(O), w.data<double>(), int(I),
           0.0, dx.data<double>(), int(I));
    if (dw.defined())  // dw[O, I] += dy[N, O]ᵀ · x[N, I]
      gemm(true, false, int(O), int(I), int(N), 1.0, dy.data<double>(), int(O), x.data<double>(), int(I), 1.0,
           dw.data<double>(), int(I));
    return;
  }
  if (dx.defined()) {
    if (w.dtype() == DType::F32) {
      gemm(false, false, int(N), int(I), int(O), 1.0f, dy.data<float>(), int(O), w.data<float>(), int(I),
           0.0f, dx.data<float>(), int(I));
    } else {
      gemm_bf16_blocked(dx.data<float>(), I, dy.data<float>(), w.data<uint16_t>(), N, O, I,
                        /*trans_w=*/false);
    }
  }
  if (dw.defined())
    gemm(true, false, int(O), int(I), int(N), 1.0f, dy.data<float>(), int(O), x.data<float>(), int(I), 1.0f,
         dw.data<float>(), int(I));
}

}  // namespace dseek::ops::cpu
