// attention.cpp — checks and device dispatch for the two MLA attention forms (ops/attention.h).
#include "ops/attention.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void attention_fwd(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                   int64_t q_pos0, Stream) {
  check_ndim("attention_fwd", "q", q, 3);
  check_act("attention_fwd", "q", q);
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2);
  check_ndim("attention_fwd", "k", k, 3);
  const int64_t S = k.size(0);
  check_shape("attention_fwd", "k", k, {S, H, Dq});
  check_ndim("attention_fwd", "v", v, 3);
  check_shape("attention_fwd", "v", v, {S, H, v.size(2)});
  check_shape("attention_fwd", "out", out, {T, H, v.size(2)});
  if (probs.defined()) check_shape("attention_fwd", "probs", probs, {H, T, S});
  for (const Tensor* t : {&k, &v, const_cast<const Tensor*>(&out)})
    DSEEK_CHECK(t->dtype() == q.dtype(), "attention_fwd: mixed dtypes");
  // The probabilities may be kept in f32 whatever the activations are.
  if (probs.defined())
    DSEEK_CHECK(probs.dtype() == q.dtype() || probs.dtype() == DType::F32, "attention_fwd: probs dtype");
  DSEEK_CHECK(q_pos0 >= 0 && q_pos0 + T <= S, "attention_fwd: queries at ", q_pos0, "..", q_pos0 + T,
              " need ", q_pos0 + T, " keys, have ", S);
  check_same_device("attention_fwd", {&out, &probs, &q, &k, &v});
  switch (q.device()) {
    case Device::CPU:
      return cpu::attention_fwd(out, probs, q, k, v, scale, q_pos0);
    case Device::CUDA:
      return cuda::attention_fwd(out, probs, q, k, v, scale, q_pos0);
    default:
      fail("attention_fwd: no implementation for ", device_name(q.device()));
  }
}

void mla_absorbed_fwd(Tensor o_lat, const Tensor& q, const Tensor& rows, double scale, int64_t q_pos0,
                      Stream) {
  check_ndim("mla_absorbed_fwd", "q", q, 3);
  check_act("mla_absorbed_fwd", "q", q);
  check_ndim("mla_absorbed_fwd", "rows", rows, 2);
  check_ndim("mla_absorbed_fwd", "o_lat", o_lat, 3);
  const int64_t T = q.size(0), H = q.size(1), W = q.size(2), S = rows.size(0), C = o_lat.size(2);
  DSEEK_CHECK(rows.size(1) == W, "mla_absorbed_fwd: rows ", rows.str(), " and q ", q.str(),
              " differ in width");
  DSEEK_CHECK(C <= W, "mla_absorbed_fwd: latent width exceeds row width");
  check_shape("mla_absorbed_fwd", "o_lat", o_lat, {T, H, C});
  DSEEK_CHECK(rows.dtype() == q.dtype() && o_lat.dtype() == q.dtype(), "mla_absorbed_fwd: mixed dtypes");
  DSEEK_CHECK(q_pos0 >= 0 && q_pos0 + T <= S, "mla_absorbed_fwd: queries at ", q_pos0, "..", q_pos0 + T,
              " need ", q_pos0 + T, " cached rows, have ", S);
  check_same_device("mla_absorbed_fwd", {&o_lat, &q, &rows});
  switch (q.device()) {
    case Device::CPU:
      return cpu::mla_absorbed_fwd(o_lat, q, rows, scale, q_pos0);
    case Device::CUDA:
      return cuda::mla_absorbed_fwd(o_lat, q, rows, scale, q_pos0);
    default:
      fail("mla_absorbed_fwd: no implementation for ", device_name(q.device()));
  }
}

void attention_bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& probs, double scale, int64_t q_pos0, Stream) {
  check_ndim("attention_bwd", "q", q, 3);
  check_act("attention_bwd", "q", q);
  const int64_t T = q.size(0), H = q.size(1), Dq = q.size(2), S = k.size(0), Dv = v.size(2);
  check_shape("attention_bwd", "k", k, {S, H, Dq});
  check_shape("attention_bwd", "v", v, {S, H, Dv});
  check_shape("attention_bwd", "dout", dout, {T, H, Dv});
  check_shape("attention_bwd", "probs", probs, {H, T, S});
  check_shape("attention_bwd", "dq", dq, q.shape());
  check_shape("attention_bwd", "dk", dk, k.shape());
  check_shape("attention_bwd", "dv", dv, v.shape());
  for (const Tensor* t : {&k, &v, &dout, &probs, const_cast<const Tensor*>(&dq),
                          const_cast<const Tensor*>(&dk), const_cast<const Tensor*>(&dv)})
    DSEEK_CHECK(t->dtype() == q.dtype(), "attention_bwd: mixed dtypes");
  DSEEK_CHECK(q_pos0 >= 0 && q_pos0 + T <= S, "attention_bwd: bad q_pos0");
  check_same_device("attention_bwd", {&dq, &dk, &dv, &dout, &q, &k, &v, &probs});
  switch (q.device()) {
    case Device::CPU:
      return cpu::attention_bwd(dq, dk, dv, dout, q, k, v, probs, scale, q_pos0);
    case Device::CUDA:
      return cuda::attention_bwd(dq, dk, dv, dout, q, k, v, probs, scale, q_pos0);
    default:
      fail("attention_bwd: no implementation for ", device_name(q.device()));
  }
}

