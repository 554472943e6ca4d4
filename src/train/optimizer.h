// optimizer.h — AdamW over a model's parameters (fp32 master weights; moments fp32 or bf16), with
// global-norm gradient clipping; no weight decay on norms, the router bias or 1-D parameters. Its
// state saves to and loads from `optimizer.safetensors` exactly (m.<name>, v.<name>, step).
#pragma once

#include <string>
#include <vector>

#include "model/weights.h"
#include "ops/adamw.h"
#include "train/compute_copy.h"

namespace dseek::train {

struct OptimizerConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double clip_norm = 1.0;      // ≤ 0: no clipping
  DType moments = DType::F32;  // F32 or BF16
  void validate() const;
};

struct StepStats {
  double grad_norm = 0;  // before clipping
  double clip = 1;       // factor applied
};

class AdamW {
 public:
  AdamW(Weights& params, const ModelConfig& cfg, const OptimizerConfig& oc);
  // One update with learning rate lr from grads (same layout as params, f32). Returns the gradient norm.
  // compute (optional): the step's compute copy, brought up to date with the new values (on the GPU in
  // the same pass as the update).
  StepStats step(Weights& grads, double lr, ComputeCopy* compute = nullptr);
  int64_t steps_taken() const { return step_; }
  void save(const std::string& path) const;  // atomic
  void load(const std::string& path);        // checks every tensor's presence and shape

 private:
  struct Slot {
    std::string name;
    Tensor* param;
    Tensor m, v;
    bool decay;
  };
  std::vector<Slot> slots_;
  const ModelConfig& cfg_;
  OptimizerConfig oc_;
  int64_t step_ = 0;
};

}  // namespace dseek::train
