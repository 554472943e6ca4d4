// moe.cpp — the MoE plan and checks / device dispatch for the permutation ops (ops/moe.h).
#include "ops/moe.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/decode.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/swiglu.h"

namespace dseek::ops {

MoePlan MoePlan::build(const Tensor& topk_idx, int64_t experts) {
  check_ndim("MoePlan::build", "topk_idx", topk_idx, 2);
  check_dtype("MoePlan::build", "topk_idx", topk_idx, {DType::I32});
  MoePlan p;
  p.tokens = topk_idx.size(0);
  p.top_k = topk_idx.size(1);
  p.experts = experts;
  const int64_t M = p.tokens * p.top_k;
  const int32_t* idx = topk_idx.data<int32_t>();
  p.offsets.assign(size_t(experts) + 1, 0);
  for (int64_t i = 0; i < M; ++i) {
    DSEEK_CHECK(idx[i] >= 0 && idx[i] < experts, "MoePlan::build: expert ", idx[i], " out of range");
    p.offsets[size_t(idx[i]) + 1]++;
  }
  for (int64_t e = 0; e < experts; ++e) p.offsets[size_t(e) + 1] += p.offsets[size_t(e)];
  std::vector<int64_t> fill(p.offsets.begin(), p.offsets.end() - 1);
  p.slot.resize(size_t(M));
  p.row.resize(size_t(M));
  for (int64_t i = 0; i < M; ++i) {  // stable: within an expert, tokens keep their order
    const int64_t r = fill[size_t(idx[i])]++;
    p.slot[size_t(r)] = i;
    p.row[size_t(i)] = r;
  }
  return p;
}

MoePlan MoePlan::build_on_device(const Tensor& topk_idx, int64_t experts) {
  check_ndim("MoePlan::build_on_device", "topk_idx", topk_idx, 2);
  check_dtype("MoePlan::build_on_device", "topk_idx", topk_idx, {DType::I32});
  DSEEK_CHECK(topk_idx.device() == Device::CUDA, "MoePlan::build_on_device: topk_idx on the GPU");
  DSEEK_CHECK(experts > 0 && experts <= 256, "MoePlan::build_on_device: ", experts, " experts (1 … 256)");
  MoePlan p;
  p.tokens = topk_idx.size(0);
  p.top_k = topk_idx.size(1);
  p.experts = experts;
  cuda::moe_plan_build(p, topk_idx);
  return p;
}

namespace {
void check_plan_rows(const char* op, const char* arg, const Tensor& t, const MoePlan& p) {
  check_ndim(op, arg, t, 2);
  DSEEK_CHECK(t.size(0) == p.tokens * p.top_k, op, ": ", arg, " ", t.str(),
              " must have N·K = ", p.tokens * p.top_k, " rows");
}
void check_weights(const char* op, const std::vector<Tensor>& w, const MoePlan& p, int64_t O, int64_t I,
                   DType dt) {
  DSEEK_CHECK(int64_t(w.size()) == p.experts, op, ": ", w.size(), " expert weights for ", p.experts,
              " experts");
  for (const Tensor& t : w) {
    check_shape(op, "w[e]", t, {O, I});
    if (dt == DType::F64) {
      check_dtype(op, "w[e]", t, {DType::F64});
    } else if (t.dtype() == DType::F8E4M3) {
      DSEEK_CHECK(t.device() == Device::CUDA && t.block_scale(), op,
                  ": fp8 expert weights need block scales, on CUDA");
    } else {
      check_dtype(op, "w[e]", t, {DType::F32, DType::BF16});
    }
  }
}

// dy takes x's dtype, or (GPU) either may be the bf16 operand of f32 activations; dx (when given) is of the
// activation dtype: x's, or f32 under a bf16 operand x.
void check_grad_dtypes(const char* op, const Tensor& x, const Tensor& dy, const Tensor& dx) {
  const bool gpu = x.device() == Device::CUDA;
  auto act = [&](DType d) { return d == x.dtype() || (gpu && (d == DType::F32 || d == DType::BF16)); };
  DSEEK_CHECK(act(dy.dtype()), op, ": dy is ", dtype_name(dy.dtype()), ", x ", dtype_name(x.dtype()));
  if (dx.defined())
    DSEEK_CHECK(dx.dtype() == x.dtype() || (gpu && dx.dtype() == DType::F32), op, ": dx is ",
                dtype_name(dx.dtype()), ", x ", dtype_name(x.dtype()));
}

// The CUDA backward of a grouped product (dx rows written, dw[e] accumulated): with bf16 experts one grouped
// launch each for dx and dw, else a cuBLASLt product pair per expert with rows; dy cast to xo's dtype once
// (xo from product_input).
void grouped_bwd_cuda(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& xo,
                      const std::vector<Tensor>& w, const MoePlan& p) {
  const Tensor dyo = dy.dtype() == xo.dtype() ? dy : dy.to(xo.dtype());
  // bf16 experts: every expert's dx in one grouped launch and every dw in another; the per-expert loop
  // below does what they leave.
  if (dx.defined() && dyo.dtype() == DType::BF16 && cuda::grouped_linear_dgrad(dx, dyo, w, p)) dx = Tensor();
  bool want_dw = !dw.empty();
  if (want_dw && dyo.dtype() == DType::BF16 && cuda::grouped_linear_wgrad(dw, dyo, xo, p)) want_dw = false;
  if (!dx.defined() && !want_dw) return;
  for (int64_t e = 0; e < p.experts; ++e) {
    const int64_t r0 = p.offsets[size_t(e)], n = p.rows(e);
    if (n == 0) continue;
    // rows [r0, r0 + n) of dx, dyo, xo: expert e's tokens
    cuda::linear_bwd(dx.defined() ? dx.slice(r0, n) : Tensor(), want_dw ? dw[size_t(e)] : Tensor(),
                     dyo.slice(r0, n), xo.slice(r0, n), w[size_t(e)]);
  }
}
}  // namespace

void moe_permute(Tensor xp, const Tensor& x, const MoePlan& p, Stream) {
  check_ndim("moe_permute", "x", x, 2);
  check_act("moe_permute", "x", x);
  DSEEK_CHECK(x.size(0) == p.tokens, "moe_permute: x has ", x.size(0), " rows for a plan of ", p.tokens,
              " tokens");
  check_plan_rows("moe_permute", "xp", xp, p);
  // On the GPU f32 rows may be permuted straight into bf16 (the experts' operand, no separate cast).
  DSEEK_CHECK(xp.size(1) == x.size(1) && (xp.dtype() == x.dtype() || gpu_bf16_operand(x, xp)),
              "moe_permute: xp/x mismatch");
  switch (x.device()) {
    case Device::CPU:
      return cpu::moe_permute(xp, x, p);
    case Device::CUDA:
      return cuda::moe_permute(xp, x, p);
    default:
      fail("moe_permute: no implementation for ", device_name(x.device()));
  }
}

void moe_permute_bwd_add(Tensor dx, const Tensor& dxa, const Tensor& dxb, const MoePlan& p, Stream) {
  check_plan_rows("moe_permute_bwd_add", "dxa", dxa, p);
  check_act("moe_permute_bwd_add", "dxa", dxa);
  if (dxb.defined()) {
    check_shape("moe_permute_bwd_add", "dxb", dxb, dxa.shape());
    DSEEK_CHECK(dxb.dtype() == dxa.dtype(), "moe_permute_bwd_add: mixed dtypes");
    check_same_device("moe_permute_bwd_add", {&dx, &dxb});
  }
  check_shape("moe_permute_bwd_add", "dx", dx, {p.tokens, dxa.size(1)});
  DSEEK_CHECK(dx.dtype() == dxa.dtype(), "moe_permute_bwd_add: mixed dtypes");
  check_same_device("moe_permute_bwd_add", {&dx, &dxa});
  switch (dx.device()) {
    case Device::CPU: {
      Tensor sum = dxa, dxr = Tensor::empty(dx.shape(), dx.dtype());  // sum: [M, D], dxr: [N, D]
      if (dxb.defined()) {
        sum = dxa.clone();
        axpy_(sum, dxb, 1.0);
      }
      cpu::moe_permute_bwd(dxr, sum, p);
      axpy_(dx, dxr, 1.0);
      return;
    }
    case Device::CUDA:
      return cuda::moe_permute_bwd_add(dx, dxa, dxb, p);
    default:
      fail("moe_permute_bwd_add: no implementation for ", device_name(dx.device()));
  }
}

void moe_permute_bwd(Tensor dx, const Tensor& dxp, const MoePlan& p, Stream) {
  check_plan_rows("moe_permute_bwd", "dxp", dxp, p);
  check_act("moe_permute_bwd", "dxp", dxp);
  check_shape("moe_permute_bwd", "dx", dx, {p.tokens, dxp.size(1)});
  DSEEK_CHECK(dx.dtype() == dxp.dtype(), "moe_permute_bwd: mixed dtypes");
  switch (dx.device()) {
    case Device::CPU:
      return cpu::moe_permute_bwd(dx, dxp, p);
    case Device::CUDA:
      return cuda::moe_permute_bwd(dx, dxp, p);
    default:
      fail("moe_permute_bwd: no implementation for ", device_name(dx.device()));
  }
}

void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& p, Stream) {
  check_plan_rows("grouped_linear", "x", x, p);
  check_act("grouped_linear", "x", x);
  DSEEK_CHECK(!w.empty(), "grouped_linear: no weights");
  const int64_t O = w[0].size(0), I = x.size(1);
  check_weights("grouped_linear", w, p, O, I, x.dtype());
  check_shape("grouped_linear", "out", out, {x.size(0), O});
  DSEEK_CHECK(out.dtype() == x.dtype() || (x.device() == Device::CUDA && out.dtype() == DType::F32),
              "grouped_linear: out dtype differs from x");
  switch (x.device()) {
    case Device::CPU:
      return cpu::grouped_linear(out, x, w, p);
    case Device::CUDA:
      return cuda::grouped_linear(out, x, w, p);
    default:
      fail("grouped_linear: no implementation for ", device_name(x.device()));
  }
}