std::vector<int64_t> varlen_probs_offsets(const std::vector<int64_t>& cu, int64_t heads) {
  std::vector<int64_t> off(cu.empty() ? 1 : cu.size(), 0);
  for (size_t i = 0; i + 1 < cu.size(); ++i)
    off[i + 1] = off[i] + heads * (cu[i + 1] - cu[i]) * (cu[i + 1] - cu[i]);
  return off;
}

int64_t varlen_probs_size(const std::vector<int64_t>& cu, int64_t heads) {
  return varlen_probs_offsets(cu, heads).back();
}

namespace {
void check_varlen(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                  const std::vector<int64_t>& cu) {
  check_ndim(op, "q", q, 3);
  check_act(op, "q", q);
  const int64_t N = q.size(0), H = q.size(1);
  check_shape(op, "k", k, q.shape());
  check_ndim(op, "v", v, 3);
  check_shape(op, "v", v, {N, H, v.size(2)});
  DSEEK_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op, ": mixed dtypes");
  DSEEK_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == N, op, ": cu_seqlens must run from 0 to ", N);
  for (size_t i = 0; i + 1 < cu.size(); ++i)
    DSEEK_CHECK(cu[i + 1] >= cu[i], op, ": cu_seqlens must not decrease");
}
void check_varlen_probs(const char* op, const Tensor& probs, const Tensor& q) {
  DSEEK_CHECK(probs.dtype() == q.dtype() || probs.dtype() == DType::F32 ||
                  (q.device() == Device::CUDA && q.dtype() == DType::F32 && probs.dtype() == DType::BF16),
              op, ": probs must be f32 or have q's dtype (or be bf16 with f32 q on CUDA), not ",
              dtype_name(probs.dtype()));
}
}  // namespace

void attention_fwd_varlen(Tensor out, Tensor probs, const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& cu, double scale, Stream) {
  check_varlen("attention_fwd_varlen", q, k, v, cu);
  check_shape("attention_fwd_varlen", "out", out, {q.size(0), q.size(1), v.size(2)});
  DSEEK_CHECK(out.dtype() == q.dtype(), "attention_fwd_varlen: mixed dtypes");
  if (probs.defined()) {
    check_shape("attention_fwd_varlen", "probs", probs, {varlen_probs_size(cu, q.size(1))});
    check_varlen_probs("attention_fwd_varlen", probs, q);
  }
  check_same_device("attention_fwd_varlen", {&out, &probs, &q, &k, &v});
  switch (q.device()) {
    case Device::CPU:
      return cpu::attention_fwd_varlen(out, probs, q, k, v, cu, scale);
    case Device::CUDA:
      return cuda::attention_fwd_varlen(out, probs, q, k, v, cu, scale);
    default:
      fail("attention_fwd_varlen: no implementation for ", device_name(q.device()));
  }
}

void attention_bwd_varlen(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& probs,
                          const std::vector<int64_t>& cu, double scale, Stream) {
  check_varlen("attention_bwd_varlen", q, k, v, cu);
  check_shape("attention_bwd_varlen", "probs", probs, {varlen_probs_size(cu, q.size(1))});
  check_varlen_probs("attention_bwd_varlen", probs, q);
  check_shape("attention_bwd_varlen", "dout", dout, {q.size(0), q.size(1), v.size(2)});
  check_shape("attention_bwd_varlen", "dq", dq, q.shape());
  check_shape("attention_bwd_varlen", "dk", dk, k.shape());
  check_shape("attention_bwd_varlen", "dv", dv, v.shape());
  check_same_device("attention_bwd_varlen", {&dq, &dk, &dv, &dout, &q, &k, &v, &probs});
  switch (q.device()) {
    case Device::CPU:
      return cpu::attention_bwd_varlen(dq, dk, dv, dout, q, k, v, probs, cu, scale);
    case Device::CUDA:
      return cuda::attention_bwd_varlen(dq, dk, dv, dout, q, k, v, probs, cu, scale);
    default:
      fail("attention_bwd_varlen: no implementation for ", device_name(q.device()));
  }
}

}  // namespace dseek::ops
