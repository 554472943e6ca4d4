// moe.cpp — dense MLP and DeepSeekMoE, forward and backward (spec/model.md §2.1 SwiGLU, §4.2–4.4).
#include "model/moe.h"

#include <cstring>
#include <vector>

#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/router.h"
#include "ops/swiglu.h"

namespace dseek {

void mlp_fwd(Tensor out, const Tensor& x, const MlpWeights& w, MlpSaved* saved) {
  const int64_t N = x.size(0), F = w.gate_proj.size(0);
  Tensor g = Tensor::empty({N, F}, x.dtype()), u = Tensor::empty({N, F}, x.dtype());  // g, u: [N, F]
  ops::linear(g, x, w.gate_proj);
  ops::linear(u, x, w.up_proj);
  Tensor h = saved ? Tensor::empty({N, F}, x.dtype()) : g;  // h: [N, F] silu(g)·u
  ops::swiglu_fwd(h, g, u);
  ops::linear(out, h, w.down_proj);
  if (saved) *saved = {x, g, u, h};
}

void mlp_bwd(Tensor dx, MlpWeights& gr, const Tensor& dy, const MlpWeights& w, const MlpSaved& s) {
  const int64_t N = s.x.size(0), F = s.g.size(1);
  const DType dt = s.x.dtype();
  Tensor dh = Tensor::empty({N, F}, dt), dg = Tensor::empty({N, F}, dt), du = Tensor::empty({N, F}, dt);
  ops::linear_bwd(dh, gr.down_proj, dy, s.h, w.down_proj);
  ops::swiglu_bwd(dg, du, dh, s.g, s.u);
  Tensor tmp = Tensor::empty(dx.shape(), dt);
  ops::linear_bwd(dx, gr.gate_proj, dg, s.x, w.gate_proj);
  ops::linear_bwd(tmp, gr.up_proj, du, s.x, w.up_proj);
  ops::add_(dx, tmp);
}

namespace {

// dst[j] = src[rows[j] / K] for the slots of one expert (gather rows of x).
Tensor gather_rows(const Tensor& src, const std::vector<int64_t>& slots, int64_t K) {
  const int64_t D = src.size(1);
  Tensor out = Tensor::empty({int64_t(slots.size()), D}, src.dtype());
  const size_t rb = size_t(D) * dtype_size(src.dtype());
  for (size_t j = 0; j < slots.size(); ++j)
    std::memcpy(static_cast<uint8_t*>(out.raw()) + j * rb,
                static_cast<const uint8_t*>(src.raw()) + size_t(slots[j] / K) * rb, rb);
  return out;
}
// The gate, in the activation precision (the router runs in fp32 or above, spec §4.2).
Tensor gate_for(const MoeWeights& w, DType dt) {
  return w.gate.dtype() == dt ? w.gate : w.gate.to(dt);
}

}  // namespace

void moe_fwd(Tensor out, const Tensor& x, const MoeWeights& w, const ModelConfig& c, RouterTrace* trace,
             MoeSaved* saved, const MoeOptions& opt) {
  const int64_t N = x.size(0), D = x.size(1), E = c.n_routed_experts, K = c.num_experts_per_tok;
  const DType dt = x.dtype();
  Tensor logits = Tensor::empty({N, E}, dt);  // logits: [N, E]
  ops::linear(logits, x, gate_for(w, dt));
  Tensor idx = Tensor::empty({N, K}, DType::I32), gw = Tensor::empty({N, K}, dt);
  const bool balance = opt.balance_alpha > 0;
  Tensor scores = saved || balance ? Tensor::empty({N, E}, dt) : Tensor();
  const Tensor bias =
      w.e_score_correction_bias.defined() ? w.e_score_correction_bias.to(DType::F32) : Tensor();
  const auto rp = ops::RouterParams::from(c);
  ops::router_fwd(idx, gw, scores, logits, bias, rp);
  const double bal =
      balance ? ops::router_balance_loss(Tensor(), scores, idx, opt.seq_len, opt.balance_alpha, rp) : 0;
  if (trace) *trace = {idx, gw, bal};

  std::vector<std::vector<int64_t>> slots(static_cast<size_t>(E));  // slots[e]: n·K + k routed to e
  const int32_t* ip = idx.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) slots[size_t(ip[n * K + k])].push_back(n * K + k);

