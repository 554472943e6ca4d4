// decode_graph.cpp — captured greedy decode steps (infer/decode_graph.h).
#include "infer/decode_graph.h"

#include "core/device.h"
#include "ops/decode.h"

namespace dseek::infer {

struct DecodeGraphs::Graph {
  int64_t B = 0, MB = 0;
  Tensor ids, pos, slots, bt, lens,
      out;        // fixed inputs [B] I64, [B] I64, [B] I32, [B, MB] I32, [B] I32; out [B] I64
  Tensor logits;  // [B, V] written by the graph (or the eager step)
  PagedStep step;
  DevicePool* pool = nullptr;
  DeviceGraph graph;
  ~Graph() {
    logits = Tensor();
    device_pool_destroy(pool);
  }
};

DecodeGraphs::DecodeGraphs(const Model& m) : m_(m) {
  DSEEK_CHECK(m.device() == Device::CUDA, "DecodeGraphs: the model is not on the GPU");
  // Block-scaled (fp8) experts take the host-planned MoE, whose device→host copy a capture cannot hold:
  // such a model decodes eagerly from the start (no capture attempted and abandoned).
  for (const LayerWeights& l : m.w.layers)
    if (l.is_moe && !l.moe.experts.empty() && l.moe.experts[0].gate_proj.block_scale()) {
      why_eager_ = "fp8 (block-scaled) experts: the MoE is planned on the host, which a graph cannot capture";
      break;
    }
}

DecodeGraphs::~DecodeGraphs() = default;

namespace {

template <typename T>
void upload(Tensor& dst, const std::vector<T>& v) {
  copy_bytes(dst.raw(), Device::CUDA, v.data(), Device::CPU, v.size() * sizeof(T));
}

}  // namespace

std::vector<int64_t> DecodeGraphs::step(const std::vector<int64_t>& tokens, const std::vector<int64_t>& seqs,
                                        PagedLatentCache& cache) {
  const int64_t B = int64_t(seqs.size()), V = m_.cfg.vocab_size;
  DSEEK_CHECK(B > 0 && tokens.size() == seqs.size(), "decode step: ", tokens.size(), " tokens for ",
              seqs.size(), " sequences");
  std::vector<int64_t> pos;
  std::vector<int32_t> slots, lens;
  int64_t need = 1;
  for (int64_t b = 0; b < B; ++b) {
    DSEEK_CHECK(tokens[size_t(b)] >= 0 && tokens[size_t(b)] < V, "decode step: token id ", tokens[size_t(b)],
                " is outside the vocabulary (", V, ")");
    const int64_t s = seqs[size_t(b)], p0 = cache.length(s);
    cache.reserve(s, p0 + 1);
    pos.push_back(p0);
    slots.push_back(cache.slot(s, p0));
    lens.push_back(int32_t(p0 + 1));
    need = std::max<int64_t>(need, int64_t(cache.blocks(s).size()));
  }
  const int64_t MB = (need + 7) / 8 * 8;  // the bucket: block-table width in steps of 8 blocks
  std::unique_ptr<Graph>& gp = graphs_[{B, MB}];
  if (!gp) {
    gp = std::make_unique<Graph>();
    Graph& g = *gp;
    g.B = B;
    g.MB = MB;
    g.ids = Tensor::empty({B}, DType::I64, Device::CUDA);
    g.pos = Tensor::empty({B}, DType::I64, Device::CUDA);
    g.slots = Tensor::empty({B}, DType::I32, Device::CUDA);
    g.bt = Tensor::empty({B, MB}, DType::I32, Device::CUDA);  // bt: [B, MB] padded with block 0
    g.lens = Tensor::empty({B}, DType::I32, Device::CUDA);
    g.out = Tensor::empty({B}, DType::I64, Device::CUDA);
    g.step.cache = &cache;
    g.step.slots = g.slots;
    g.step.decode = true;
    g.step.block_table = g.bt;
    g.step.seq_lens = g.lens;
    g.step.max_len = MB * PagedLatentCache::kBlock;
  }
  Graph& g = *gp;
  DSEEK_CHECK(g.step.cache == &cache, "decode step: one DecodeGraphs serves one paged cache");
  std::vector<int32_t> table(size_t(B * MB), 0);
  for (int64_t b = 0; b < B; ++b) {
    const auto& bl = cache.blocks(seqs[size_t(b)]);
    std::copy(bl.begin(), bl.end(), table.begin() + b * MB);
  }
  upload(g.ids, tokens);
  upload(g.pos, pos);
  upload(g.slots, slots);
  upload(g.bt, table);
  upload(g.lens, lens);
  auto body = [&] {
    g.logits = m_.decode_logits(g.ids, g.pos, g.step);
    ops::argmax_rows(g.out, g.logits);
  };
  if (!g.graph.ready() && why_eager_.empty()) {
    // First step of this shape: run it eagerly with the graph's pool active (so the pool holds every block
    // the step needs), let go of its result, capture the same step from that pool, then replay the
    // graph for this step's result (re-running a step is harmless: it rewrites the same cache rows).
    if (!g.pool) g.pool = device_pool_create();
    device_pool_activate(g.pool);
    try {
      body();
      g.logits = Tensor();
      g.graph.begin_capture();
      try {
        body();
        g.graph.end_capture();
        ++captures_;
        kernels_ = g.graph.kernels();
      } catch (const std::exception& e) {
        g.graph.abort_capture();
        g.logits = Tensor();
        why_eager_ = e.what();
      }
    } catch (...) {
      device_pool_activate(nullptr);
      throw;
    }
    device_pool_activate(nullptr);
  }
  if (g.graph.ready()) {
    g.graph.replay();  // writes g.logits (the block captured) and g.out
    ++replays_;
  } else {
    body();
  }
  last_logits_ = g.logits;
  std::vector<int64_t> next(static_cast<size_t>(B));
  copy_bytes(next.data(), Device::CPU, g.out.raw(), Device::CUDA, size_t(B) * 8);
  for (int64_t b = 0; b < B; ++b) cache.set_length(seqs[size_t(b)], lens[size_t(b)]);
  return next;
}

}  // namespace dseek::infer
