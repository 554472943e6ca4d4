// schedule.h — learning-rate schedules: warmup-cosine, and warmup-stable-decay (DeepSeek-V3 §4.2:
// linear warmup, a long constant phase, then a decay to the final rate).
#pragma once

#include <cstdint>
#include <string>

namespace dseek::train {

struct Schedule {
  std::string kind = "cosine";  // "cosine" | "wsd" | "constant"
  double lr = 3e-4;             // peak
  double min_lr = 3e-5;         // final
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double decay_fraction = 0.2;  // wsd: the last fraction of the steps decays (cosine) to min_lr

  void validate() const;  // throws naming the field
  // The rate for 0-based step `step` (the step about to be taken).
  double at(int64_t step) const;
};

}  // namespace dseek::train
