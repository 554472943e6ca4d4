// moe.cpp — CPU token permutation and grouped expert products: experts run in parallel (each product
// single-threaded) when there are enough of them, else one after another with threaded products.
#include "ops/moe.h"

#include <algorithm>
#include <cstring>

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
// its weight's output rows (kind WeightRows, for the weight gradient).
struct Piece {
  enum Kind { Rows, WeightRows } kind;
  int64_t e, a, b;
  double work;
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

// out[M, O] = x[M, I] · w[e]ᵀ per expert, f32/f64 weights.
template <typename T>
void grouped_fwd(T* out, const T* x, const std::vector<Tensor>& w, const MoePlan& p, int64_t I, int64_t O) {
  std::vector<Piece> pieces;
  add_row_pieces(pieces, p, double(I * O));
  run_pieces(pieces, [&](const Piece& pc) {
    const int64_t r0 = p.offsets[size_t(pc.e)] + pc.a, n = pc.b - pc.a;
    gemm(false, true, n, O, I, T(1), x + r0 * I, I, w[size_t(pc.e)].data<T>(), I, T(0), out + r0 * O, O);
  });
}

// dx[M, I] = dy[M, O] · w[e] and dw[e][O, I] += dy_eᵀ · x_e, f32/f64 weights.
template <typename T>
void grouped_bwd(T* dx, const std::vector<Tensor>& dw, const T* dy, const T* x, const std::vector<Tensor>& w,
                 const MoePlan& p, int64_t I, int64_t O) {
  std::vector<Piece> pieces;
  if (dx) add_row_pieces(pieces, p, double(I * O));
  if (!dw.empty()) {
    // Output rows of each dw[e] in slices, about as many pieces in all as for the row products.
    int64_t active = 0;
    for (int64_t e = 0; e < p.experts; ++e) active += p.rows(e) > 0;
    active = std::max<int64_t>(active, 1);
    const int64_t slices =
        std::clamp<int64_t>(4 * int64_t(num_threads()) / active, 1, std::max<int64_t>(O / 16, 1));
    const int64_t chunk = (O + slices - 1) / slices;
    for (int64_t e = 0; e < p.experts; ++e)
      if (p.rows(e) > 0)
        for (int64_t a = 0; a < O; a += chunk) {
          const int64_t b = std::min(O, a + chunk);
          pieces.push_back({Piece::WeightRows, e, a, b, double((b - a) * I * p.rows(e))});
        }
  }
  run_pieces(pieces, [&](const Piece& pc) {
    const int64_t r0 = p.offsets[size_t(pc.e)];
    if (pc.kind == Piece::Rows) {  // rows [a, b) of expert e: dx = dy · w[e]
      gemm(false, false, pc.b - pc.a, I, O, T(1), dy + (r0 + pc.a) * O, O, w[size_t(pc.e)].data<T>(), I, T(0),
           dx + (r0 + pc.a) * I, I);
    } else {  // dw[e][a:b, :] += dy_e[:, a:b]ᵀ · x_e
      gemm(true, false, pc.b - pc.a, I, p.rows(pc.e), T(1), dy + r0 * O + pc.a, O, x + r0 * I, I, T(1),
           dw[size_t(pc.e)].data<T>() + pc.a * I, I);
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
  const int64_t I = x.size(1), O = out.size(1);
  if (plain_weights(w, x.dtype())) {
    if (x.dtype() == DType::F64) {
      grouped_fwd(out.data<double>(), x.data<double>(), w, p, I, O);
    } else {
      grouped_fwd(out.data<float>(), x.data<float>(), w, p, I, O);
    }
    return;
  }
  for_experts(p, [&](int64_t e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    linear(out.slice(r0, n), x.slice(r0, n), w[size_t(e)]);
  });
}

void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& p) {
  const int64_t I = x.size(1), O = dy.size(1);
  bool plain = plain_weights(w, x.dtype());
  for (const Tensor& t : dw) plain = plain && t.dtype() == x.dtype();
  if (plain) {
    if (x.dtype() == DType::F64) {
      grouped_bwd(dx.defined() ? dx.data<double>() : nullptr, dw, dy.data<double>(), x.data<double>(), w, p,
                  I, O);
    } else {
      grouped_bwd(dx.defined() ? dx.data<float>() : nullptr, dw, dy.data<float>(), x.data<float>(), w, p, I,
                  O);
    }
    return;
  }
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
