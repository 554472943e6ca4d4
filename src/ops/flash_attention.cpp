// flash_attention.cpp — checks and device dispatch for mla_flash_fwd (ops/flash_attention.h), and its CPU
// reference: keys [k_nope | kpe] and values assembled per sequence, then the exact causal attention; the
// training forward (with the rows' log-sum-exp) and backward, exact, straight from their definitions.
#include "ops/flash_attention.h"

#include <algorithm>
#include <cmath>

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

namespace {

template <typename T>
void assemble(T* k, T* v, const T* kv, const T* kpe, int64_t L, int64_t H, int64_t dn, int64_t R,
              int64_t dv) {
  const int64_t dq = dn + R;
  for (int64_t s = 0; s < L; ++s)
    for (int64_t h = 0; h < H; ++h) {
      const T* src = kv + (s * H + h) * (dn + dv);
      T* kr = k + (s * H + h) * dq;
      for (int64_t i = 0; i < dn; ++i) kr[i] = src[i];
      for (int64_t i = 0; i < R; ++i) kr[dn + i] = kpe[s * R + i];
      for (int64_t i = 0; i < dv; ++i) v[(s * H + h) * dv + i] = src[dn + i];
    }
}

void cpu_mla_flash(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale) {
  const int64_t H = q.size(1), dv = out.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t Lq = cu_q[b + 1] - cu_q[b], Lk = cu_k[b + 1] - cu_k[b];
    if (Lq == 0) continue;
    // k: [Lk, H, dn + R], v: [Lk, H, dv] for this sequence
    Tensor k = Tensor::empty({Lk, H, dn + R}, q.dtype()), v = Tensor::empty({Lk, H, dv}, q.dtype());
    const Tensor kvb = kv.slice(cu_k[b], Lk), peb = kpe.slice(cu_k[b], Lk);
    if (q.dtype() == DType::F64) {
      assemble(k.data<double>(), v.data<double>(), kvb.data<double>(), peb.data<double>(), Lk, H, dn, R, dv);
    } else {
      assemble(k.data<float>(), v.data<float>(), kvb.data<float>(), peb.data<float>(), Lk, H, dn, R, dv);
    }
    cpu::attention_fwd(out.slice(cu_q[b], Lq), Tensor(), q.slice(cu_q[b], Lq), k, v, scale, Lk - Lq);
  }
}

// Training forward on the CPU: per sequence, head and row, the exact softmax over the visible keys,
// accumulated in double; lse = m + log Σ exp(s − m).
template <typename T>
void cpu_flash_train_fwd(T* out, T* lse, const T* q, const T* kv, const T* kpe,
                         const std::vector<int64_t>& cu, int64_t N, int64_t H, int64_t dn, int64_t R,
                         int64_t dv, double scale) {
  const int64_t dq = dn + R, w = dn + dv;
  std::vector<double> s, acc(static_cast<size_t>(dv));
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = cu[b]; i < cu[b + 1]; ++i) {
        const T* qi = q + (i * H + h) * dq;
        s.assign(size_t(i - cu[b] + 1), 0.0);
        double m = -INFINITY;
        for (int64_t j = cu[b]; j <= i; ++j) {
          const T* kj = kv + (j * H + h) * w;
          double d = 0;
          for (int64_t c = 0; c < dn; ++c) d += double(qi[c]) * double(kj[c]);
          for (int64_t c = 0; c < R; ++c) d += double(qi[dn + c]) * double(kpe[j * R + c]);
          s[size_t(j - cu[b])] = scale * d;
          m = std::max(m, scale * d);
        }
        double l = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = cu[b]; j <= i; ++j) {
          const double p = std::exp(s[size_t(j - cu[b])] - m);
          l += p;
          const T* vj = kv + (j * H + h) * w + dn;
          for (int64_t c = 0; c < dv; ++c) acc[size_t(c)] += p * double(vj[c]);
        }
        for (int64_t c = 0; c < dv; ++c) out[(i * H + h) * dv + c] = T(acc[size_t(c)] / l);
        lse[h * N + i] = T(m + std::log(l));
      }
}