void grouped_linear_bwd(Tensor dx, const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                        const std::vector<Tensor>& w, const MoePlan& p, Stream) {
  check_plan_rows("grouped_linear_bwd", "x", x, p);
  check_act("grouped_linear_bwd", "x", x);
  const int64_t O = w.at(0).size(0), I = x.size(1);
  check_weights("grouped_linear_bwd", w, p, O, I, x.dtype());
  check_shape("grouped_linear_bwd", "dy", dy, {x.size(0), O});
  if (dx.defined()) check_shape("grouped_linear_bwd", "dx", dx, x.shape());
  if (!dw.empty()) {
    DSEEK_CHECK(int64_t(dw.size()) == p.experts, "grouped_linear_bwd: dw count");
    for (const Tensor& t : dw) {
      check_shape("grouped_linear_bwd", "dw[e]", t, {O, I});
      DSEEK_CHECK(t.dtype() == x.dtype() || gpu_bf16_operand(t, x),
                  "grouped_linear_bwd: dw must have the activation dtype");
    }
  }
  check_grad_dtypes("grouped_linear_bwd", x, dy, dx);
  switch (x.device()) {
    case Device::CPU:
      return cpu::grouped_linear_bwd(dx, dw, dy, x, w, p);
    case Device::CUDA:
      return grouped_bwd_cuda(dx, dw, dy, product_input(x, {&w.at(0)}), w, p);
    default:
      fail("grouped_linear_bwd: no implementation for ", device_name(x.device()));
  }
}

