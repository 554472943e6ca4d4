// moe.cpp — CPU token permutation and grouped expert products: experts run in parallel (each product
// single-threaded) when there are enough of them, else one after another with threaded products.
#include "ops/moe.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/parallel.h"
#include "ops/cpu/blas.h"
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
  parallel_for(p.tokens, grain_for_bytes((K + 1) * D * int64_t(sizeof(T))), [&](int64_t n0, int64_t n1) {
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
  parallel_for(p.tokens * K, grain_for_bytes(3 * D * int64_t(sizeof(T))), [&](int64_t r0, int64_t r1) {
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
  parallel_for(p.tokens, grain_for_bytes((K + 1) * D * int64_t(sizeof(T))), [&](int64_t n0, int64_t n1) {
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
  parallel_for(p.tokens * K, grain_for_bytes(2 * int64_t(rb)), [&](int64_t r0, int64_t r1) {
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

namespace {

// One piece of a grouped product: expert e, and a range [a, b) of its permuted rows (kind Rows) or of
// the output rows of its weight j's gradient (kind WeightRows).
struct Piece {
  enum Kind { Rows, WeightRows } kind;
  int64_t e, a, b;
  double work;
  size_t j = 0;
};

// Pieces of about a quarter of a thread's share each, so experts of unequal load still spread over
// every thread. Depends only on the plan and the thread count.
int64_t piece_rows(int64_t total, int64_t floor) {
  const int64_t want = 4 * int64_t(num_threads());
  return std::max<int64_t>(floor, (total + want - 1) / want);
}

template <typename Fn>
void run_pieces(std::vector<Piece>& pieces, Fn&& fn) {
  // Largest first; every piece writes its own part of the outputs, so the order changes no result.
  std::stable_sort(pieces.begin(), pieces.end(),
                   [](const Piece& x, const Piece& y) { return x.work > y.work; });
  if (pieces.size() > 1 && num_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < pieces.size(); ++i) fn(pieces[i]);
  } else {
    for (const Piece& pc : pieces) fn(pc);
  }
}

void add_row_pieces(std::vector<Piece>& pieces, const MoePlan& p, double work_per_row) {
  const int64_t chunk = piece_rows(p.tokens * p.top_k, 32);
  for (int64_t e = 0; e < p.experts; ++e)
    for (int64_t a = 0; a < p.rows(e); a += chunk) {
      const int64_t b = std::min(p.rows(e), a + chunk);
      pieces.push_back({Piece::Rows, e, a, b, double(b - a) * work_per_row});
    }
}

// One grouped product of a list that shares its input x [M, I]: weights w[e] [O, I], output or
// output gradient y [M, O], weight gradients dw[e] (may be empty).
template <typename T>
struct Product {
  const std::vector<Tensor>* w;
  T* y;
  const std::vector<Tensor>* dw;
};

// y_j[M, O] = x[M, I] · w_j[e]ᵀ per expert for every product j, f32/f64 weights. A piece does all
// products of its rows, while they are in cache.
template <typename T>
void grouped_fwd(const std::vector<Product<T>>& prods, const T* x, const MoePlan& p, int64_t I, int64_t O) {
  std::vector<Piece> pieces;
  add_row_pieces(pieces, p, double(I * O) * double(prods.size()));
  run_pieces(pieces, [&](const Piece& pc) {
    const int64_t r0 = p.offsets[size_t(pc.e)] + pc.a, n = pc.b - pc.a;
    for (const Product<T>& pr : prods)
      gemm(false, true, n, O, I, T(1), x + r0 * I, I, (*pr.w)[size_t(pc.e)].template data<T>(), I, T(0),
           pr.y + r0 * O, O);
  });
}

// dx[M, I] = Σ_j dy_j[M, O] · w_j[e] (written) and dw_j[e][O, I] += dy_j,eᵀ · x_e, f32/f64 weights.
template <typename T>
void grouped_bwd(T* dx, const std::vector<Product<T>>& prods, const T* x, const MoePlan& p, int64_t I,
                 int64_t O) {
  std::vector<Piece> pieces;
  if (dx) add_row_pieces(pieces, p, double(I * O) * double(prods.size()));
  // Output rows of each dw_j[e] in slices, about as many pieces in all as for the row products.
  int64_t active = 0;
  for (int64_t e = 0; e < p.experts; ++e) active += p.rows(e) > 0;
  active = std::max<int64_t>(active, 1);
  const int64_t slices = std::clamp<int64_t>(4 * int64_t(num_threads()) / (active * int64_t(prods.size())), 1,
                                             std::max<int64_t>(O / 16, 1));
  const int64_t chunk = (O + slices - 1) / slices;
  for (size_t j = 0; j < prods.size(); ++j) {
    if (prods[j].dw->empty()) continue;
    for (int64_t e = 0; e < p.experts; ++e)
      if (p.rows(e) > 0)
        for (int64_t a = 0; a < O; a += chunk) {
          const int64_t b = std::min(O, a + chunk);
          pieces.push_back({Piece::WeightRows, e, a, b, double((b - a) * I * p.rows(e)), j});
        }
  }
  run_pieces(pieces, [&](const Piece& pc) {
    const int64_t r0 = p.offsets[size_t(pc.e)];
    if (pc.kind == Piece::Rows) {  // rows [a, b) of expert e: dx = Σ_j dy_j · w_j[e], products in order
      for (size_t j = 0; j < prods.size(); ++j)
        gemm(false, false, pc.b - pc.a, I, O, T(1), prods[j].y + (r0 + pc.a) * O, O,
             (*prods[j].w)[size_t(pc.e)].template data<T>(), I, j == 0 ? T(0) : T(1), dx + (r0 + pc.a) * I,
             I);
    } else {  // dw_j[e][a:b, :] += dy_j,e[:, a:b]ᵀ · x_e
      const Product<T>& pr = prods[pc.j];
      gemm(true, false, pc.b - pc.a, I, p.rows(pc.e), T(1), pr.y + r0 * O + pc.a, O, x + r0 * I, I, T(1),
           (*pr.dw)[size_t(pc.e)].template data<T>() + pc.a * I, I);
    }
  });
}

bool plain_weights(const std::vector<Tensor>& w, DType dt) {
  for (const Tensor& t : w)
    if (t.dtype() != dt) return false;
  return dt == DType::F32 || dt == DType::F64;
}

}  // namespace

void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& p) {
  if (plain_weights(w, x.dtype())) {
    cpu::grouped_linear_pair(out, Tensor(), x, w, {}, p);
    return;
  }
  for_experts(p, [&](int64_t e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    linear(out.slice(r0, n), x.slice(r0, n), w[size_t(e)]);
  });
}

void grouped_linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const std::vector<Tensor>& wa,
                         const std::vector<Tensor>& wb, const MoePlan& p) {
  const int64_t I = x.size(1), O = out_a.size(1);
  const bool pair = out_b.defined();
  if (!plain_weights(wa, x.dtype()) || (pair && !plain_weights(wb, x.dtype()))) {
    cpu::grouped_linear(out_a, x, wa, p);
    if (pair) cpu::grouped_linear(out_b, x, wb, p);
    return;
  }
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    static const std::vector<Tensor> none;
    std::vector<Product<T>> prods{{&wa, out_a.data<T>(), &none}};
    if (pair) prods.push_back({&wb, out_b.data<T>(), &none});
    grouped_fwd(prods, x.data<T>(), p, I, O);
  };
  if (x.dtype() == DType::F64) {
    run(static_cast<double*>(nullptr));
  } else {
    run(static_cast<float*>(nullptr));
  }
}

void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& p) {
  bool plain = plain_weights(w, x.dtype());
  for (const Tensor& t : dw) plain = plain && t.dtype() == x.dtype();
  if (plain) {
    cpu::grouped_linear_pair_bwd(dx, dw, {}, dy, Tensor(), x, w, {}, p);
    return;
  }
  for_experts(p, [&](int64_t e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    linear_bwd(dx.defined() ? dx.slice(r0, n) : Tensor(), dw.empty() ? Tensor() : dw[size_t(e)],
               dy.slice(r0, n), x.slice(r0, n), w[size_t(e)]);
  });
}

void grouped_linear_pair_bwd(Tensor dx, const std::vector<Tensor>& dwa, const std::vector<Tensor>& dwb,
                             const Tensor& dya, const Tensor& dyb, const Tensor& x,
                             const std::vector<Tensor>& wa, const std::vector<Tensor>& wb, const MoePlan& p) {
  const int64_t I = x.size(1), O = dya.size(1);
  const bool pair = dyb.defined();
  bool plain = plain_weights(wa, x.dtype()) && (!pair || plain_weights(wb, x.dtype()));
  for (const auto* d : {&dwa, &dwb})
    for (const Tensor& t : *d) plain = plain && t.dtype() == x.dtype();
  if (!plain) {  // one product at a time, then dx = dx_a + dx_b
    cpu::grouped_linear_bwd(dx, dwa, dya, x, wa, p);
    if (pair) {
      Tensor dxb = dx.defined() ? Tensor::empty(dx.shape(), dx.dtype(), dx.device()) : Tensor();
      cpu::grouped_linear_bwd(dxb, dwb, dyb, x, wb, p);
      if (dx.defined()) axpy_(dx, dxb, 1.0);
    }
    return;
  }
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    std::vector<Product<T>> prods{{&wa, dya.data<T>(), &dwa}};
    if (pair) prods.push_back({&wb, dyb.data<T>(), &dwb});
    grouped_bwd(dx.defined() ? dx.data<T>() : static_cast<T*>(nullptr), prods, x.data<T>(), p, I, O);
  };
  if (x.dtype() == DType::F64) {
    run(static_cast<double*>(nullptr));
  } else {
    run(static_cast<float*>(nullptr));
  }
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
