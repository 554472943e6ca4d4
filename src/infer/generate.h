// generate.h — generation of one prompt (through infer::Engine, engine.h): prefill the prompt, then
// decode one token at a time until EOS or the token budget.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace dseek::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int64_t> ids;   // new tokens (EOS included when it ended the run)
  std::string finish_reason;  // "stop" (EOS) or "length"
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_token (optional) sees each new token as it is chosen.
GenerateResult generate(const Model& m, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int64_t)>& on_token = nullptr);

}  // namespace dseek::infer