void grouped_linear_pair(Tensor out_a, Tensor out_b, const Tensor& x, const std::vector<Tensor>& wa,
                         const std::vector<Tensor>& wb, const MoePlan& p, Stream s) {
  check_plan_rows("grouped_linear_pair", "x", x, p);
  check_act("grouped_linear_pair", "x", x);
  DSEEK_CHECK(!wa.empty() && !wb.empty(), "grouped_linear_pair: no weights");
  const int64_t O = wa[0].size(0), I = x.size(1);
  check_weights("grouped_linear_pair", wa, p, O, I, x.dtype());
  check_weights("grouped_linear_pair", wb, p, O, I, x.dtype());
  check_shape("grouped_linear_pair", "out_a", out_a, {x.size(0), O});
  check_shape("grouped_linear_pair", "out_b", out_b, {x.size(0), O});
  DSEEK_CHECK(out_a.dtype() == x.dtype() && out_b.dtype() == x.dtype(),
              "grouped_linear_pair: out dtype differs from x");
  if (x.device() == Device::CPU) return cpu::grouped_linear_pair(out_a, out_b, x, wa, wb, p);
  (void)s;
  DSEEK_CHECK(x.device() == Device::CUDA, "grouped_linear_pair: no implementation for ",
              device_name(x.device()));
  // Both products take one bf16 cast of x (more than 8 rows: the small-batch GEMVs read f32).
  const Tensor xo = product_input(x, {&wa.at(0)});
  cuda::grouped_linear(out_a, xo, wa, p);
  cuda::grouped_linear(out_b, xo, wb, p);
}

