// flash_attention.cpp — checks and device dispatch for mla_flash_fwd (ops/flash_attention.h), and its CPU
// reference: keys [k_nope | kpe] and values assembled per sequence, then the exact causal attention.
#include "ops/flash_attention.h"

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

}  // namespace dseek::ops
