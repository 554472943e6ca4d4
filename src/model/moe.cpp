// moe.cpp — dense MLP and DeepSeekMoE, forward and backward (spec/model.md §2.1 SwiGLU, §4.2–4.4).
#include "model/moe.h"

#include <cstring>
#include <vector>

#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/router.h"
#include "ops/swiglu.h"

namespace dseek {

void mlp_fwd(Tensor out, const Tensor& x, const MlpWeights& w, MlpSaved* saved) {
  const int64_t N = x.size(0), F = w.gate_proj.size(0);
  if (!saved) {  // inference: gate, up and SwiGLU as one op (one launch for a decode step on the GPU)
    Tensor h = Tensor::empty({N, F}, x.dtype(), x.device());  // h: [N, F] silu(g)·u
    ops::linear_swiglu(h, x, w.gate_proj, w.up_proj);
    ops::linear(out, h, w.down_proj);
    return;
  }
  Tensor g = Tensor::empty({N, F}, x.dtype(), x.device()),
         u = Tensor::empty({N, F}, x.dtype(), x.device());              // g, u: [N, F]
  const Tensor xa = ops::product_input(x, {&w.gate_proj, &w.up_proj});  // cast once on the GPU
  ops::linear(g, xa, w.gate_proj);
  ops::linear(u, xa, w.up_proj);
  // h: [N, F] silu(g)·u, written in bf16 when the products take bf16 operands (the down projection's
  // operand, kept for its backward)
  const bool bf16_ops = xa.dtype() != x.dtype() && w.down_proj.dtype() == DType::BF16;
  Tensor h = Tensor::empty({N, F}, bf16_ops ? DType::BF16 : x.dtype(), x.device());
  ops::swiglu_fwd(h, g, u);
  ops::linear(out, h, w.down_proj);
  *saved = {xa, g, u, h};  // the product operands (bf16 on the GPU) for the backward's products
}

void mlp_bwd(Tensor dx, MlpWeights& gr, const Tensor& dy, const MlpWeights& w, const MlpSaved& s,
             const Tensor& dy_op) {
  const int64_t N = s.g.size(0), F = s.g.size(1);
  const DType dt = s.g.dtype();  // the activation dtype (x and h may be their bf16 operands)
  const Device dev = s.g.device();
  // dg, du only feed the gate/up products: in their operand dtype
  const DType op = s.h.dtype();
  Tensor dh = Tensor::empty({N, F}, dt, dev), dg = Tensor::empty({N, F}, op, dev),
         du = Tensor::empty({N, F}, op, dev);
  const bool use_op = dy_op.defined() && dy_op.dtype() == w.down_proj.dtype();
  ops::linear_bwd(dh, gr.down_proj, use_op ? dy_op : dy, s.h, w.down_proj);
  ops::swiglu_bwd(dg, du, dh, s.g, s.u);
  Tensor tmp = Tensor::empty(dx.shape(), dt, dev);
  ops::linear_bwd(dx, gr.gate_proj, dg, s.x, w.gate_proj);
  ops::linear_bwd(tmp, gr.up_proj, du, s.x, w.up_proj);
  ops::add_(dx, tmp);
}

namespace {

// The gate, in the activation precision (the router runs in fp32 or above, spec §4.2).
Tensor gate_for(const MoeWeights& w, DType dt) {
  return w.gate.dtype() == dt ? w.gate : w.gate.to(dt);
}

struct ExpertMats {
  std::vector<Tensor> gate, up, down;
  explicit ExpertMats(const std::vector<MlpWeights>& ex) {
    for (const auto& e : ex) {
      gate.push_back(e.gate_proj);
      up.push_back(e.up_proj);
      down.push_back(e.down_proj);
    }
  }
};

}  // namespace

ops::NormedInput residual_norm(const Tensor& h, const FfnOut& f, const Tensor& norm, double eps,
                               const Tensor& h_out, const Tensor& x_out) {
  return {.h = h,
          .y = f.y,
          .w = f.w,
          .K = f.K,
          .KS = f.KS,
          .norm = norm,
          .eps = eps,
          .h_out = h_out,
          .x_out = x_out};
}

FfnOut moe_decode(const ops::NormedInput& in, const MoeWeights& w, const ModelConfig& c) {
  DSEEK_CHECK(in.x_out.defined(), "moe_decode: the normed input needs x_out (the experts' input)");
  const int64_t N = in.h.size(0), D = in.h.size(1), K = c.num_experts_per_tok;
  const ExpertMats mats(w.experts);
  const auto rp = ops::RouterParams::from(c);
  const ops::SharedExpert shared =
      c.n_shared_experts > 0
          ? ops::SharedExpert{.gate = w.shared.gate_proj, .up = w.shared.up_proj, .down = w.shared.down_proj}
          : ops::SharedExpert{};
  if (ops::router_decode_applies(in.h, w.gate, rp) &&
      ops::moe_experts_slots_applies(in.h, K, mats.gate, shared)) {
    const Tensor bias =
        w.e_score_correction_bias.defined() ? w.e_score_correction_bias.to(DType::F32) : Tensor();
    Tensor idx = Tensor::empty({N, K}, DType::I32, in.h.device()),
           gw = Tensor::empty({N, K}, DType::F32, in.h.device());  // idx, gw: [N, K]
    ops::router_decode(idx, gw, in, w.gate, bias, rp);
    const int64_t KS = K + (shared.defined() ? 1 : 0);
    Tensor yp = Tensor::empty({N * KS, D}, DType::F32, in.h.device());  // yp: [N·KS, D] per slot
    ops::moe_experts_slots(yp, in.x_out, idx, mats.gate, mats.up, mats.down, shared);
    return {.y = yp, .w = gw, .K = K, .KS = KS};
  }
  ops::normed_input(in.x_out, in);
  Tensor y = Tensor::empty({N, D}, in.h.dtype(), in.h.device());  // y: [N, D]
  moe_fwd(y, in.x_out, w, c);
  return {.y = y, .w = Tensor(), .K = 0, .KS = 1};
}

namespace {

// The experts' operand dtype: bf16 for large batches on the GPU with bf16 experts and f32 activations (rows
// permuted straight into bf16, one operand for both products, what the backward keeps), else x's.
DType expert_operand(const Tensor& x, const MoeWeights& w, int64_t M) {
  const bool bf16_ops = x.device() == Device::CUDA && M > 1024 && x.dtype() == DType::F32 &&
                        w.experts[0].gate_proj.dtype() == DType::BF16 &&
                        w.experts[0].down_proj.dtype() == DType::BF16;
  return bf16_ops ? DType::BF16 : x.dtype();
}

// The experts' input side from the permuted rows xp [M, D]: h = silu(g) ⊙ u [M, F], with g and u written
// when defined (training keeps them) — one fused op under bf16 operands, else the pair and SwiGLU (g and
// u then required). The forward and the backward's recompute go through here, so they give the same bits.
void expert_hidden(Tensor h, const Tensor& g, const Tensor& u, const Tensor& xp, const ExpertMats& mats,
                   const ops::MoePlan& plan, bool fused) {
  if (fused) {
    ops::grouped_swiglu(h, g, u, xp, mats.gate, mats.up, plan);
  } else {
    ops::grouped_linear_pair(g, u, xp, mats.gate, mats.up, plan);
    ops::swiglu_fwd(h, g, u);
  }
}

}  // namespace

void moe_fwd(Tensor out, const Tensor& x, const MoeWeights& w, const ModelConfig& c, RouterTrace* trace,
             MoeSaved* saved, const MoeOptions& opt) {
  const int64_t N = x.size(0), D = x.size(1), E = c.n_routed_experts, K = c.num_experts_per_tok,
                F = c.moe_intermediate_size, M = N * K;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const ExpertMats mats(w.experts);
  const auto rp = ops::RouterParams::from(c);
  const Tensor bias =
      w.e_score_correction_bias.defined() ? w.e_score_correction_bias.to(DType::F32) : Tensor();
  const ops::SharedExpert shared =
      c.n_shared_experts > 0
          ? ops::SharedExpert{.gate = w.shared.gate_proj, .up = w.shared.up_proj, .down = w.shared.down_proj}
          : ops::SharedExpert{};
  if (!saved && opt.balance_alpha <= 0 && ops::moe_experts_small_applies(x, K, mats.gate)) {
    // A decode step on the GPU: the gate product and the choice in one op, then the experts grouped on
    // the device from idx (no host-side plan, no sync), the shared expert folded into their launches.
    Tensor idx = Tensor::empty({N, K}, DType::I32, dev), gw = Tensor::empty({N, K}, DType::F32, dev);
    ops::router_decode(idx, gw, x, w.gate, bias, rp);
    if (trace) *trace = {idx, gw, 0.0, {}};
    ops::moe_experts_small(out, x, idx, gw, mats.gate, mats.up, mats.down, shared);
    return;
  }
  // The router runs in f32 at least (spec §4.2), whatever the activations are.
  const DType rdt = dt == DType::BF16 ? DType::F32 : dt;
  Tensor logits = Tensor::empty({N, E}, rdt, dev);  // logits: [N, E]
  ops::linear(logits, x, gate_for(w, rdt));
  Tensor idx = Tensor::empty({N, K}, DType::I32, dev), gw = Tensor::empty({N, K}, rdt, dev);
  const bool balance = opt.balance_alpha > 0;
  Tensor scores = saved || balance ? Tensor::empty({N, E}, rdt, dev) : Tensor();
  ops::router_fwd(idx, gw, scores, logits, bias, rp);
  const double bal =
      balance ? ops::router_balance_loss(Tensor(), scores, idx, opt.seq_len, opt.balance_alpha, rp) : 0;
  if (trace) *trace = {idx, gw, bal, {}};

  Tensor routed = Tensor::empty({N, D}, dt, dev);  // routed: [N, D] Σ_k w_k · expert(x)
  // Inference on the GPU with a large batch (a prefill): the plan built on the device, so the routing is
  // never copied back to the host. For training (which keeps the permuted rows for the backward) and
  // middling batches the host-side plan below.
  if (!saved && dev == Device::CUDA && M > 1024 && K < 32) {
    // The shared expert rides along as one more expert of every token when it has the routed experts'
    // shape (DeepSeek's one shared expert); otherwise it runs beside the grouped op.
    if (ops::moe_experts_grouped_applies(x, mats.gate, mats.up, mats.down, shared)) {
      ops::moe_experts_grouped(out, x, idx, gw, mats.gate, mats.up, mats.down, shared);
      return;
    }
    if (shared.defined() && ops::moe_experts_grouped_applies(x, mats.gate, mats.up, mats.down)) {
      ops::moe_experts_grouped(routed, x, idx, gw, mats.gate, mats.up, mats.down);
      mlp_fwd(out, x, w.shared);
      ops::add_(out, routed);
      return;
    }
  }
  // Routed experts: permute tokens by expert, one grouped product per projection, un-permute with the
  // gate weights. xp, yp: [M, D]; g, u, h: [M, F].
  // On the GPU the plan is built there (only the E + 1 offsets come back), else from a host copy of idx.
  ops::MoePlan plan = dev == Device::CUDA && E <= 256 ? ops::MoePlan::build_on_device(idx, E)
                                                      : ops::MoePlan::build(idx.to(Device::CPU), E);
  if (trace)  // the expert loads from the plan's host offsets (no second copy of idx to the host)
    for (int64_t e = 0; e < E; ++e) trace->load.push_back(plan.rows(e));
  // Large batches on the GPU with bf16 experts: the rows are permuted straight into the experts' bf16
  // (one operand for both products, and what the backward keeps), and SwiGLU writes the down
  // projection's bf16 operand; elsewhere gate and up run as one grouped pair over the activations.
  const DType op = expert_operand(x, w, M);
  const bool bf16_ops = op != dt;
  // g and u are needed after the forward only when the backward keeps them (saved, no recompute); the
  // fused bf16 op does without them otherwise.
  const bool keep = saved && !saved->recompute;
  // xp, g, u, h and yp in bf16 then (the experts write and read bf16; what the backward keeps)
  Tensor xp = Tensor::empty({M, D}, op, dev);
  Tensor g = !bf16_ops || keep ? Tensor::empty({M, F}, op, dev) : Tensor(),
         u = !bf16_ops || keep ? Tensor::empty({M, F}, op, dev) : Tensor();
  ops::moe_permute(xp, x, plan);
  Tensor h = saved || bf16_ops ? Tensor::empty({M, F}, op, dev) : g;
  expert_hidden(h, g, u, xp, mats, plan, bf16_ops);
  Tensor yp = Tensor::empty({M, D}, op, dev);
  ops::grouped_linear(yp, h, mats.down, plan);
  ops::moe_unpermute(routed, yp, gw.to(dt), plan);
  if (saved) {
    saved->x = x;
    saved->scores = scores;
    saved->route = {idx, gw, bal, {}};
    if (keep) {
      saved->xp = xp;
      saved->g = g;
      saved->u = u;
      saved->h = h;
    }
    saved->yp = yp;
    saved->plan = std::move(plan);
    saved->balance_loss = bal;
  }
  if (c.n_shared_experts > 0) {
    mlp_fwd(out, x, w.shared, saved ? &saved->shared : nullptr);
    ops::add_(out, routed);
  } else {
    out.copy_from(routed);
  }
}

void moe_bwd(Tensor dx, MoeWeights& g, const Tensor& dy, const MoeWeights& w, const ModelConfig& c,
             const MoeSaved& s, const MoeOptions& opt, const Tensor& dy_op) {
  const int64_t N = s.x.size(0), D = s.x.size(1), E = c.n_routed_experts, K = c.num_experts_per_tok,
                F = c.moe_intermediate_size, M = N * K;
  const DType dt = s.x.dtype();
  const Device dev = s.x.device();
  if (c.n_shared_experts > 0) {
    mlp_bwd(dx, g.shared, dy, w.shared, s.shared, dy_op);
  } else {
    dx.fill(0);
  }
  const ExpertMats mats(w.experts), grads(g.experts);
  // The forward's bf16 operands (xp, h): the gradients that only feed the experts' products are written
  // in bf16 too (dyp, dg, du), the rest stay in the activation dtype.
  const DType op = expert_operand(s.x, w, M);
  Tensor xp = s.xp, gt = s.g, ut = s.u, h = s.h;
  if (s.recompute) {  // the experts' inputs and hidden rows rebuilt from x as the forward made them
    xp = Tensor::empty({M, D}, op, dev);
    gt = Tensor::empty({M, F}, op, dev);
    ut = Tensor::empty({M, F}, op, dev);
    h = Tensor::empty({M, F}, op, dev);  // xp: [M, D]; gt, ut, h: [M, F]
    ops::moe_permute(xp, s.x, s.plan);
    expert_hidden(h, gt, ut, xp, mats, s.plan, op != dt);
  }
  Tensor dyp = Tensor::empty({M, D}, op, dev), dgw = Tensor::empty({N, K}, dt, dev);
  ops::moe_unpermute_bwd(dyp, dgw, dy, s.yp, s.route.topk_w, s.plan);
  // dg, du: [M, F] SwiGLU's backward of dh = dyp · W_down (on the GPU the product's epilogue: dh is not kept)
  Tensor dg = Tensor::empty({M, F}, op, dev), du = Tensor::empty({M, F}, op, dev);
  ops::grouped_down_swiglu_bwd(dg, du, grads.down, dyp, h, mats.down, gt, ut, s.plan);
  // dxp: [M, D] = dg · W_gate + du · W_up per expert (on the GPU one product along 2F), then through the
  // permutation's backward into dx
  Tensor dxp = Tensor::empty({M, D}, dt, dev), dxr = Tensor::empty({N, D}, dt, dev);
  ops::grouped_linear_pair_bwd(dxp, grads.gate, grads.up, dg, du, xp, mats.gate, mats.up, s.plan);
  ops::moe_permute_bwd_add(dx, dxp, Tensor(), s.plan);
  Tensor dlogits = Tensor::empty({N, E}, dt, dev);  // dlogits: [N, E]
  const auto rp = ops::RouterParams::from(c);
  ops::router_bwd(dlogits, dgw, s.route.topk_idx, s.scores, rp);
  if (opt.balance_alpha > 0)
    ops::router_balance_loss(dlogits, s.scores, s.route.topk_idx, opt.seq_len, opt.balance_alpha, rp);
  ops::linear_bwd(dxr, g.gate, dlogits, s.x, gate_for(w, dt));
  ops::add_(dx, dxr);
}

}  // namespace dseek
