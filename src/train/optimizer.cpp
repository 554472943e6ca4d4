// optimizer.cpp — AdamW with global-norm clipping and exact state save/load.
#include "train/optimizer.h"

#include <cmath>

#include "io/safetensors.h"

namespace dseek::train {

void OptimizerConfig::validate() const {
  DSEEK_CHECK(beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1) (got ", beta1, ")");
  DSEEK_CHECK(beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1) (got ", beta2, ")");
  DSEEK_CHECK(eps > 0, "eps must be positive");
  DSEEK_CHECK(weight_decay >= 0, "weight_decay must not be negative");
  DSEEK_CHECK(moments == DType::F32 || moments == DType::BF16, "optimizer moments must be f32 or bf16");
}

AdamW::AdamW(Weights& params, const ModelConfig& cfg, const OptimizerConfig& oc) : cfg_(cfg), oc_(oc) {
  oc_.validate();
  for (auto& r : param_table(params, cfg, params.has_mtp)) {
    if (!r.tensor->defined() || r.kind == ParamKind::Bias) continue;
    DSEEK_CHECK(r.tensor->dtype() == DType::F32, "AdamW: parameter ", r.name, " is ",
                dtype_name(r.tensor->dtype()), "; training keeps f32 master weights");
    const bool decay =
        r.kind == ParamKind::Matrix || r.kind == ParamKind::Embedding || r.kind == ParamKind::Router;
    slots_.push_back({r.name, r.tensor, Tensor::zeros(r.shape, oc_.moments, r.tensor->device()),
                      Tensor::zeros(r.shape, oc_.moments, r.tensor->device()), decay});
  }
}

StepStats AdamW::step(Weights& grads, double lr, ComputeCopy* compute) {
  auto gr = param_table(grads, cfg_, grads.has_mtp);
  std::vector<Tensor*> g;
  for (auto& r : gr)
    if (r.tensor->defined() && r.kind != ParamKind::Bias) g.push_back(r.tensor);
  DSEEK_CHECK(g.size() == slots_.size(), "AdamW: ", g.size(), " gradients for ", slots_.size(),
              " parameters");
  bool cpu = true;
  for (size_t i = 0; i < slots_.size(); ++i) {
    // checked here, before the parallel loops (an exception must not leave an OpenMP region)
    DSEEK_CHECK(g[i]->shape() == slots_[i].param->shape() && g[i]->dtype() == DType::F32, "AdamW: gradient ",
                slots_[i].name, " is ", g[i]->str(), ", expected f32 ", shape_str(slots_[i].param->shape()));
    cpu = cpu && slots_[i].param->device() == Device::CPU && g[i]->device() == Device::CPU;
  }
  if (!cpu) {  // off the CPU: one launch for all the norms, one for all the updates
    StepStats st;
    double ss = 0;
    for (double t : ops::sum_squares_many({g.begin(), g.end()})) ss += t;  // the tensors in order
    st.grad_norm = std::sqrt(ss);
    DSEEK_CHECK(std::isfinite(st.grad_norm), "AdamW: the gradient norm is not finite (", st.grad_norm, ")");
    if (oc_.clip_norm > 0 && st.grad_norm > oc_.clip_norm) st.clip = oc_.clip_norm / (st.grad_norm + 1e-6);
    ++step_;
    std::vector<Tensor*> ps, ms, vs;
    std::vector<double> decay;
    for (Slot& s : slots_) {
      ps.push_back(s.param);
      ms.push_back(&s.m);
      vs.push_back(&s.v);
      decay.push_back(s.decay ? oc_.weight_decay : 0.0);
    }
    const std::vector<Tensor*> copies = compute ? compute->copies_of(ps) : std::vector<Tensor*>{};
    ops::adamw_step_many(ps, {g.begin(), g.end()}, ms, vs, decay,
                         {.lr = lr,
                          .beta1 = oc_.beta1,
                          .beta2 = oc_.beta2,
                          .eps = oc_.eps,
                          .weight_decay = 0.0,
                          .step = step_,
                          .grad_scale = st.clip},
                         copies);
    if (compute) compute->refresh_except(copies);  // copies of tensors the optimizer does not move
    return st;
  }
  // On the CPU every tensor is cut into pieces of 2^16 elements and all pieces of all tensors share one
  // parallel loop: one fork/join for the norm and one for the update instead of one per tensor.
  // sum_squares sums 2^16-element blocks in order, so a tensor's sum is the same as in a single call.
  struct Piece {
    size_t slot;
    int64_t a, n;
  };
  std::vector<Piece> pieces;
  constexpr int64_t kPiece = int64_t(1) << 16;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const int64_t n = g[i]->numel();
    if (!cpu) {
      pieces.push_back({i, 0, n});
      continue;
    }
    for (int64_t a = 0; a < n; a += kPiece) pieces.push_back({i, a, std::min(kPiece, n - a)});
  }
  // part: elements [a, a + n) of the flat [numel] view of a tensor (the whole tensor off the CPU)
  auto part = [cpu](const Tensor& t, const Piece& pc) {
    return cpu ? t.view({t.numel()}).slice(pc.a, pc.n) : t;
  };
  std::vector<double> piece_ss(pieces.size(), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (cpu)
  for (size_t k = 0; k < pieces.size(); ++k)
    piece_ss[k] = ops::sum_squares(part(*g[pieces[k].slot], pieces[k]));
  double ss = 0;
  for (size_t k = 0; k < pieces.size();) {  // each tensor's pieces in order, then the tensors in order
    double t = 0;
    const size_t slot = pieces[k].slot;
    for (; k < pieces.size() && pieces[k].slot == slot; ++k) t += piece_ss[k];
    ss += t;
  }
  StepStats st;
  st.grad_norm = std::sqrt(ss);
  DSEEK_CHECK(std::isfinite(st.grad_norm), "AdamW: the gradient norm is not finite (", st.grad_norm, ")");
  if (oc_.clip_norm > 0 && st.grad_norm > oc_.clip_norm) st.clip = oc_.clip_norm / (st.grad_norm + 1e-6);
  ++step_;
#pragma omp parallel for schedule(dynamic, 1) if (cpu)
  for (size_t k = 0; k < pieces.size(); ++k) {
    const Piece& pc = pieces[k];
    Slot& s = slots_[pc.slot];
    ops::adamw_step(part(*s.param, pc), part(*g[pc.slot], pc), part(s.m, pc), part(s.v, pc),
                    {.lr = lr,
                     .beta1 = oc_.beta1,
                     .beta2 = oc_.beta2,
                     .eps = oc_.eps,
                     .weight_decay = s.decay ? oc_.weight_decay : 0.0,
                     .step = step_,
                     .grad_scale = st.clip});
  }
  if (compute) compute->refresh();
  return st;
}

void AdamW::save(const std::string& path) const {
  std::vector<io::NamedTensor> out;
  for (const Slot& s : slots_) {
    out.push_back({"m." + s.name, s.m.to(Device::CPU)});
    out.push_back({"v." + s.name, s.v.to(Device::CPU)});
  }
  io::write_safetensors(path, out, {{"format", "dseek-adamw"}, {"step", std::to_string(step_)}});
}

void AdamW::load(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  auto it = f->metadata().find("step");
  DSEEK_CHECK(it != f->metadata().end(), path, ": no \"step\" in the metadata");
  step_ = std::stoll(it->second);
  for (Slot& s : slots_) {
    for (auto [prefix, dst] : {std::pair{"m.", &s.m}, std::pair{"v.", &s.v}}) {
      const std::string n = prefix + s.name;
      const io::TensorInfo* info = f->find(n);
      DSEEK_CHECK(info, path, ": missing optimizer state \"", n, "\"");
      DSEEK_CHECK(info->shape == dst->shape(), path, ": \"", n, "\" has shape ", shape_str(info->shape),
                  ", expected ", shape_str(dst->shape()));
      // Converts (on the host) if the moments dtype changed between runs, then goes to the state's device.
      Tensor host = Tensor::empty(dst->shape(), dst->dtype());
      host.copy_from(f->get(n));
      dst->copy_from(host);
    }
  }
}

}  // namespace dseek::train
