// norm_rope.cpp — CPU RMSNorm (spec/model.md §2.1) and interleaved-pair RoPE (§2.4, §3).
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/vec.h"

namespace dseek::ops::cpu {

namespace {

// Σ_i a[i]·b[i] in f64.
template <typename T, typename W>
inline double dot_f64(const T* a, const W* b, int64_t n) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<W, float>) {
    return vec::dot_f64(a, b, n);
  } else {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
    return s;
  }
}

template <typename T, typename W>
void rmsnorm_impl(T* out, T* rstd, const T* x, const W* w, int64_t N, int64_t D, double eps) {
  parallel_for(N, grain_for_bytes(2 * D * int64_t(sizeof(T))), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * D;
      const double ss = dot_f64(xr, xr, D);
      const T r = T(1.0 / std::sqrt(ss / double(D) + eps));
      if (rstd) rstd[n] = r;
      T* yr = out + n * D;
      for (int64_t i = 0; i < D; ++i) yr[i] = T(w[i]) * (xr[i] * r);
    }
  });
}

template <typename T>
void rope_impl(T* x, const int64_t* pos, const float* inv_freq, int64_t N, int64_t H, int64_t W, int64_t col,
               int64_t half, double attention_factor, float sign) {
  parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
    std::vector<T> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t i = 0; i < half; ++i) {
        const float theta = float(pos[n]) * inv_freq[i];  // f32, as transformers computes the angles
        c[size_t(i)] = T(float(std::cos(theta)) * float(attention_factor));
        s[size_t(i)] = T(sign * float(std::sin(theta)) * float(attention_factor));
      }
      for (int64_t h = 0; h < H; ++h) {
        T* v = x + (n * H + h) * W + col;
        for (int64_t i = 0; i < half; ++i) {
          const T a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * c[size_t(i)] - b * s[size_t(i)];
          v[2 * i + 1] = a * s[size_t(i)] + b * c[size_t(i)];
        }
      }
    }
  });
}

// Rows go in blocks of kNormRowBlock: a block writes its rows of dx and its partial sum of dw; the
// partials are then added to dw in block order, so the result does not depend on the thread count.
constexpr int64_t kNormRowBlock = 64;

template <typename T, typename W, typename G>
void rmsnorm_bwd_impl(T* dx, G* dw, const T* dy, const T* x, const W* w, const T* rstd, int64_t N,
                      int64_t D) {
  const int64_t nb = (N + kNormRowBlock - 1) / kNormRowBlock;
  std::vector<T> part(dw ? size_t(nb * D) : 0);  // part: [nb, D] per-block Σ dy·x·rstd
  parallel_for(nb, grain_for_bytes(3 * kNormRowBlock * D * int64_t(sizeof(T))), [&](int64_t b0, int64_t b1) {
    std::vector<T> t(static_cast<size_t>(D));  // t: [D] w ⊙ dy of one row
    for (int64_t blk = b0; blk < b1; ++blk) {
      T* pw = dw ? part.data() + blk * D : nullptr;
      if (pw) std::fill_n(pw, D, T(0));
      for (int64_t n = blk * kNormRowBlock; n < std::min(N, (blk + 1) * kNormRowBlock); ++n) {
        const T* xr = x + n * D;
        const T* gr = dy + n * D;
        const T r = rstd[n];
        if (dx) {
          for (int64_t i = 0; i < D; ++i) t[size_t(i)] = T(w[i]) * gr[i];
          const double dot = dot_f64(t.data(), xr, D);  // Σ_j dy_j w_j x_j
          const T c = T(dot / double(D)) * r * r * r;
          T* o = dx + n * D;
          for (int64_t i = 0; i < D; ++i) o[i] = r * t[size_t(i)] - c * xr[i];
        }
        if (pw)
          for (int64_t i = 0; i < D; ++i) pw[i] += gr[i] * xr[i] * r;
      }
    }
  });
  if (dw) {
    parallel_for(D, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t blk = 0; blk < nb; ++blk) {
        const T* pw = part.data() + blk * D;
        for (int64_t i = i0; i < i1; ++i) dw[i] += G(pw[i]);
      }
    });
  }
}

}  // namespace

void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                 const Tensor& rstd) {
  const int64_t N = x.size(0), D = x.size(1);
  if (x.dtype() == DType::F64) {
    DSEEK_CHECK(w.dtype() == DType::F64 && (!dw.defined() || dw.dtype() == DType::F64),
                "rmsnorm_bwd: f64 needs f64 w");
    rmsnorm_bwd_impl(dx.defined() ? dx.data<double>() : nullptr, dw.defined() ? dw.data<double>() : nullptr,
                     dy.data<double>(), x.data<double>(), w.data<double>(), rstd.data<double>(), N, D);
  } else {
    rmsnorm_bwd_impl(dx.defined() ? dx.data<float>() : nullptr, dw.defined() ? dw.data<float>() : nullptr,
                     dy.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(), N, D);
  }
}

void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps) {
  const int64_t N = x.size(0), D = x.size(1);
  if (x.dtype() == DType::F64) {
    double* r = rstd.defined() ? rstd.data<double>() : nullptr;
    if (w.dtype() == DType::F64) {
      rmsnorm_impl(out.data<double>(), r, x.data<double>(), w.data<double>(), N, D, eps);
    } else {
      rmsnorm_impl(out.data<double>(), r, x.data<double>(), w.data<float>(), N, D, eps);
    }
  } else {
    float* r = rstd.defined() ? rstd.data<float>() : nullptr;
    rmsnorm_impl(out.data<float>(), r, x.data<float>(), w.data<float>(), N, D, eps);
  }
}

// The reference: the add, then the norm of the sum (what the unfused layer computes, bit for bit).
void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps) {
  axpy_(h, y, 1.0);
  rmsnorm_fwd(out, rstd, h, w, eps);
}

namespace {
void rope_any(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col, double attention_factor,
              float sign) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), half = inv_freq.size(0);
  if (x.dtype() == DType::F64) {
    rope_impl(x.data<double>(), positions.data<int64_t>(), inv_freq.data<float>(), N, H, W, col, half,
              attention_factor, sign);
  } else {
    rope_impl(x.data<float>(), positions.data<int64_t>(), inv_freq.data<float>(), N, H, W, col, half,
              attention_factor, sign);
  }
}
}  // namespace

void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor) {
  rope_any(x, positions, inv_freq, col, attention_factor, 1.0f);
}

// The transpose of the rotation (a·R)ᵀ = a·R(−θ): the same code with sin negated.
void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor) {
  rope_any(dx, positions, inv_freq, col, attention_factor, -1.0f);
}

}  // namespace dseek::ops::cpu
