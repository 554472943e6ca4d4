// compute_copy.cpp — see compute_copy.h.
#include "train/compute_copy.h"

#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "ops/elementwise.h"

namespace dseek::train {

ComputeCopy::ComputeCopy(Model& master, DType dtype) : master_(master), dtype_(dtype) {
  DSEEK_CHECK(dtype == DType::F32 || dtype == DType::BF16, "training compute dtype must be f32 or bf16, not ",
              dtype_name(dtype));
  if (dtype == DType::F32) return;
  DSEEK_CHECK(master.device() == Device::CUDA,
              "bf16 training runs on the GPU (--device cuda); the CPU trains in f32");
  copy_ = std::make_unique<Model>(master);  // shares every tensor's storage with the master …
  copy_->to(master.device(), dtype);        // … until to() gives matrices and embeddings bf16 copies
  auto mt = param_table(master.w, master.cfg, master.w.has_mtp);
  auto ct = param_table(copy_->w, copy_->cfg, copy_->w.has_mtp);
  DSEEK_CHECK(mt.size() == ct.size(), "ComputeCopy: parameter tables differ");
  for (size_t i = 0; i < mt.size(); ++i) {
    if (!mt[i].tensor->defined()) continue;
    DSEEK_CHECK(mt[i].tensor->dtype() == DType::F32, "ComputeCopy: master ", mt[i].name, " is ",
                dtype_name(mt[i].tensor->dtype()), ", not f32");
    if (ct[i].tensor->raw() != mt[i].tensor->raw()) {
      copies_.push_back(ct[i].tensor);
      masters_.push_back(mt[i].tensor);
    }
  }
}

void ComputeCopy::refresh() {
  ops::cast_many(copies_, masters_);  // one launch for all of them, round to nearest even (none for f32)
}

std::vector<Tensor*> ComputeCopy::copies_of(const std::vector<Tensor*>& masters) const {
  std::unordered_map<const Tensor*, Tensor*> of;
  for (size_t i = 0; i < masters_.size(); ++i) of[masters_[i]] = copies_[i];
  std::vector<Tensor*> out;
  for (Tensor* m : masters) {
    auto it = of.find(m);
    out.push_back(it == of.end() ? nullptr : it->second);
  }
  return out;
}

void ComputeCopy::refresh_except(const std::vector<Tensor*>& done) {
  const std::unordered_set<const Tensor*> skip(done.begin(), done.end());
  std::vector<Tensor*> c;
  std::vector<const Tensor*> m;
  for (size_t i = 0; i < copies_.size(); ++i)
    if (!skip.count(copies_[i])) {
      c.push_back(copies_[i]);
      m.push_back(masters_[i]);
    }
  if (!c.empty()) ops::cast_many(c, m);
}

}  // namespace dseek::train
