// trainer.h — `dseek train`: the pretraining loop on the CPU (issue: training on the CPU). Model from a
// config.json, a model directory or a preset; data from token shards; AdamW with clipping and gradient
// accumulation under a warmup-cosine or warmup-stable-decay schedule; multi-token prediction; the
// auxiliary-loss-free bias update and the optional sequence-wise balance loss; evaluation, checkpoints
// (HF-loadable directories plus optimizer and trainer state, written atomically, the last K kept),
// exact resume, a progress line, a JSONL metrics log and an SVG loss curve beside the checkpoints.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/optimizer.h"
#include "train/schedule.h"

namespace dseek::train {

struct TrainConfig {
  std::string model;      // a config.json, a model directory (its weights are the start), or a preset name
  std::string data;       // directory made by `dseek data prepare`
  std::string tokenizer;  // directory with tokenizer.json (copied into checkpoints; used for the sample)
  std::string out = "runs/train";
  int64_t seq_len = 256, batch_size = 8, grad_accum = 1, steps = 1000;
  Schedule schedule;
  OptimizerConfig optim;
  double mtp_lambda = 0.3;           // used when the model has MTP modules
  double balance_alpha = -1;         // < 0: the model config's aux_loss_alpha when seq_aux, else 0
  double bias_update_speed = 0.001;  // γ of the aux-loss-free bias update (0: off)
  int64_t eval_every = 100, eval_batches = 8, save_every = 100, keep_last = 2, log_every = 10;
  uint64_t seed = 0;
  bool recompute = false;
  std::string device = "cpu";  // where the step runs: "cpu" or "cuda" (checkpoints are the same)
  std::string dtype = "f32";   // compute dtype of the products: "f32", or "bf16" (cuda; f32 masters)
  std::string sample_prompt;   // text (with a tokenizer) for the sample printed at the end
  int64_t sample_tokens = 64;

  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& j, const std::string& what);
  void validate() const;
};

// The model config of a named preset ("demo": the main job's small DeepSeek-V3-style model, "tiny").
nlohmann::json preset_model_config(const std::string& name, int64_t vocab_size, int64_t bos_id,
                                   int64_t eos_id);

struct TextCodec {  // optional: how the sample at the end is tokenized and printed
  std::function<std::vector<int64_t>(const std::string&)> encode;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  int64_t bos = -1;
};

struct TrainSummary {
  int64_t steps_done = 0;
  double first_loss = 0, last_loss = 0, last_val_loss = -1;
  std::string last_checkpoint;
};

// Runs (or resumes, when `resume` names a checkpoint or run directory) the training. `stop_after` > 0
// ends this run after that step (saving a checkpoint) without changing the schedule, which spans `steps`.
TrainSummary run_training(TrainConfig cfg, const std::string& resume,
                          const std::vector<std::string>& overridden, const TextCodec& codec,
                          int64_t stop_after = 0);

// The auxiliary-loss-free update (spec/model.md §4.4): bias_i += γ · sign(mean load − load_i).
void update_router_bias(Tensor& bias, const std::vector<int64_t>& load, double gamma);

// The newest complete checkpoint directory under a run directory ("" when none).
std::string latest_checkpoint(const std::string& run_dir);

}  // namespace dseek::train