// Training backward on the CPU, straight from the definitions: p_ij = exp(scale·q_i·k_j − lse_i),
// D_i = Σ dO_i ⊙ O_i, dv_j += p_ij dO_i, ds_ij = p_ij (dO_i·v_j − D_i), dq_i += scale ds_ij k_j,
// dk_j += scale ds_ij q_i; dkpe sums the heads' rope-key parts in head order.
template <typename T>
void cpu_flash_bwd(T* dq, T* dkv, T* dkpe, const T* d_o, const T* o, const T* lse, const T* q, const T* kv,
                   const T* kpe, const std::vector<int64_t>& cu, int64_t N, int64_t H, int64_t dn, int64_t R,
                   int64_t dv, double scale) {
  const int64_t DQ = dn + R, w = dn + dv;
  std::fill(dkpe, dkpe + N * R, T(0));
  std::vector<double> gq(static_cast<size_t>(DQ)), gk, gv;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t L = cu[b + 1] - cu[b];
    for (int64_t h = 0; h < H; ++h) {
      gk.assign(size_t(L * DQ), 0.0);
      gv.assign(size_t(L * dv), 0.0);
      for (int64_t i = cu[b]; i < cu[b + 1]; ++i) {
        const T* qi = q + (i * H + h) * DQ;
        const T* gi = d_o + (i * H + h) * dv;
        double D = 0;
        for (int64_t c = 0; c < dv; ++c) D += double(gi[c]) * double(o[(i * H + h) * dv + c]);
        std::fill(gq.begin(), gq.end(), 0.0);
        for (int64_t j = cu[b]; j <= i; ++j) {
          const T* kj = kv + (j * H + h) * w;
          const T* vj = kj + dn;
          const T* pj = kpe + j * R;
          double d = 0;
          for (int64_t c = 0; c < dn; ++c) d += double(qi[c]) * double(kj[c]);
          for (int64_t c = 0; c < R; ++c) d += double(qi[dn + c]) * double(pj[c]);
          const double p = std::exp(scale * d - double(lse[h * N + i]));
          double dp = 0;
          for (int64_t c = 0; c < dv; ++c) {
            dp += double(gi[c]) * double(vj[c]);
            gv[size_t((j - cu[b]) * dv + c)] += p * double(gi[c]);
          }
          const double ds = scale * p * (dp - D);
          double* gkj = gk.data() + (j - cu[b]) * DQ;
          for (int64_t c = 0; c < dn; ++c) {
            gq[size_t(c)] += ds * double(kj[c]);
            gkj[c] += ds * double(qi[c]);
          }
          for (int64_t c = 0; c < R; ++c) {
            gq[size_t(dn + c)] += ds * double(pj[c]);
            gkj[dn + c] += ds * double(qi[dn + c]);
          }
        }
        for (int64_t c = 0; c < DQ; ++c) dq[(i * H + h) * DQ + c] = T(gq[size_t(c)]);
      }
      for (int64_t j = 0; j < L; ++j) {
        const int64_t row = cu[b] + j;
        T* dst = dkv + (row * H + h) * w;
        for (int64_t c = 0; c < dn; ++c) dst[c] = T(gk[size_t(j * DQ + c)]);
        for (int64_t c = 0; c < dv; ++c) dst[dn + c] = T(gv[size_t(j * dv + c)]);
        for (int64_t c = 0; c < R; ++c) dkpe[row * R + c] += T(gk[size_t(j * DQ + dn + c)]);
      }
    }
  }
}

// Calls fn(T{}) with T = double for f64, float otherwise (the CPU training twins' element types).
template <typename Fn>
void with_real(DType dt, Fn&& fn) {
  if (dt == DType::F64) {
    fn(double{});
  } else {
    fn(float{});
  }
}

