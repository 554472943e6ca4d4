// decode_cpu_bench.cpp — decode speed on bench-1b (random bf16 weights) next to the memory-bandwidth
// bound for the bytes each token must read, measured with a copy loop in the same run (issue: foundation,
// "a benchmark (not a test)"). Prints one table and the ratio. With --device cuda the same model runs on
// the GPU and the bound uses the device's copy bandwidth (the transformers side is
// tools/torch_decode_bench.py, run beside it by scripts/bench-decode-gpu).
//
// --path paged (the default) runs the inference engine's step: Model::forward_paged over the paged
// latent cache with the greedy choice on the device, for --batch sequences at once; --path cached is the
// one-sequence contiguous-cache loop (the first GPU baseline).
//
//   decode_cpu_bench [--config PATH] [--prompt N] [--tokens N] [--threads N] [--device cpu|cuda]
//                    [--batch N] [--path paged|cached] [--graphs 0|1] [--trace 0|1]
// --trace 1 (GPU, CUDA graphs, a build configured with -DDSEEK_DEP_TRACE=ON) also prints each decode
// kernel's share of the step's critical path in the real overlapped run (ops/dep_trace.h).
#include <omp.h>

#include "core/blas_env.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/device.h"
#include "core/parallel.h"
#include "infer/decode_graph.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "ops/decode.h"
#include "ops/dep_trace.h"

using namespace dseek;
using clk = std::chrono::steady_clock;

namespace {

double seconds_since(clk::time_point t) {
  return std::chrono::duration<double>(clk::now() - t).count();
}

// Best of several multi-threaded copies of `bytes` (counted as bytes read + bytes written per second).
double copy_bandwidth(size_t bytes) {
  std::vector<char> a(bytes), b(bytes);
  parallel_for(int64_t(bytes), 1 << 20, [&](int64_t s, int64_t e) {
    std::memset(a.data() + s, 1, size_t(e - s));
    std::memset(b.data() + s, 2, size_t(e - s));
  });
  double best = 0;
  for (int it = 0; it < 6; ++it) {
    auto t = clk::now();
    parallel_for(int64_t(bytes), 1 << 20,
                 [&](int64_t s, int64_t e) { std::memcpy(b.data() + s, a.data() + s, size_t(e - s)); });
    best = std::max(best, 2.0 * double(bytes) / seconds_since(t));
  }
  return best;
}

// Best of several multi-threaded read-only passes (sum of 64-bit words), bytes read per second.
double read_bandwidth(size_t bytes) {
  std::vector<uint64_t> a(bytes / 8, 3);
  double best = 0;
  volatile uint64_t sink = 0;
  for (int it = 0; it < 6; ++it) {
    auto t = clk::now();
    uint64_t total = 0;
#pragma omp parallel for reduction(+ : total)
    for (int64_t i = 0; i < int64_t(a.size()); ++i) total += a[size_t(i)];
    best = std::max(best, double(bytes) / seconds_since(t));
    sink = sink + total;
  }
  return best;
}

size_t bytes_of(const Tensor& t) {
  return t.defined() ? t.nbytes() : 0;
}
size_t mlp_bytes(const MlpWeights& m) {
  return bytes_of(m.gate_proj) + bytes_of(m.up_proj) + bytes_of(m.down_proj);
}

// Weight bytes one decode step reads: every attention and dense weight, the router, num_experts_per_tok
// routed experts and the shared expert per MoE layer, the LM head, one embedding row; plus the cache.
size_t bytes_per_token(const Model& m, int64_t cached_tokens) {
  const ModelConfig& c = m.cfg;
  size_t b = size_t(c.hidden_size) * dtype_size(m.w.embed_tokens.dtype()) + bytes_of(m.w.norm) +
             bytes_of(m.lm_head());
  for (const auto& L : m.w.layers) {
    const auto& a = L.attn;
    b += bytes_of(L.input_layernorm) + bytes_of(L.post_attention_layernorm);
    b += bytes_of(a.q_a_proj) + bytes_of(a.q_a_layernorm) + bytes_of(a.q_b_proj) + bytes_of(a.q_proj) +
         bytes_of(a.kv_a_proj_with_mqa) + bytes_of(a.kv_a_layernorm) + bytes_of(a.kv_b_proj) +
         bytes_of(a.o_proj);
    if (L.is_moe) {
      b += bytes_of(L.moe.gate) + bytes_of(L.moe.e_score_correction_bias) + mlp_bytes(L.moe.shared);
      b += size_t(c.num_experts_per_tok) * mlp_bytes(L.moe.experts[0]);
    } else {
      b += mlp_bytes(L.mlp);
    }
  }
  b += size_t(cached_tokens) * size_t(c.cache_width()) * 4 * size_t(c.num_hidden_layers);
  return b;
}

}  // namespace