  if (saved) {
    saved->x = x;
    saved->scores = scores;
    saved->route = {idx, gw, bal};
    saved->experts.assign(size_t(E), MlpSaved{});
    saved->expert_out.assign(size_t(E), Tensor());
    saved->balance_loss = bal;
  }
  Tensor routed = Tensor::zeros({N, D}, dt);  // routed: [N, D] Σ_k w_k · expert(x)
  for (int64_t e = 0; e < E; ++e) {
    const auto& sl = slots[size_t(e)];
    if (sl.empty()) continue;
    Tensor xe = gather_rows(x, sl, K);                       // xe: [n_e, D]
    Tensor ye = Tensor::empty({int64_t(sl.size()), D}, dt);  // ye: [n_e, D]
    mlp_fwd(ye, xe, w.experts[size_t(e)], saved ? &saved->experts[size_t(e)] : nullptr);
    auto accumulate = [&](auto* outp, const auto* yp, const auto* wp) {
      for (size_t j = 0; j < sl.size(); ++j) {
        auto* r = outp + (sl[j] / K) * D;
        const auto* y = yp + int64_t(j) * D;
        const auto wgt = wp[sl[j]];
        for (int64_t i = 0; i < D; ++i) r[i] += wgt * y[i];
      }
    };
    if (dt == DType::F64) {
      accumulate(routed.data<double>(), ye.data<double>(), gw.data<double>());
    } else {
      accumulate(routed.data<float>(), ye.data<float>(), gw.data<float>());
    }
    if (saved) saved->expert_out[size_t(e)] = ye;
  }
  if (saved) saved->slots = std::move(slots);
  if (c.n_shared_experts > 0) {
    mlp_fwd(out, x, w.shared, saved ? &saved->shared : nullptr);
    ops::add_(out, routed);
  } else {
    out.copy_from(routed);
  }
}

void moe_bwd(Tensor dx, MoeWeights& g, const Tensor& dy, const MoeWeights& w, const ModelConfig& c,
             const MoeSaved& s, const MoeOptions& opt) {
  const int64_t N = s.x.size(0), D = s.x.size(1), E = c.n_routed_experts, K = c.num_experts_per_tok;
  const DType dt = s.x.dtype();
  if (c.n_shared_experts > 0) {
    mlp_bwd(dx, g.shared, dy, w.shared, s.shared);
  } else {
    dx.fill(0);
  }
  Tensor dgw = Tensor::zeros({N, K}, dt);  // dgw: [N, K] ∂loss/∂(gate weight)
  for (int64_t e = 0; e < E; ++e) {
    const auto& sl = s.slots[size_t(e)];
    if (sl.empty()) continue;
    const int64_t ne = int64_t(sl.size());
    Tensor dye = Tensor::empty({ne, D}, dt), dxe = Tensor::empty({ne, D}, dt);  // [n_e, D]
    const Tensor& ye = s.expert_out[size_t(e)];
    // d(gate weight) = dy[n] · ye[j]; d(expert output) = weight · dy[n]
    auto scatter = [&](auto* dyp, auto* yep, auto* dgwp, auto* dyep, const auto* wp) {
      for (int64_t j = 0; j < ne; ++j) {
        const int64_t slot = sl[size_t(j)], n = slot / K;
        const auto* row = dyp + n * D;
        const auto* yr = yep + j * D;
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += double(row[i]) * double(yr[i]);
        dgwp[slot] = decltype(dgwp[0] + 0)(dot);
        const auto wgt = wp[slot];
        auto* dr = dyep + j * D;
        for (int64_t i = 0; i < D; ++i) dr[i] = wgt * row[i];
      }
    };
    if (dt == DType::F64) {
      scatter(dy.data<double>(), ye.data<double>(), dgw.data<double>(), dye.data<double>(),
              s.route.topk_w.data<double>());
    } else {
      scatter(dy.data<float>(), ye.data<float>(), dgw.data<float>(), dye.data<float>(),
              s.route.topk_w.data<float>());
    }
    mlp_bwd(dxe, g.experts[size_t(e)], dye, w.experts[size_t(e)], s.experts[size_t(e)]);
    auto gather_back = [&](auto* dxp, const auto* dxep) {
      for (int64_t j = 0; j < ne; ++j) {
        auto* d = dxp + (sl[size_t(j)] / K) * D;
        const auto* src = dxep + j * D;
        for (int64_t i = 0; i < D; ++i) d[i] += src[i];
      }
    };
    if (dt == DType::F64) {
      gather_back(dx.data<double>(), dxe.data<double>());
    } else {
      gather_back(dx.data<float>(), dxe.data<float>());
    }
  }
  Tensor dlogits = Tensor::empty({N, E}, dt);  // dlogits: [N, E]
  const auto rp = ops::RouterParams::from(c);
  ops::router_bwd(dlogits, dgw, s.route.topk_idx, s.scores, rp);
  if (opt.balance_alpha > 0)
    ops::router_balance_loss(dlogits, s.scores, s.route.topk_idx, opt.seq_len, opt.balance_alpha, rp);
  Tensor dxr = Tensor::empty({N, D}, dt);
  ops::linear_bwd(dxr, g.gate, dlogits, s.x, gate_for(w, dt));
  ops::add_(dx, dxr);
}

}  // namespace dseek