// The checks both training ops share: shapes from q [N, H, dn + R], kv [N, H, dn + dv], kpe [N, R] and
// dv; whole sequences cu.
void check_train(const char* op, const Tensor& q, const Tensor& kv, const Tensor& kpe, int64_t dv,
                 const std::vector<int64_t>& cu) {
  check_ndim(op, "q", q, 3);
  check_ndim(op, "kv", kv, 3);
  check_ndim(op, "kpe", kpe, 2);
  const int64_t N = q.size(0), H = q.size(1), dn = kv.size(2) - dv, R = q.size(2) - dn;
  DSEEK_CHECK(dv > 0 && dn > 0 && R > 0, op, ": q ", q.str(), " and kv ", kv.str(),
              " do not describe MLA head dims");
  check_shape(op, "kv", kv, {N, H, dn + dv});
  check_shape(op, "kpe", kpe, {N, R});
  DSEEK_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == N, op,
              ": cu needs B + 1 ≥ 2 row offsets from 0 to ", N);
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    DSEEK_CHECK(cu[b + 1] >= cu[b], op, ": cu decreases at sequence ", b);
  if (q.device() == Device::CUDA) {
    check_dtype(op, "kv", kv, {DType::BF16});
    check_dtype(op, "kpe", kpe, {DType::BF16});
    DSEEK_CHECK(mla_flash_train_dims(dn, R, dv), op, ": no GPU kernel for head dims qk_nope ", dn,
                ", qk_rope ", R, ", v ", dv);
  } else {
    check_dtype(op, "q", q, {DType::F32, DType::F64});
    DSEEK_CHECK(kv.dtype() == q.dtype() && kpe.dtype() == q.dtype(), op, ": kv, kpe and q differ in dtype");
  }
}

}  // namespace

void mla_flash_fwd(Tensor out, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                   const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, double scale,
                   bool fp16_operands, Stream) {
  const char* op = "mla_flash_fwd";
  check_ndim(op, "q", q, 3);
  check_ndim(op, "kv", kv, 3);
  check_ndim(op, "kpe", kpe, 2);
  check_ndim(op, "out", out, 3);
  check_act(op, "q", q);
  const int64_t H = q.size(1), dv = out.size(2), dn = kv.size(2) - dv, R = q.size(2) - dn;
  DSEEK_CHECK(dv > 0 && dn > 0 && R > 0, op, ": q ", q.str(), ", kv ", kv.str(), " and out ", out.str(),
              " do not describe MLA head dims");
  check_shape(op, "kv", kv, {kv.size(0), H, dn + dv});
  check_shape(op, "kpe", kpe, {kv.size(0), R});
  check_shape(op, "out", out, {q.size(0), H, dv});
  // A bf16 out under f32 queries: the GPU's fp16-operand kernel writes what a bf16 product reads next.
  const bool bf16_out_ok =
      q.device() == Device::CUDA && fp16_operands && q.dtype() == DType::F32 && out.dtype() == DType::BF16;
  DSEEK_CHECK(out.dtype() == q.dtype() || bf16_out_ok, op, ": out is ", dtype_name(out.dtype()), ", q ",
              dtype_name(q.dtype()));
  // f16 keys/values under f32 or bf16 queries: only for the GPU's fp16-operand products.
  const bool f16_kv_ok = q.device() == Device::CUDA && fp16_operands && kv.dtype() == DType::F16;
  DSEEK_CHECK(kv.dtype() == q.dtype() || f16_kv_ok, op, ": kv is ", dtype_name(kv.dtype()), ", q ",
              dtype_name(q.dtype()));
  DSEEK_CHECK(kpe.dtype() == kv.dtype(), op, ": kpe and kv differ in dtype");
  DSEEK_CHECK(cu_q.size() == cu_k.size() && cu_q.size() >= 2, op, ": cu_q and cu_k need B + 1 ≥ 2 entries");
  DSEEK_CHECK(cu_q.front() == 0 && cu_k.front() == 0, op, ": cu_q and cu_k start at 0");
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t Lq = cu_q[b + 1] - cu_q[b], Lk = cu_k[b + 1] - cu_k[b];
    DSEEK_CHECK(Lq >= 0 && Lk >= Lq, op, ": sequence ", b, " has ", Lq, " queries and ", Lk,
                " keys (need 0 ≤ queries ≤ keys)");
  }
  DSEEK_CHECK(cu_q.back() == q.size(0) && cu_k.back() == kv.size(0), op, ": cu_q/cu_k end at ", cu_q.back(),
              "/", cu_k.back(), ", tensors hold ", q.size(0), "/", kv.size(0), " rows");
  check_same_device(op, {&out, &q, &kv, &kpe});
  switch (q.device()) {
    case Device::CPU:
      return cpu_mla_flash(out, q, kv, kpe, cu_q, cu_k, scale);
    case Device::CUDA:
      return cuda::mla_flash_fwd(out, q, kv, kpe, cu_q, cu_k, scale, fp16_operands);
    default:
      fail(op, ": no implementation for ", device_name(q.device()));
  }
}