// --trace 1 (a build with -DDSEEK_DEP_TRACE=ON): each decode kernel's part of the step's critical path in
// the real, overlapped run (ops/dep_trace.h): the gap from its dependency wait's return to the next
// kernel's, per op name, over the replayed steps (the eager first step and its capture recorded the names).
void print_dep_trace(const ops::DepTrace& t) {
  const size_t L = t.names.size();
  size_t N = L;  // one step's launches: the shortest period of the name list
  for (size_t p = 1; p <= L; ++p) {
    if (L % p != 0) continue;
    bool ok = true;
    for (size_t i = p; i < L && ok; ++i) ok = t.names[i] == t.names[i % p];
    if (ok) {
      N = p;
      break;
    }
  }
  if (N == 0 || t.ns.size() % N != 0 || t.ns.size() < 2 * N) {
    std::printf("trace: %zu stamps do not divide into steps of %zu launches\n", t.ns.size(), N);
    return;
  }
  const size_t steps = t.ns.size() / N - 1;  // the first (eager) step left out
  struct Row {
    double ns = 0;
    size_t n = 0;
  };
  std::map<std::string, Row> rows;
  double span = 0;
  for (size_t s = 1; s <= steps; ++s) {
    const uint64_t* st = t.ns.data() + s * N;
    for (size_t i = 0; i + 1 < N; ++i) {
      Row& r = rows[t.names[i]];
      r.ns += double(st[i + 1] - st[i]);
      ++r.n;
    }
    span += double(st[N - 1] - st[0]);
  }
  std::vector<std::pair<std::string, Row>> v(rows.begin(), rows.end());
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::printf(
      "\ndecode step timeline (%zu replayed steps, %zu launches each; the last launch, %s, ends the "
      "step and is not timed):\n| op | launches per step | mean us after its wait | us per step |\n"
      "|---|---|---|---|\n",
      steps, N, t.names[N - 1].c_str());
  for (const auto& [name, r] : v)
    std::printf("| %s | %.1f | %.2f | %.1f |\n", name.c_str(), double(r.n) / double(steps),
                r.ns / double(r.n) / 1e3, r.ns / double(steps) / 1e3);
  std::printf("first wait to last wait: %.1f us per step\n", span / double(steps) / 1e3);
}