void grouped_linear_pair_bwd(Tensor dx, const std::vector<Tensor>& dwa, const std::vector<Tensor>& dwb,
                             const Tensor& dya, const Tensor& dyb, const Tensor& x,
                             const std::vector<Tensor>& wa, const std::vector<Tensor>& wb, const MoePlan& p,
                             Stream s) {
  check_plan_rows("grouped_linear_pair_bwd", "x", x, p);
  check_act("grouped_linear_pair_bwd", "x", x);
  DSEEK_CHECK(!wa.empty() && !wb.empty(), "grouped_linear_pair_bwd: no weights");
  const int64_t O = wa[0].size(0), I = x.size(1);
  check_weights("grouped_linear_pair_bwd", wa, p, O, I, x.dtype());
  check_weights("grouped_linear_pair_bwd", wb, p, O, I, x.dtype());
  check_shape("grouped_linear_pair_bwd", "dya", dya, {x.size(0), O});
  check_shape("grouped_linear_pair_bwd", "dyb", dyb, {x.size(0), O});
  if (dx.defined()) check_shape("grouped_linear_pair_bwd", "dx", dx, x.shape());
  for (const auto* dw : {&dwa, &dwb}) {
    if (dw->empty()) continue;
    DSEEK_CHECK(int64_t(dw->size()) == p.experts, "grouped_linear_pair_bwd: dw count");
    for (const Tensor& t : *dw) {
      check_shape("grouped_linear_pair_bwd", "dw[e]", t, {O, I});
      DSEEK_CHECK(t.dtype() == x.dtype() || gpu_bf16_operand(t, x),
                  "grouped_linear_pair_bwd: dw must have the activation dtype");
    }
  }
  check_grad_dtypes("grouped_linear_pair_bwd", x, dya, dx);
  check_grad_dtypes("grouped_linear_pair_bwd", x, dyb, Tensor());
  switch (x.device()) {
    case Device::CPU:
      return cpu::grouped_linear_pair_bwd(dx, dwa, dwb, dya, dyb, x, wa, wb, p);
    case Device::CUDA: {  // the two products' backward (x cast once for both), then dx = dx_a + dx_b
      const Tensor xo = product_input(x, {&wa.at(0)});
      // bf16 experts: dx = dya·wa + dyb·wb as one grouped product along both inner dims
      if (dx.defined() && dya.dtype() == DType::BF16 && cuda::grouped_pair_dgrad(dx, dya, dyb, wa, wb, p))
        dx = Tensor();
      grouped_bwd_cuda(dx, dwa, dya, xo, wa, p);
      Tensor dxb = dx.defined() ? Tensor::empty(dx.shape(), dx.dtype(), dx.device()) : Tensor();
      grouped_bwd_cuda(dxb, dwb, dyb, xo, wb, p);
      if (dx.defined()) axpy_(dx, dxb, 1.0);
      return;
    }
    default:
      (void)s;
      fail("grouped_linear_pair_bwd: no implementation for ", device_name(x.device()));
  }
}

