// engine.h — the inference engine (DESIGN.md infer/: "the one way to generate"): several prompts of any
// lengths generated together over one paged latent cache (spec/serving.md): one batched prefill, then
// decode steps of one token for every running sequence; a sequence leaves the batch (and frees its
// cache blocks) at EOS or at its token budget. Greedy choice runs on the device, so a greedy step brings
// back only token ids; sampling brings the logits to the host.
#pragma once

#include <functional>
#include <vector>

#include "infer/generate.h"
#include "model/model.h"

namespace dseek::infer {

class Engine {
 public:
  // cuda_graphs: greedy decode steps on the GPU replay CUDA graphs (infer/decode_graph.h); the
  // environment variable DSEEK_CUDA_GRAPHS=0 turns them off too.
  explicit Engine(const Model& m, bool cuda_graphs = true) : m_(m), graphs_(cuda_graphs) {}

  // Every prompt with the same options; result i belongs to prompt i. Each sequence samples with its own
  // Sampler seeded by opt.sampling.seed, so a prompt gives the same tokens alone or in a batch.
  // on_token (optional) sees (prompt index, token) as tokens are chosen.
  std::vector<GenerateResult> generate(const std::vector<std::vector<int64_t>>& prompts,
                                       const GenerateOptions& opt,
                                       const std::function<void(size_t, int64_t)>& on_token = nullptr);

 private:
  const Model& m_;
  bool graphs_;
};

}  // namespace dseek::infer
