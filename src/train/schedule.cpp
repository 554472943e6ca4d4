// schedule.cpp — warmup-cosine and warmup-stable-decay learning rates.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dseek::train {

void Schedule::validate() const {
  DSEEK_CHECK(kind == "cosine" || kind == "wsd" || kind == "constant", "schedule \"", kind,
              "\" is not one of cosine, wsd, constant");
  DSEEK_CHECK(lr > 0 && std::isfinite(lr), "lr must be positive (got ", lr, ")");
  DSEEK_CHECK(min_lr >= 0 && min_lr <= lr, "min_lr must be in [0, lr] (got ", min_lr, ")");
  DSEEK_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps, "warmup_steps must be in [0, steps] (got ",
              warmup_steps, ")");
  DSEEK_CHECK(total_steps >= 1, "steps must be at least 1");
  DSEEK_CHECK(decay_fraction > 0 && decay_fraction <= 1, "decay_fraction must be in (0, 1]");
}

double Schedule::at(int64_t step) const {
  if (step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  if (kind == "constant") return lr;
  auto cosine = [&](double t) {
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * std::clamp(t, 0.0, 1.0)));
  };
  if (kind == "cosine") {
    const int64_t span = std::max<int64_t>(total_steps - warmup_steps, 1);
    return cosine(double(step - warmup_steps) / double(span));
  }
  // wsd: stable until the decay phase, which takes the last decay_fraction of all steps.
  const int64_t decay_steps = std::max<int64_t>(int64_t(std::ceil(decay_fraction * double(total_steps))), 1);
  const int64_t decay_start = std::max(total_steps - decay_steps, warmup_steps);
  if (step < decay_start) return lr;
  return cosine(double(step - decay_start) / double(std::max<int64_t>(total_steps - decay_start, 1)));
}

}  // namespace dseek::train