void grouped_swiglu(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                    const std::vector<Tensor>& wu, const MoePlan& p, Stream) {
  check_plan_rows("grouped_swiglu", "x", x, p);
  check_act("grouped_swiglu", "x", x);
  DSEEK_CHECK(!wg.empty() && !wu.empty(), "grouped_swiglu: no weights");
  const int64_t F = wg[0].size(0), D = x.size(1);
  check_weights("grouped_swiglu", wg, p, F, D, x.dtype());
  check_weights("grouped_swiglu", wu, p, F, D, x.dtype());
  check_shape("grouped_swiglu", "h", h, {x.size(0), F});
  const bool gpu = x.device() == Device::CUDA;
  DSEEK_CHECK(h.dtype() == x.dtype() || (gpu && (h.dtype() == DType::F32 || h.dtype() == DType::BF16)),
              "grouped_swiglu: h is ", dtype_name(h.dtype()), ", x ", dtype_name(x.dtype()));
  for (const Tensor* t : {&g, &u}) {
    if (!t->defined()) continue;
    check_shape("grouped_swiglu", "g/u", *t, h.shape());
    DSEEK_CHECK(t->dtype() == x.dtype(), "grouped_swiglu: g and u take x's dtype");
  }
  check_same_device("grouped_swiglu", {&h, &x, &g, &u});
  if (gpu && cuda::grouped_swiglu_fwd(h, g, u, x, wg, wu, p)) return;
  // Elsewhere (and on the CPU): the pair of products, then SwiGLU.
  const Tensor ga = g.defined() ? g : Tensor::empty(h.shape(), x.dtype(), x.device()),
               ua = u.defined() ? u : Tensor::empty(h.shape(), x.dtype(), x.device());
  grouped_linear_pair(ga, ua, x, wg, wu, p);
  swiglu_fwd(h, ga, ua);
}

void grouped_down_swiglu_bwd(Tensor dg, Tensor du, const std::vector<Tensor>& dwd, const Tensor& dy,
                             const Tensor& h, const std::vector<Tensor>& wd, const Tensor& g, const Tensor& u,
                             const MoePlan& p, Stream) {
  check_plan_rows("grouped_down_swiglu_bwd", "h", h, p);
  check_act("grouped_down_swiglu_bwd", "g", g);
  const int64_t F = h.size(1), D = dy.size(1);
  DSEEK_CHECK(!wd.empty(), "grouped_down_swiglu_bwd: no weights");
  check_weights("grouped_down_swiglu_bwd", wd, p, D, F, h.dtype());
  check_shape("grouped_down_swiglu_bwd", "dy", dy, {h.size(0), D});
  for (const Tensor* t : std::initializer_list<const Tensor*>{&g, &u, &dg, &du})
    check_shape("grouped_down_swiglu_bwd", "g/u/dg/du", *t, h.shape());
  DSEEK_CHECK(u.dtype() == g.dtype() && du.dtype() == dg.dtype(), "grouped_down_swiglu_bwd: mixed dtypes");
  check_same_device("grouped_down_swiglu_bwd", {&dg, &du, &dy, &h, &g, &u});
  if (h.device() == Device::CUDA && dy.dtype() == DType::BF16 &&
      cuda::grouped_swiglu_dgrad(dg, du, dy, wd, g, u, p)) {
    grouped_linear_bwd(Tensor(), dwd, dy, h, wd, p);  // the down matrices' gradients alone
    return;
  }
  // dh: [M, F] in the activation dtype (g's; f32 under bf16 operands on the GPU)
  const DType act = g.device() == Device::CUDA && g.dtype() == DType::BF16 && dy.dtype() == DType::BF16
                        ? DType::F32
                        : g.dtype();
  Tensor dh = Tensor::empty(h.shape(), act, h.device());
  grouped_linear_bwd(dh, dwd, dy, h, wd, p);
  swiglu_bwd(dg, du, dh, g, u);
}

