// router.cpp — checks and device dispatch for MoE routing (ops/router.h).
#include "ops/router.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void router_fwd(Tensor topk_idx, Tensor topk_w, Tensor scores, const Tensor& logits, const Tensor& bias,
                const RouterParams& p, Stream) {
  check_ndim("router_fwd", "logits", logits, 2);
  check_act("router_fwd", "logits", logits);
  const int64_t N = logits.size(0), E = logits.size(1);
  DSEEK_CHECK(p.top_k >= 1 && p.top_k <= E, "router_fwd: top_k ", p.top_k, " with ", E, " experts");
  if (p.method != TopkMethod::Greedy) {
    DSEEK_CHECK(p.n_group >= 1 && E % p.n_group == 0, "router_fwd: ", E, " experts in ", p.n_group,
                " groups");
    DSEEK_CHECK(p.topk_group >= 1 && p.topk_group <= p.n_group, "router_fwd: topk_group ", p.topk_group);
    DSEEK_CHECK(p.top_k <= p.topk_group * (E / p.n_group),
                "router_fwd: top_k exceeds the kept groups' experts");
  }
  check_shape("router_fwd", "topk_idx", topk_idx, {N, p.top_k});
  check_dtype("router_fwd", "topk_idx", topk_idx, {DType::I32});
  check_shape("router_fwd", "topk_w", topk_w, {N, p.top_k});
  DSEEK_CHECK(topk_w.dtype() == logits.dtype(), "router_fwd: topk_w dtype differs from logits");
  if (scores.defined()) {
    check_shape("router_fwd", "scores", scores, {N, E});
    DSEEK_CHECK(scores.dtype() == logits.dtype(), "router_fwd: scores dtype differs from logits");
  }
  if (bias.defined()) {
    check_shape("router_fwd", "bias", bias, {E});
    check_dtype("router_fwd", "bias", bias, {DType::F32});
  }
  check_same_device("router_fwd", {&topk_idx, &topk_w, &scores, &logits, &bias});
  switch (logits.device()) {
    case Device::CPU:
      return cpu::router_fwd(topk_idx, topk_w, scores, logits, bias, p);
    case Device::CUDA:
      return cuda::router_fwd(topk_idx, topk_w, scores, logits, bias, p);
    default:
      fail("router_fwd: no implementation for ", device_name(logits.device()));
  }
}

void router_bwd(Tensor dlogits, const Tensor& dtopk_w, const Tensor& topk_idx, const Tensor& scores,
                const RouterParams& p, Stream) {
  check_ndim("router_bwd", "scores", scores, 2);
  check_act("router_bwd", "scores", scores);
  const int64_t N = scores.size(0), E = scores.size(1);
  check_shape("router_bwd", "dlogits", dlogits, {N, E});
  check_shape("router_bwd", "dtopk_w", dtopk_w, {N, p.top_k});
  check_shape("router_bwd", "topk_idx", topk_idx, {N, p.top_k});
  check_dtype("router_bwd", "topk_idx", topk_idx, {DType::I32});
  DSEEK_CHECK(dlogits.dtype() == scores.dtype() && dtopk_w.dtype() == scores.dtype(),
              "router_bwd: mixed dtypes");
  check_same_device("router_bwd", {&dlogits, &dtopk_w, &topk_idx, &scores});
  switch (scores.device()) {
    case Device::CPU:
      return cpu::router_bwd(dlogits, dtopk_w, topk_idx, scores, p);
    case Device::CUDA:
      return cuda::router_bwd(dlogits, dtopk_w, topk_idx, scores, p);
    default:
      fail("router_bwd: no implementation for ", device_name(scores.device()));
  }
}

void router_bias_update(Tensor bias, const std::vector<int64_t>& load, double gamma, Stream) {
  DSEEK_CHECK(bias.numel() == int64_t(load.size()) && bias.dtype() == DType::F32 && !load.empty(),
              "router_bias_update: ", bias.str(), " for ", load.size(), " experts");
  double mean = 0;
  for (int64_t x : load) mean += double(x);
  mean /= double(load.size());
  switch (bias.device()) {
    case Device::CPU: {
      float* b = bias.data<float>();
      for (size_t e = 0; e < load.size(); ++e) {
        const double d = mean - double(load[e]);
        b[e] += float(gamma * double((d > 0) - (d < 0)));
      }
      return;
    }
    case Device::CUDA:
      return cuda::router_bias_update(bias, load, mean, gamma);
    default:
      fail("router_bias_update: no implementation for ", device_name(bias.device()));
  }
}

double router_balance_loss(Tensor dlogits, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
                           double alpha, const RouterParams& p, Stream) {
  check_ndim("router_balance_loss", "scores", scores, 2);
  check_act("router_balance_loss", "scores", scores);
  const int64_t N = scores.size(0), E = scores.size(1);
  check_shape("router_balance_loss", "topk_idx", topk_idx, {N, p.top_k});
  DSEEK_CHECK(seq_len > 0 && N % seq_len == 0, "router_balance_loss: ", N,
              " rows are not whole sequences of ", seq_len);
  if (dlogits.defined()) {
    check_shape("router_balance_loss", "dlogits", dlogits, {N, E});
    DSEEK_CHECK(dlogits.dtype() == scores.dtype(), "router_balance_loss: mixed dtypes");
  }
  switch (scores.device()) {
    case Device::CPU:
      return cpu::router_balance_loss(dlogits, scores, topk_idx, seq_len, alpha, p);
    case Device::CUDA:
      return cuda::router_balance_loss(dlogits, scores, topk_idx, seq_len, alpha, p);
    default:
      fail("router_balance_loss: no implementation for ", device_name(scores.device()));
  }
}

}  // namespace dseek::ops
