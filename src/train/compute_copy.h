// compute_copy.h — the model the training step computes with (issue 6: bf16 training with fp32 master
// weights; spec/fp8.md §1 mixed precision, the bf16 part): with compute dtype f32 the master model itself;
// with bf16 a second Model whose matrices and embeddings are bf16 copies of the f32 masters, while norms,
// routers and router biases are the masters' own tensors (shared storage, so the load-balancing bias
// update reaches both). The products then take bf16 operands and accumulate in f32 (ops::linear,
// grouped_linear, lm_head_cross_entropy and their backwards), gradients accumulate into f32 tensors
// shaped like the masters, AdamW updates the masters, and refresh() rewrites the bf16 copies.
#pragma once

#include <memory>
#include <vector>

#include "model/model.h"

namespace dseek::train {

class ComputeCopy {
 public:
  // master: the f32 model (stays the caller's; must outlive this). dtype: F32 or BF16 (BF16 on CUDA only).
  ComputeCopy(Model& master, DType dtype);
  const Model& model() const { return copy_ ? *copy_ : master_; }
  DType dtype() const { return dtype_; }
  // After the optimizer moved the masters: the bf16 copies from them (no-op for f32).
  void refresh();
  // The bf16 copy of each of these masters (null where a master has none: shared tensors, or f32), for an
  // optimizer that writes them as it updates the masters (AdamW::step on the GPU).
  std::vector<Tensor*> copies_of(const std::vector<Tensor*>& masters) const;
  // refresh() for the copies not in `done`.
  void refresh_except(const std::vector<Tensor*>& done);

 private:
  Model& master_;
  DType dtype_;
  std::unique_ptr<Model> copy_;
  std::vector<Tensor*> copies_;         // the bf16 copies …
  std::vector<const Tensor*> masters_;  // … of these f32 masters, pairwise
};

}  // namespace dseek::train
