// profile.h — optional wall-clock totals per phase of the training step, for benchmarks
// (bench/train_cpu_bench prints them when DSEEK_PROFILE=1). Off by default: a scope then costs one
// predictable branch. Phases nest (the attention core inside the MLA backward, say); each total is the
// time spent inside its own scopes, whatever else they contain. Not thread-safe: open scopes only from
// the thread that drives the step (the OpenMP threads run inside the ops).
#pragma once

#include <chrono>
#include <cstdio>

namespace dseek::prof {

enum Phase {
  kLayerFwd,     // decoder layers forward (all of what follows up to kMoeFwd, plus norms and residuals)
  kMlaFwd,       //   MLA forward: projections, norms, RoPE, decompression, attention, o_proj
  kAttnCoreFwd,  //     of which the causal attention itself
  kMlpFwd,       //   dense SwiGLU MLP forward
  kMoeFwd,       //   DeepSeekMoE forward: router, permute, grouped experts, shared expert
  kLmHead,       // final norm, LM head and cross-entropy (forward and backward)
  kLayerBwd,     // decoder layers backward
  kMoeBwd,       //   DeepSeekMoE backward
  kMlpBwd,       //   dense MLP backward
  kMlaBwd,       //   MLA backward
  kAttnCoreBwd,  //     of which the causal attention itself
  kEmbedding,    // embedding forward and backward
  kPhases
};

bool enabled();
void add(Phase p, double seconds);
// Prints every phase's total divided by `steps`, in ms, and clears the totals.
void report(std::FILE* f, double steps);
void reset();

class Scope {
 public:
  explicit Scope(Phase p) : p_(p), on_(enabled()) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  ~Scope() {
    if (on_) add(p_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Phase p_;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace dseek::prof
