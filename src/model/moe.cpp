// moe.cpp — dense MLP and DeepSeekMoE forward (spec/model.md §2.1 SwiGLU, §4.2–4.3 routing).
#include "model/moe.h"

#include <cstring>
#include <vector>

#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/router.h"
#include "ops/swiglu.h"

namespace dseek {

void mlp_fwd(Tensor out, const Tensor& x, const MlpWeights& w) {
  const int64_t N = x.size(0), F = w.gate_proj.size(0);
  Tensor g = Tensor::empty({N, F}, x.dtype()), u = Tensor::empty({N, F}, x.dtype());  // g, u: [N, F]
  ops::linear(g, x, w.gate_proj);
  ops::linear(u, x, w.up_proj);
  ops::swiglu_fwd(g, g, u);
  ops::linear(out, g, w.down_proj);
}

void moe_fwd(Tensor out, const Tensor& x, const MoeWeights& w, const ModelConfig& c, RouterTrace* trace) {
  const int64_t N = x.size(0), D = x.size(1), E = c.n_routed_experts, K = c.num_experts_per_tok;
  const DType dt = x.dtype();
  Tensor logits = Tensor::empty({N, E}, dt);  // logits: [N, E], computed in the activation precision
  ops::linear(logits, x, dt == DType::F64 ? w.gate.to(DType::F64) : w.gate);
  Tensor idx = Tensor::empty({N, K}, DType::I32), gw = Tensor::empty({N, K}, dt);
  ops::router_fwd(idx, gw, Tensor(), logits, w.e_score_correction_bias, ops::RouterParams::from(c));
  if (trace) *trace = {idx, gw};

  // Group (token, slot) pairs by expert.
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(E));  // rows[e]: token indices n routed to e
  std::vector<std::vector<double>> wts(static_cast<size_t>(E));
  const int32_t* ip = idx.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = ip[n * K + k];
      rows[size_t(e)].push_back(n);
      wts[size_t(e)].push_back(dt == DType::F64 ? gw.data<double>()[n * K + k] : gw.data<float>()[n * K + k]);
    }

  Tensor routed = Tensor::zeros({N, D}, dt);  // routed: [N, D] Σ_k w_k · expert(x)
  const size_t row_bytes = size_t(D) * dtype_size(dt);
  for (int64_t e = 0; e < E; ++e) {
    const auto& r = rows[size_t(e)];
    if (r.empty()) continue;
    const int64_t n_e = int64_t(r.size());
    Tensor xe = Tensor::empty({n_e, D}, dt), ye = Tensor::empty({n_e, D}, dt);  // xe, ye: [n_e, D]
    for (int64_t j = 0; j < n_e; ++j)
      std::memcpy(static_cast<uint8_t*>(xe.raw()) + size_t(j) * row_bytes,
                  static_cast<const uint8_t*>(x.raw()) + size_t(r[size_t(j)]) * row_bytes, row_bytes);
    mlp_fwd(ye, xe, w.experts[size_t(e)]);
    for (int64_t j = 0; j < n_e; ++j) ops::axpy_(routed[r[size_t(j)]], ye[j], wts[size_t(e)][size_t(j)]);
  }
  if (c.n_shared_experts > 0) {
    mlp_fwd(out, x, w.shared);
    ops::add_(out, routed);
  } else {
    out.copy_from(routed);
  }
}

}  // namespace dseek