int main(int argc, char** argv) {
  dseek::ensure_blas_kernels(argv);
  std::string config = std::string(DSEEK_BENCH_CONFIGS) + "/bench-1b.json";
  int64_t prompt_len = 32, tokens = 64;
  std::string device = "cpu", path = "paged";
  int64_t batch = 1;
  bool graphs = true, trace = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--config")
      config = argv[i + 1];
    else if (k == "--prompt")
      prompt_len = std::stoll(argv[i + 1]);
    else if (k == "--tokens")
      tokens = std::stoll(argv[i + 1]);
    else if (k == "--device")
      device = argv[i + 1];
    else if (k == "--path")
      path = argv[i + 1];
    else if (k == "--batch")
      batch = std::stoll(argv[i + 1]);
    else if (k == "--graphs")
      graphs = std::string(argv[i + 1]) != "0";
    else if (k == "--trace")
      trace = std::string(argv[i + 1]) != "0";
    else if (k == "--threads")
      omp_set_num_threads(std::stoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  try {
    ModelConfig cfg = ModelConfig::load(config);
    std::printf("config %s, %d threads\n", config.c_str(), num_threads());
    auto t0 = clk::now();
    Model m = Model::from_weights(cfg, init_weights(cfg, DType::BF16, 1234, /*with_mtp=*/false));
    std::printf("random bf16 weights in %.1f s\n", seconds_since(t0));
    const bool gpu = device == "cuda";
    double copy_bw, read_bw;
    if (gpu) {
      m.to(Device::CUDA, DType::BF16);
      copy_bw = bench::device_copy_bandwidth(size_t(2) << 30);
      read_bw = copy_bw;
      std::printf("on %s\n", cuda_device_name().c_str());
    } else {
      copy_bw = copy_bandwidth(size_t(1) << 30);
      read_bw = read_bandwidth(size_t(1) << 30);
    }

    std::vector<int64_t> prompt(static_cast<size_t>(prompt_len));
    for (int64_t i = 0; i < prompt_len; ++i) prompt[size_t(i)] = (i * 7919 + 17) % cfg.vocab_size;
    double prefill_s = 0, decode_s = 0;
    int64_t cached_mid = 0;
    if (path == "cached") {
      if (batch != 1) throw std::runtime_error("--path cached runs batch 1 only");
      LatentCache cache = m.make_cache(prompt_len + tokens + 8);
      infer::Sampler greedy({.greedy = true});
      auto tp = clk::now();
      Tensor logits = m.forward_cached(prompt, cache);
      prefill_s = seconds_since(tp);
      int64_t tok = greedy.sample(logits.data<float>(), cfg.vocab_size);
      for (int w = 0; w < 3; ++w) {  // warm-up steps
        logits = m.forward_cached({tok}, cache);
        tok = greedy.sample(logits.data<float>(), cfg.vocab_size);
      }
      cached_mid = cache.length() + tokens / 2;
      auto td = clk::now();
      for (int64_t i = 0; i < tokens; ++i) {
        logits = m.forward_cached({tok}, cache);
        tok = greedy.sample(logits.data<float>(), cfg.vocab_size);
      }
      decode_s = seconds_since(td);
    } else if (path == "paged") {
      // `batch` sequences (prompts differ by a shift of the ids), one batched prefill, then decode steps
      // of one token per sequence with the greedy choice on the device (only ids come back).
      PagedLatentCache pc = m.make_paged_cache(batch * ((prompt_len + tokens + 8 + 63) / 64));
      std::vector<std::vector<int64_t>> toks;
      std::vector<int64_t> seqs;
      for (int64_t b = 0; b < batch; ++b) {
        std::vector<int64_t> p = prompt;
        for (auto& id : p) id = (id + b * 101) % cfg.vocab_size;
        toks.push_back(p);
        seqs.push_back(pc.add_sequence());
      }
      Tensor ids = Tensor::empty({batch}, DType::I64, m.device());
      std::unique_ptr<infer::DecodeGraphs> dg;
      auto step = [&] {
        if (dg) {  // decode steps as CUDA graph replays
          std::vector<int64_t> flat;
          for (const auto& t : toks) flat.push_back(t[0]);
          const std::vector<int64_t> next = dg->step(flat, seqs, pc);
          for (int64_t b = 0; b < batch; ++b) toks[size_t(b)] = {next[size_t(b)]};
          return;
        }
        Tensor logits = m.forward_paged(toks, seqs, pc);
        ops::argmax_rows(ids, logits);
        Tensor h = ids.to(Device::CPU);
        for (int64_t b = 0; b < batch; ++b) toks[size_t(b)] = {h.data<int64_t>()[b]};
      };
      auto tp = clk::now();
      step();
      prefill_s = seconds_since(tp);
      if (gpu && graphs) dg = std::make_unique<infer::DecodeGraphs>(m);
      if (trace) {
        if (!dg) throw std::runtime_error("--trace 1 needs --device cuda with CUDA graphs");
        ops::dep_trace_begin();
      }
      for (int w = 0; w < 3; ++w) step();  // warm-up steps
      cached_mid = pc.length(seqs[0]) + tokens / 2;
      auto td = clk::now();
      for (int64_t i = 0; i < tokens; ++i) step();
      decode_s = seconds_since(td);
      if (trace) print_dep_trace(ops::dep_trace_end());
      if (dg)
        std::printf("CUDA graphs: %lld captured, %lld replays, %lld kernels per step%s%s\n",
                    (long long)dg->captures(), (long long)dg->replays(), (long long)dg->kernels(),
                    dg->why_eager().empty() ? "" : "; eager because: ", dg->why_eager().c_str());
    } else {
      throw std::runtime_error("--path must be paged or cached, not " + path);
    }
    const double tps = double(batch * tokens) / decode_s;
    const size_t bpt = bytes_per_token(m, cached_mid);
    const double bound = copy_bw / double(bpt);
    std::printf("\n| figure | value |\n|---|---|\n");
    std::printf("| bytes read per decoded token (weights + cache) | %.1f MB |\n", double(bpt) / 1e6);
    std::printf("| copy bandwidth (read + write) | %.2f GB/s |\n", copy_bw / 1e9);
    std::printf("| read-only bandwidth | %.2f GB/s |\n", read_bw / 1e9);
    std::printf("| bound: copy bandwidth / bytes per token | %.2f tokens/s |\n", bound);
    std::printf("| prefill %lld x %lld tokens | %.3f s (%.1f tokens/s) |\n", (long long)batch,
                (long long)prompt_len, prefill_s, double(batch * prompt_len) / prefill_s);
    std::printf("| decode batch %lld (%s), %lld steps | %.2f tokens/s |\n", (long long)batch, path.c_str(),
                (long long)tokens, tps);
    std::printf("DSEEK_DECODE_TOKENS_PER_SECOND %.2f\n", tps);
    if (batch == 1) {  // the bound is per token of one sequence (a batch shares the weight reads)
      std::printf("| achieved bandwidth | %.2f GB/s |\n", tps * double(bpt) / 1e9);
      std::printf("\nRATIO decode / bandwidth bound = %.1f %% (goal >= 60 %%); vs read-only bound %.1f %%\n",
                  100.0 * tps / bound, 100.0 * tps * double(bpt) / read_bw);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode_cpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