void mla_flash_train_fwd(Tensor out, Tensor lse, const Tensor& q, const Tensor& kv, const Tensor& kpe,
                         const std::vector<int64_t>& cu, double scale, Stream) {
  const char* op = "mla_flash_train_fwd";
  check_ndim(op, "out", out, 3);
  const int64_t dv = out.size(2);
  check_train(op, q, kv, kpe, dv, cu);
  const int64_t N = q.size(0), H = q.size(1), dn = kv.size(2) - dv, R = q.size(2) - dn;
  check_shape(op, "out", out, {N, H, dv});
  check_shape(op, "lse", lse, {H, N});
  check_same_device(op, {&out, &lse, &q, &kv, &kpe});
  switch (q.device()) {
    case Device::CPU:
      DSEEK_CHECK(out.dtype() == q.dtype() && lse.dtype() == q.dtype(), op, ": out and lse take q's dtype");
      return with_real(q.dtype(), [&](auto t) {
        using T = decltype(t);
        cpu_flash_train_fwd(out.data<T>(), lse.data<T>(), q.data<T>(), kv.data<T>(), kpe.data<T>(), cu, N, H,
                            dn, R, dv, scale);
      });
    case Device::CUDA:
      check_dtype(op, "q", q, {DType::F32, DType::BF16});
      check_dtype(op, "out", out, {DType::F32, DType::BF16});
      check_dtype(op, "lse", lse, {DType::F32});
      return cuda::mla_flash_train_fwd(out, lse, q, kv, kpe, cu, scale);
    default:
      fail(op, ": no implementation for ", device_name(q.device()));
  }
}

void mla_flash_bwd(Tensor dq, Tensor dkv, Tensor dkpe, const Tensor& d_o, const Tensor& o, const Tensor& lse,
                   const Tensor& q, const Tensor& kv, const Tensor& kpe, const std::vector<int64_t>& cu,
                   double scale, Stream) {
  const char* op = "mla_flash_bwd";
  check_ndim(op, "d_o", d_o, 3);
  const int64_t dv = d_o.size(2);
  check_train(op, q, kv, kpe, dv, cu);
  const int64_t N = q.size(0), H = q.size(1), dn = kv.size(2) - dv, R = q.size(2) - dn;
  check_shape(op, "d_o", d_o, {N, H, dv});
  check_shape(op, "o", o, {N, H, dv});
  check_shape(op, "lse", lse, {H, N});
  check_shape(op, "dq", dq, q.shape());
  check_shape(op, "dkv", dkv, kv.shape());
  check_shape(op, "dkpe", dkpe, kpe.shape());
  check_same_device(op, {&dq, &dkv, &dkpe, &d_o, &o, &lse, &q, &kv, &kpe});
  switch (q.device()) {
    case Device::CPU:
      for (const Tensor* t : std::initializer_list<const Tensor*>{&dq, &dkv, &dkpe, &d_o, &o, &lse})
        DSEEK_CHECK(t->dtype() == q.dtype(), op, ": every tensor takes q's dtype on the CPU (got ",
                    dtype_name(t->dtype()), ")");
      return with_real(q.dtype(), [&](auto t) {
        using T = decltype(t);
        cpu_flash_bwd(dq.data<T>(), dkv.data<T>(), dkpe.data<T>(), d_o.data<T>(), o.data<T>(), lse.data<T>(),
                      q.data<T>(), kv.data<T>(), kpe.data<T>(), cu, N, H, dn, R, dv, scale);
      });
    case Device::CUDA:
      check_dtype(op, "q", q, {DType::BF16});
      check_dtype(op, "d_o", d_o, {DType::F32, DType::BF16});
      check_dtype(op, "o", o, {DType::F32, DType::BF16});
      check_dtype(op, "lse", lse, {DType::F32});
      for (const Tensor* t : std::initializer_list<const Tensor*>{&dq, &dkpe})
        check_dtype(op, "gradient", *t, {DType::F32});
      check_dtype(op, "dkv", dkv, {DType::F32, DType::BF16});
      return cuda::mla_flash_bwd(dq, dkv, dkpe, d_o, o, lse, q, kv, kpe, cu, scale);
    default:
      fail(op, ": no implementation for ", device_name(q.device()));
  }
}

bool mla_flash_train_dims(int64_t dn, int64_t R, int64_t dv) {
  return cuda::mla_flash_train_dims(dn, R, dv);
}

}  // namespace dseek::ops
