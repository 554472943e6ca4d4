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
    slots_.push_back(
        {r.name, r.tensor, Tensor::zeros(r.shape, oc_.moments), Tensor::zeros(r.shape, oc_.moments), decay});
  }
}

StepStats AdamW::step(Weights& grads, double lr) {
  auto gr = param_table(grads, cfg_, grads.has_mtp);
  std::vector<Tensor*> g;
  for (auto& r : gr)
    if (r.tensor->defined() && r.kind != ParamKind::Bias) g.push_back(r.tensor);
  DSEEK_CHECK(g.size() == slots_.size(), "AdamW: ", g.size(), " gradients for ", slots_.size(),
              " parameters");
  double ss = 0;
  for (Tensor* t : g) ss += ops::sum_squares(*t);
  StepStats st;
  st.grad_norm = std::sqrt(ss);
  DSEEK_CHECK(std::isfinite(st.grad_norm), "AdamW: the gradient norm is not finite (", st.grad_norm, ")");
  if (oc_.clip_norm > 0 && st.grad_norm > oc_.clip_norm) st.clip = oc_.clip_norm / (st.grad_norm + 1e-6);
  ++step_;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    ops::adamw_step(*s.param, *g[i], s.m, s.v,
                    {.lr = lr,
                     .beta1 = oc_.beta1,
                     .beta2 = oc_.beta2,
                     .eps = oc_.eps,
                     .weight_decay = s.decay ? oc_.weight_decay : 0.0,
                     .step = step_,
                     .grad_scale = st.clip});
  }
  return st;
}

void AdamW::save(const std::string& path) const {
  std::vector<io::NamedTensor> out;
  for (const Slot& s : slots_) {
    out.push_back({"m." + s.name, s.m});
    out.push_back({"v." + s.name, s.v});
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
      dst->copy_from(f->get(n));  // converts if the moments dtype changed between runs
    }
  }
}

}  // namespace dseek::train
