// adamw.cpp — checks and device dispatch for AdamW and the sum of squares (ops/adamw.h).
#include "ops/adamw.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p, Stream) {
  check_dtype("adamw_step", "param", param, {DType::F32});
  check_shape("adamw_step", "grad", grad, param.shape());
  check_dtype("adamw_step", "grad", grad, {DType::F32});
  check_shape("adamw_step", "m", m, param.shape());
  check_shape("adamw_step", "v", v, param.shape());
  check_dtype("adamw_step", "m", m, {DType::F32, DType::BF16});
  DSEEK_CHECK(v.dtype() == m.dtype(), "adamw_step: m and v dtypes differ");
  DSEEK_CHECK(p.step >= 1, "adamw_step: step must be ≥ 1");
  check_same_device("adamw_step", {&param, &grad, &m, &v});
  switch (param.device()) {
    case Device::CPU:
      return cpu::adamw_step(param, grad, m, v, p);
    case Device::CUDA:
      return cuda::adamw_step(param, grad, m, v, p);
    default:
      fail("adamw_step: no implementation for ", device_name(param.device()));
  }
}

std::vector<double> sum_squares_many(const std::vector<const Tensor*>& ts) {
  if (ts.empty()) return {};
  const Device d = ts[0]->device();
  for (const Tensor* t : ts) {
    check_act("sum_squares_many", "t", *t);
    DSEEK_CHECK(t->device() == d, "sum_squares_many: tensors on different devices");
  }
  if (d == Device::CUDA) {
    for (const Tensor* t : ts) check_dtype("sum_squares_many", "t", *t, {DType::F32});
    return cuda::sum_squares_many(ts);
  }
  std::vector<double> out;
  for (const Tensor* t : ts) out.push_back(sum_squares(*t));
  return out;
}

void adamw_step_many(const std::vector<Tensor*>& params, const std::vector<const Tensor*>& grads,
                     const std::vector<Tensor*>& m, const std::vector<Tensor*>& v,
                     const std::vector<double>& decay, const AdamWParams& p,
                     const std::vector<Tensor*>& copies) {
  const size_t n = params.size();
  DSEEK_CHECK(copies.empty() || copies.size() == n, "adamw_step_many: ", copies.size(), " copies for ", n,
              " params");
  DSEEK_CHECK(grads.size() == n && m.size() == n && v.size() == n && decay.size() == n,
              "adamw_step_many: ", n, " params, ", grads.size(), " grads, ", m.size(), " / ", v.size(),
              " moments, ", decay.size(), " decays");
  if (n == 0) return;
  const Device d = params[0]->device();
  for (size_t i = 0; i < n; ++i) {
    check_dtype("adamw_step_many", "param", *params[i], {DType::F32});
    check_shape("adamw_step_many", "grad", *grads[i], params[i]->shape());
    check_dtype("adamw_step_many", "grad", *grads[i], {DType::F32});
    check_shape("adamw_step_many", "m", *m[i], params[i]->shape());
    check_shape("adamw_step_many", "v", *v[i], params[i]->shape());
    DSEEK_CHECK(m[i]->dtype() == m[0]->dtype() && v[i]->dtype() == m[0]->dtype(),
                "adamw_step_many: the moments must share one dtype");
    check_dtype("adamw_step_many", "m", *m[i], {DType::F32, DType::BF16});
    DSEEK_CHECK(
        params[i]->device() == d && grads[i]->device() == d && m[i]->device() == d && v[i]->device() == d,
        "adamw_step_many: tensors on different devices");
    if (!copies.empty() && copies[i] != nullptr) {
      DSEEK_CHECK(d == Device::CUDA && copies[i]->device() == d,
                  "adamw_step_many: bf16 copies on the GPU only");
      check_dtype("adamw_step_many", "copy", *copies[i], {DType::BF16});
      check_shape("adamw_step_many", "copy", *copies[i], params[i]->shape());
    }
  }
  DSEEK_CHECK(p.step >= 1, "adamw_step_many: step must be ≥ 1");
  if (d == Device::CUDA) return cuda::adamw_step_many(params, grads, m, v, decay, p, copies);
  for (size_t i = 0; i < n; ++i) {
    AdamWParams q = p;
    q.weight_decay = decay[i];
    adamw_step(*params[i], *grads[i], *m[i], *v[i], q);
  }
}

double sum_squares(const Tensor& t, Stream) {
  check_act("sum_squares", "t", t);
  switch (t.device()) {
    case Device::CPU:
      return cpu::sum_squares(t);
    case Device::CUDA:
      return cuda::sum_squares(t);
    default:
      fail("sum_squares: no implementation for ", device_name(t.device()));
  }
}

}  // namespace dseek::ops
