// decode.cpp — CPU reference of the decode ops over the paged latent cache (ops/decode.h; spec/model.md
// §2.5 absorbed MLA): plain loops, sequences and heads in parallel, f64 sums.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "ops/decode.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cpu {

namespace {

template <typename Fn>
void with_cpu_act(DType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case DType::F32:
      return fn(float{});
    case DType::F64:
      return fn(double{});
    default:
      fail(op, ": CPU activations are f32 or f64, not ", dtype_name(dt));
  }
}

}  // namespace

void paged_cache_write(Tensor pool, const Tensor& rows, const Tensor& slots) {
  const int64_t N = rows.size(0);
  const size_t row_bytes = size_t(rows.size(1)) * dtype_size(rows.dtype());
  const int32_t* s = slots.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    std::memcpy(static_cast<uint8_t*>(pool.raw()) + size_t(s[i]) * row_bytes,
                static_cast<const uint8_t*>(rows.raw()) + size_t(i) * row_bytes, row_bytes);
}

void mla_absorb_q(Tensor qa, const Tensor& q, const Tensor& kv_b, int64_t dn, int64_t dv) {
  const int64_t N = q.size(0), H = q.size(1), Dq = q.size(2), R = Dq - dn, C = kv_b.size(1), W = C + R;
  with_cpu_act(q.dtype(), "mla_absorb_q", [&](auto t) {
    using T = decltype(t);
    const T* qp = q.data<T>();
    const T* wp = kv_b.data<T>();
    T* out = qa.data<T>();
    parallel_for(N * H, 1, [&](int64_t s, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(C));
      for (int64_t nh = s; nh < e; ++nh) {
        const int64_t h = nh % H;
        const T* qr = qp + nh * Dq;            // q[n, h]: [dn + R]
        T* o = out + nh * W;                   // qa[n, h]: [C + R]
        const T* wk = wp + h * (dn + dv) * C;  // W_UK[h]: [dn, C]
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t i = 0; i < dn; ++i)
          for (int64_t c = 0; c < C; ++c) acc[size_t(c)] += double(qr[i]) * double(wk[i * C + c]);
        for (int64_t c = 0; c < C; ++c) o[c] = T(acc[size_t(c)]);
        for (int64_t r = 0; r < R; ++r) o[C + r] = qr[dn + r];
      }
    });
  });
}

void mla_absorb_o(Tensor o, const Tensor& o_lat, const Tensor& kv_b, int64_t dn, int64_t dv) {
  const int64_t N = o_lat.size(0), H = o_lat.size(1), C = o_lat.size(2);
  with_cpu_act(o_lat.dtype(), "mla_absorb_o", [&](auto t) {
    using T = decltype(t);
    const T* lp = o_lat.data<T>();
    const T* wp = kv_b.data<T>();
    T* op = o.data<T>();
    parallel_for(N * H, 1, [&](int64_t s, int64_t e) {
      for (int64_t nh = s; nh < e; ++nh) {
        const int64_t h = nh % H;
        const T* l = lp + nh * C;                     // o_lat[n, h]: [C]
        const T* wv = wp + (h * (dn + dv) + dn) * C;  // W_UV[h]: [dv, C]
        for (int64_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (int64_t c = 0; c < C; ++c) acc += double(l[c]) * double(wv[j * C + c]);
          op[nh * dv + j] = T(acc);
        }
      }
    });
  });
}

void mla_decode_paged(Tensor o_lat, const Tensor& q, const Tensor& pool, const Tensor& block_table,
                      const Tensor& seq_lens, double scale, int64_t) {
  const int64_t B = q.size(0), H = q.size(1), W = q.size(2), C = o_lat.size(2), MB = block_table.size(1);
  const int32_t* bt = block_table.data<int32_t>();
  const int32_t* lens = seq_lens.data<int32_t>();
  with_cpu_act(q.dtype(), "mla_decode_paged", [&](auto t) {
    using T = decltype(t);
    const T* qp = q.data<T>();
    const T* pp = pool.data<T>();
    T* op = o_lat.data<T>();
    parallel_for(B * H, 1, [&](int64_t s, int64_t e) {
      std::vector<double> sc, acc(static_cast<size_t>(C));
      for (int64_t bh = s; bh < e; ++bh) {
        const int64_t b = bh / H, L = lens[b];
        const T* qr = qp + bh * W;  // q[b, h]: [C + R]
        // row k of sequence b: pool[bt[b, k / 64], k % 64]
        auto row = [&](int64_t k) {
          return pp + (int64_t(bt[b * MB + k / kCacheBlock]) * kCacheBlock + k % kCacheBlock) * W;
        };
        sc.assign(size_t(L), 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t k = 0; k < L; ++k) {
          const T* r = row(k);
          double d = 0;
          for (int64_t i = 0; i < W; ++i) d += double(qr[i]) * double(r[i]);
          sc[size_t(k)] = d * scale;
          mx = std::max(mx, sc[size_t(k)]);
        }
        double sum = 0;
        for (auto& v : sc) sum += v = std::exp(v - mx);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t k = 0; k < L; ++k) {
          const T* r = row(k);
          const double p = sc[size_t(k)] / sum;
          for (int64_t c = 0; c < C; ++c) acc[size_t(c)] += p * double(r[c]);
        }
        for (int64_t c = 0; c < C; ++c) op[bh * C + c] = T(acc[size_t(c)]);
      }
    });
  });
}

void argmax_rows(Tensor ids, const Tensor& x) {
  const int64_t N = x.size(0), V = x.size(1);
  int64_t* out = ids.data<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    auto at = [&](int64_t v) {
      return x.dtype() == DType::F32 ? x.data<float>()[n * V + v]
                                     : bf16_to_f32(x.data<uint16_t>()[n * V + v]);
    };
    int64_t best = 0;
    float bv = at(0);
    for (int64_t v = 1; v < V; ++v) {
      const float f = at(v);
      if (f > bv) {
        bv = f;
        best = v;
      }
    }
    out[n] = best;
  }
}

// Per (token, slot): the expert's three products in f64 from the matrices converted to f64.
void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down) {
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), F = gate[0].size(0);
  const Tensor xd = x.to(DType::F64);
  std::vector<double> h(static_cast<size_t>(F));
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> acc(static_cast<size_t>(D), 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = topk_idx.data<int32_t>()[n * K + k];
      const double wk = topk_w.data<float>()[n * K + k];
      const Tensor g = gate[size_t(e)].to(DType::F64), u = up[size_t(e)].to(DType::F64),
                   dn = down[size_t(e)].to(DType::F64);
      const double* xr = xd.data<double>() + n * D;
      for (int64_t f = 0; f < F; ++f) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < D; ++i) {
          a += g.data<double>()[f * D + i] * xr[i];
          b += u.data<double>()[f * D + i] * xr[i];
        }
        h[size_t(f)] = a / (1.0 + std::exp(-a)) * b;
      }
      for (int64_t d = 0; d < D; ++d) {
        double y = 0;
        for (int64_t f = 0; f < F; ++f) y += dn.data<double>()[d * F + f] * h[size_t(f)];
        acc[size_t(d)] += wk * y;
      }
    }
    for (int64_t d = 0; d < D; ++d) out.data<float>()[n * D + d] = float(acc[size_t(d)]);
  }
}

}  // namespace dseek::ops::cpu