void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& p, Stream) {
  check_plan_rows("moe_unpermute", "yp", yp, p);
  check_act("moe_unpermute", "yp", yp);
  check_shape("moe_unpermute", "out", out, {p.tokens, yp.size(1)});
  check_shape("moe_unpermute", "topk_w", topk_w, {p.tokens, p.top_k});
  // On the GPU the experts' outputs may be bf16 under f32 activations (out and the weights f32).
  DSEEK_CHECK((out.dtype() == yp.dtype() || gpu_bf16_operand(out, yp)) && topk_w.dtype() == out.dtype(),
              "moe_unpermute: mixed dtypes");
  switch (yp.device()) {
    case Device::CPU:
      return cpu::moe_unpermute(out, yp, topk_w, p);
    case Device::CUDA:
      return cuda::moe_unpermute(out, yp, topk_w, p);
    default:
      fail("moe_unpermute: no implementation for ", device_name(yp.device()));
  }
}

void moe_unpermute_bwd(Tensor dyp, Tensor dtopk_w, const Tensor& dout, const Tensor& yp, const Tensor& topk_w,
                       const MoePlan& p, Stream) {
  check_plan_rows("moe_unpermute_bwd", "yp", yp, p);
  check_act("moe_unpermute_bwd", "yp", yp);
  check_shape("moe_unpermute_bwd", "dyp", dyp, yp.shape());
  check_shape("moe_unpermute_bwd", "dout", dout, {p.tokens, yp.size(1)});
  check_shape("moe_unpermute_bwd", "topk_w", topk_w, {p.tokens, p.top_k});
  check_shape("moe_unpermute_bwd", "dtopk_w", dtopk_w, {p.tokens, p.top_k});
  // dyp may be bf16 on the GPU under f32 rows: only the down projection's bf16 backward reads it.
  // On the GPU under f32 activations (dout, the weights and their gradient) yp may be bf16 (kept as the
  // experts wrote it) and dyp bf16 (only the down projection's bf16 backward reads it).
  const bool gpu_f32 = yp.device() == Device::CUDA && dout.dtype() == DType::F32;
  auto ok = [&](const Tensor& t) {
    return t.dtype() == dout.dtype() || (gpu_f32 && t.dtype() == DType::BF16);
  };
  DSEEK_CHECK(topk_w.dtype() == dout.dtype() && dtopk_w.dtype() == dout.dtype() && ok(yp) && ok(dyp),
              "moe_unpermute_bwd: mixed dtypes (dyp ", dtype_name(dyp.dtype()), ", yp ",
              dtype_name(yp.dtype()), ")");
  switch (yp.device()) {
    case Device::CPU:
      return cpu::moe_unpermute_bwd(dyp, dtopk_w, dout, yp, topk_w, p);
    case Device::CUDA:
      return cuda::moe_unpermute_bwd(dyp, dtopk_w, dout, yp, topk_w, p);
    default:
      fail("moe_unpermute_bwd: no implementation for ", device_name(yp.device()));
  }
}

int64_t check_expert_call(const char* op, const Tensor& out, const Tensor& x, const Tensor& topk_idx,
                          const Tensor& topk_w, const std::vector<Tensor>& gate,
                          const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                          const SharedExpert& shared) {
  check_ndim(op, "x", x, 2);
  check_ndim(op, "topk_idx", topk_idx, 2);
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size());
  check_shape(op, "topk_idx", topk_idx, {N, K});
  if (topk_w.defined()) {  // undefined: a call without weights (moe_experts_slots)
    check_shape(op, "topk_w", topk_w, {N, K});
    check_dtype(op, "topk_w", topk_w, {DType::F32});
  }
  if (out.defined()) {  // undefined: a call whose output has another shape (moe_experts_slots)
    check_shape(op, "out", out, {N, D});
    check_dtype(op, "out", out, {DType::F32});
  }
  check_dtype(op, "topk_idx", topk_idx, {DType::I32});
  check_dtype(op, "x", x, {DType::F32});
  DSEEK_CHECK(E > 0 && up.size() == gate.size() && down.size() == gate.size(), op, ": ", gate.size(),
              " gate, ", up.size(), " up and ", down.size(), " down matrices");
  const int64_t F = gate[0].size(0);
  for (int64_t e = 0; e < E; ++e) {
    check_shape(op, "gate", gate[size_t(e)], {F, D});
    check_shape(op, "up", up[size_t(e)], {F, D});
    check_shape(op, "down", down[size_t(e)], {D, F});
  }
  check_same_device(op, {&out, &x, &topk_idx, &topk_w, &gate[0]});
  if (shared.gate.defined() || shared.up.defined() || shared.down.defined()) {
    DSEEK_CHECK(shared.gate.defined() && shared.up.defined() && shared.down.defined(), op,
                ": the shared expert needs its gate, up and down matrices");
    const int64_t Fs = shared.gate.size(0);
    check_shape(op, "shared gate", shared.gate, {Fs, D});
    check_shape(op, "shared up", shared.up, {Fs, D});
    check_shape(op, "shared down", shared.down, {D, Fs});
    check_same_device(op, {&x, &shared.gate, &shared.up, &shared.down});
  }
  return F;
}

