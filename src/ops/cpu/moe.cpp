// moe.cpp — CPU token permutation and grouped expert products: experts run in parallel (each product
// single-threaded) when there are enough of them, else one after another with threaded products.
#include "ops/moe.h"

#include <cstring>

#include "core/parallel.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/vec.h"

namespace dseek::ops::cpu {

namespace {

template <typename Fn>
void for_experts(const MoePlan& p, Fn&& fn) {
  std::vector<int64_t> active;
  for (int64_t e = 0; e < p.experts; ++e)
    if (p.rows(e) > 0) active.push_back(e);
  if (int64_t(active.size()) >= num_threads() && num_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < active.size(); ++i) fn(active[i]);
  } else {
    for (int64_t e : active) fn(e);
  }
}

template <typename T>
void unpermute_impl(T* out, const T* yp, const T* w, const MoePlan& p, int64_t D) {
  const int64_t K = p.top_k;
  parallel_for(p.tokens, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      T* o = out + n * D;
      std::fill_n(o, D, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T* y = yp + p.row[size_t(n * K + k)] * D;
        const T g = w[n * K + k];
        for (int64_t i = 0; i < D; ++i) o[i] += g * y[i];
      }
    }
  });
}

template <typename T>
void unpermute_bwd_impl(T* dyp, T* dw, const T* dout, const T* yp, const T* w, const MoePlan& p, int64_t D) {
  const int64_t K = p.top_k;
  parallel_for(p.tokens * K, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t slot = p.slot[size_t(r)], n = slot / K;
      const T* d = dout + n * D;
      const T* y = yp + r * D;
      T* o = dyp + r * D;
      const T g = w[slot];
      if constexpr (std::is_same_v<T, float>) {
        dw[slot] = T(vec::dot_f64(d, y, D));
        for (int64_t i = 0; i < D; ++i) o[i] = g * d[i];
      } else {
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) {
          dot += double(d[i]) * double(y[i]);
          o[i] = g * d[i];
        }
        dw[slot] = T(dot);
      }
    }
  });
}

template <typename T>
void permute_bwd_impl(T* dx, const T* dxp, const MoePlan& p, int64_t D) {
  const int64_t K = p.top_k;
  parallel_for(p.tokens, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      T* o = dx + n * D;
      std::fill_n(o, D, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T* s = dxp + p.row[size_t(n * K + k)] * D;
        for (int64_t i = 0; i < D; ++i) o[i] += s[i];
      }
    }
  });
}

}  // namespace

void moe_permute(Tensor xp, const Tensor& x, const MoePlan& p) {
  const int64_t D = x.size(1), K = p.top_k;
  const size_t rb = size_t(D) * dtype_size(x.dtype());
  auto dst = static_cast<uint8_t*>(xp.raw());
  auto src = static_cast<const uint8_t*>(x.raw());
  parallel_for(p.tokens * K, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(dst + size_t(r) * rb, src + size_t(p.slot[size_t(r)] / K) * rb, rb);
  });
}

void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& p) {
  const int64_t D = dxp.size(1);
  if (dx.dtype() == DType::F64) {
    permute_bwd_impl(dx.data<double>(), dxp.data<double>(), p, D);
  } else {
    permute_bwd_impl(dx.data<float>(), dxp.data<float>(), p, D);
  }
}

void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& p) {
  for_experts(p, [&](int64_t e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    linear(out.slice(r0, n), x.slice(r0, n), w[size_t(e)]);
  });
}

void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& p) {
  for_experts(p, [&](int64_t e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    linear_bwd(dx.defined() ? dx.slice(r0, n) : Tensor(), dw.empty() ? Tensor() : dw[size_t(e)],
               dy.slice(r0, n), x.slice(r0, n), w[size_t(e)]);
  });
}

void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& p) {
  const int64_t D = yp.size(1);
  if (yp.dtype() == DType::F64) {
    unpermute_impl(out.data<double>(), yp.data<double>(), topk_w.data<double>(), p, D);
  } else {
    unpermute_impl(out.data<float>(), yp.data<float>(), topk_w.data<float>(), p, D);
  }
}

void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& p) {
  const int64_t D = yp.size(1);
  if (yp.dtype() == DType::F64) {
    unpermute_bwd_impl(dyp.data<double>(), dtopk_w.data<double>(), dout.data<double>(), yp.data<double>(),
                       topk_w.data<double>(), p, D);
  } else {
    unpermute_bwd_impl(dyp.data<float>(), dtopk_w.data<float>(), dout.data<float>(), yp.data<float>(),
                       topk_w.data<float>(), p, D);
  }
}

}  // namespace dseek::ops::cpu
