// elementwise.cpp — CPU SwiGLU, embedding gather, axpy and column copies.
#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/vec.h"

namespace dseek::ops::cpu {

namespace {
// f32 runs 8 lanes at a time with the vectorised sigmoid (the last < 8 elements too, through a
// partial load), so an element's result does not depend on where a thread's chunk starts.
template <typename T>
void swiglu_impl(T* out, const T* g, const T* u, int64_t n) {
  parallel_for(n, grain_for_bytes(3 * sizeof(T)), [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t i = b; i < e; i += 8) {
        const int64_t m = std::min<int64_t>(8, e - i);
        const __m256 gv = vec::load_part(g + i, m, 0.0f), uv = vec::load_part(u + i, m, 0.0f);
        vec::store_part(out + i, m, _mm256_mul_ps(_mm256_mul_ps(gv, vec::sigmoid8(gv)), uv));
      }
    } else {
      for (int64_t i = b; i < e; ++i) out[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
    }
  });
}
template <typename T>
void swiglu_bwd_impl(T* dg, T* du, const T* dout, const T* g, const T* u, int64_t n) {
  parallel_for(n, grain_for_bytes(5 * sizeof(T)), [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, float>) {
      const __m256 one = _mm256_set1_ps(1.0f);
      for (int64_t i = b; i < e; i += 8) {
        const int64_t m = std::min<int64_t>(8, e - i);
        const __m256 gv = vec::load_part(g + i, m, 0.0f), d = vec::load_part(dout + i, m, 0.0f),
                     uv = vec::load_part(u + i, m, 0.0f);
        const __m256 sg = vec::sigmoid8(gv);
        // dg = d · u · σ · (1 + g · (1 − σ)),  du = d · g · σ
        const __m256 k = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, sg), one);
        vec::store_part(dg + i, m, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, uv), sg), k));
        vec::store_part(du + i, m, _mm256_mul_ps(d, _mm256_mul_ps(gv, sg)));
      }
    } else {
      for (int64_t i = b; i < e; ++i) {
        const T sg = T(1) / (T(1) + std::exp(-g[i]));
        const T silu = g[i] * sg;
        const T d = dout[i];
        dg[i] = d * u[i] * sg * (T(1) + g[i] * (T(1) - sg));
        du[i] = d * silu;
      }
    }
  });
}
template <typename T>
void embedding_bwd_impl(T* dt, const int64_t* ids, const T* dout, int64_t N, int64_t D) {
  // Columns split across threads so rows of repeated ids never race.
  parallel_for(D, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      T* row = dt + ids[n] * D;
      const T* g = dout + n * D;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  });
}
template <typename T>
void axpy_impl(T* x, const T* y, T a, int64_t n) {
  parallel_for(n, grain_for_bytes(3 * sizeof(T)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] += a * y[i];
  });
}
}  // namespace

void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up) {
  if (gate.dtype() == DType::F64) {
    swiglu_impl(out.data<double>(), gate.data<double>(), up.data<double>(), gate.numel());
  } else {
    swiglu_impl(out.data<float>(), gate.data<float>(), up.data<float>(), gate.numel());
  }
}

void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table) {
  const int64_t N = ids.size(0), V = table.size(0), D = table.size(1);
  const int64_t* id = ids.data<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    DSEEK_CHECK(id[n] >= 0 && id[n] < V, "token id ", id[n], " is outside the vocabulary (", V, ")");
  const size_t es = dtype_size(table.dtype()), os = dtype_size(out.dtype());
  parallel_for(N, grain_for_bytes(D * int64_t(es + os)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      convert(static_cast<uint8_t*>(out.raw()) + size_t(n * D) * os, out.dtype(),
              static_cast<const uint8_t*>(table.raw()) + size_t(id[n] * D) * es, table.dtype(), size_t(D));
  });
}

void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  if (gate.dtype() == DType::F64) {
    swiglu_bwd_impl(dgate.data<double>(), dup.data<double>(), dout.data<double>(), gate.data<double>(),
                    up.data<double>(), gate.numel());
  } else {
    swiglu_bwd_impl(dgate.data<float>(), dup.data<float>(), dout.data<float>(), gate.data<float>(),
                    up.data<float>(), gate.numel());
  }
}

void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout) {
  const int64_t N = ids.size(0), V = dtable.size(0), D = dtable.size(1);
  const int64_t* id = ids.data<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    DSEEK_CHECK(id[n] >= 0 && id[n] < V, "token id ", id[n], " is outside the vocabulary (", V, ")");
  if (dtable.dtype() == DType::F64) {
    embedding_bwd_impl(dtable.data<double>(), id, dout.data<double>(), N, D);
  } else {
    embedding_bwd_impl(dtable.data<float>(), id, dout.data<float>(), N, D);
  }
}

void add_(Tensor x, const Tensor& y) {
  axpy_(x, y, 1.0);
}

void axpy_(Tensor x, const Tensor& y, double alpha) {
  if (x.dtype() == DType::F64) {
    axpy_impl(x.data<double>(), y.data<double>(), alpha, x.numel());
  } else {
    axpy_impl(x.data<float>(), y.data<float>(), float(alpha), x.numel());
  }
}

void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width) {
  const int64_t R = dst.size(0), Wd = dst.size(1), Ws = src.size(1);
  const size_t es = dtype_size(dst.dtype());
  auto d = static_cast<uint8_t*>(dst.raw());
  auto s = static_cast<const uint8_t*>(src.raw());
  parallel_for(R, grain_for_bytes(2 * width * int64_t(es)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(d + size_t(r * Wd + dcol) * es, s + size_t(r * Ws + scol) * es, size_t(width) * es);
  });
}

void copy_cols_many(const std::vector<ColBlock>& blocks) {
  const int64_t R = blocks[0].dst.size(0);
  const DType dt = blocks[0].dst.dtype();
  const size_t es = dtype_size(dt);
  int64_t bytes_per_row = 0;
  for (const ColBlock& b : blocks) {
    bytes_per_row += 2 * b.width * int64_t(es);
    DSEEK_CHECK(!b.add || dt == DType::F32 || dt == DType::F64, "copy_cols_many: adding ", dtype_name(dt),
                " on the CPU");
  }
  parallel_for(R, grain_for_bytes(bytes_per_row), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (const ColBlock& b : blocks) {
        auto d = static_cast<uint8_t*>(b.dst.raw()) + size_t(r * b.dst.size(1) + b.dcol) * es;
        auto s = static_cast<const uint8_t*>(b.src.raw()) + size_t(r * b.src.size(1) + b.scol) * es;
        if (!b.add) {
          std::memcpy(d, s, size_t(b.width) * es);
        } else if (dt == DType::F64) {
          for (int64_t i = 0; i < b.width; ++i)
            reinterpret_cast<double*>(d)[i] += reinterpret_cast<const double*>(s)[i];
        } else {
          for (int64_t i = 0; i < b.width; ++i)
            reinterpret_cast<float*>(d)[i] += reinterpret_cast<const float*>(s)[i];
        }
      }
  });
}

}  // namespace dseek::ops::cpu
