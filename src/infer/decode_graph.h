// decode_graph.h — the greedy decode step on the GPU as CUDA graphs (DESIGN.md "CUDA graphs for
// decoding"; spec/serving.md). Per batch size and cache-length bucket (the block table's width, in steps
// of 8 blocks = 512 tokens) one graph captures Model::decode_logits and the device argmax. The graph reads
// the token ids, positions, cache slots, block tables and lengths from fixed device buffers that each step
// refills from the host, and writes the chosen ids to a fixed buffer: a step is a few small copies, one
// launch, and the ids coming back. The first step of a shape runs eagerly (filling the graph's private
// memory pool) and is captured right after. If a capture fails (an op of this model needs the host, e.g.
// the host-planned MoE of fp8 experts), the steps run eagerly and why_eager() says why.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace dseek::infer {

class DecodeGraphs {
 public:
  explicit DecodeGraphs(const Model& m);
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // One greedy step: tokens[i] is appended to sequence seqs[i] of `cache` (the model's paged cache).
  // Returns the next token of each sequence.
  std::vector<int64_t> step(const std::vector<int64_t>& tokens, const std::vector<int64_t>& seqs,
                            PagedLatentCache& cache);
  const Tensor& last_logits() const { return last_logits_; }  // [B, V] on the device (tests)
  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }
  int64_t kernels() const { return kernels_; }  // kernel launches in the last captured step
  const std::string& why_eager() const { return why_eager_; }

 private:
  struct Graph;
  const Model& m_;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Graph>> graphs_;
  Tensor last_logits_;
  int64_t captures_ = 0, replays_ = 0, kernels_ = 0;
  std::string why_eager_;  // non-empty: graphs are off
};

}  // namespace dseek::infer