bool moe_experts_grouped_applies(const Tensor& x, const std::vector<Tensor>& gate,
                                 const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                                 const SharedExpert& shared) {
  if (x.device() == Device::CPU) return true;
  if (!cuda::moe_experts_grouped_applies(x, gate) || up.size() != gate.size() || down.size() != gate.size())
    return false;
  std::vector<const Tensor*> mats;
  for (const auto* list : {&gate, &up, &down})
    for (const Tensor& t : *list) mats.push_back(&t);
  if (shared.defined()) {
    if (shared.gate.shape() != gate[0].shape() || shared.up.shape() != gate[0].shape() ||
        shared.down.shape() != down[0].shape())
      return false;
    for (const Tensor* t : {&shared.gate, &shared.up, &shared.down}) mats.push_back(t);
  }
  for (const Tensor* t : mats)
    if (t->dtype() != DType::BF16 || t->block_scale() || t->device() != Device::CUDA ||
        (reinterpret_cast<uintptr_t>(t->raw()) & 15) != 0)
      return false;
  return true;
}

void moe_experts_grouped(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                         const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                         const std::vector<Tensor>& down, const SharedExpert& shared) {
  const char* op = "moe_experts_grouped";
  const int64_t F = check_expert_call(op, out, x, topk_idx, topk_w, gate, up, down, shared);
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size());
  if (N == 0) return;
  if (x.device() == Device::CUDA) {
    DSEEK_CHECK(K < 32, op, ": the GPU version takes at most 31 experts per token, not ", K);
    DSEEK_CHECK(moe_experts_grouped_applies(x, gate, up, down, shared), op,
                ": the GPU version takes f32 activations with D % 8 == 0 and 16-byte aligned bf16 experts "
                "(F % 8 == 0, at most 1023 of them, a shared expert of their shape)");
    return cuda::moe_experts_grouped(out, x, topk_idx, topk_w, gate, up, down, shared);
  }
  // The CPU reference: the plan-based ops (permute, paired gate/up products, SwiGLU, down, un-permute),
  // then the shared expert's MLP added.
  const MoePlan plan = MoePlan::build(topk_idx, E);  // checks every id
  const int64_t M = N * K;
  Tensor xp = Tensor::empty({M, D}, x.dtype()), g = Tensor::empty({M, F}, x.dtype()),
         u = Tensor::empty({M, F}, x.dtype());  // xp: [M, D]; g, u: [M, F]
  moe_permute(xp, x, plan);
  grouped_linear_pair(g, u, xp, gate, up, plan);
  swiglu_fwd(g, g, u);
  Tensor yp = Tensor::empty({M, D}, x.dtype());  // yp: [M, D]
  grouped_linear(yp, g, down, plan);
  moe_unpermute(out, yp, topk_w, plan);
  if (shared.defined()) {
    Tensor sh = Tensor::empty({N, shared.gate.size(0)}, x.dtype()),
           sy = Tensor::empty({N, D}, x.dtype());  // sh: [N, Fs] silu(g)·u; sy: [N, D]
    linear_swiglu(sh, x, shared.gate, shared.up);
    linear(sy, sh, shared.down);
    add_(out, sy);
  }
}

}  // namespace dseek::ops
