// engine.cpp — batched generation over the paged latent cache (infer/engine.h).
#include "infer/engine.h"

#include <algorithm>
#include <chrono>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "infer/decode_graph.h"
#include "ops/decode.h"
#include "ops/sample.h"

namespace dseek::infer {

std::vector<GenerateResult> Engine::generate(const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerateOptions& opt,
                                             const std::function<void(size_t, int64_t)>& on_token) {
  DSEEK_CHECK(!prompts.empty(), "generate: no prompts");
  DSEEK_CHECK(opt.max_new_tokens >= 0, "generate: --max-new-tokens must be ≥ 0");
  const int64_t V = m_.cfg.vocab_size;
  for (const auto& p : prompts) {
    DSEEK_CHECK(!p.empty(), "generate: the prompt is empty");
    for (int64_t id : p)
      DSEEK_CHECK(id >= 0 && id < V, "prompt token id ", id, " is outside the vocabulary (", V, ")");
  }
  const size_t B = prompts.size();
  std::vector<GenerateResult> res(B);
  for (auto& r : res) r.finish_reason = "length";
  if (opt.max_new_tokens == 0) return res;
  opt.sampling.validate();
  const bool greedy = opt.sampling.greedy || opt.sampling.temperature <= 0;
  std::vector<Sampler> samplers(B, Sampler(opt.sampling));
  // Room for every sequence's prompt and budget, in blocks of 64 rows.
  int64_t blocks = 0;
  for (const auto& p : prompts)
    blocks +=
        (int64_t(p.size()) + opt.max_new_tokens + PagedLatentCache::kBlock - 1) / PagedLatentCache::kBlock;
  PagedLatentCache cache = m_.make_paged_cache(blocks);
  std::vector<int64_t> seq(B), active(B);
  for (size_t i = 0; i < B; ++i) {
    seq[i] = cache.add_sequence();
    active[i] = int64_t(i);
  }
  const auto& eos = m_.cfg.eos_token_ids;
  // Chooses the next token of each active sequence from logits [A, V] (device).
  auto choose = [&](const Tensor& logits) {
    const int64_t A = logits.size(0);
    std::vector<int64_t> tok(static_cast<size_t>(A));
    if (greedy) {
      Tensor ids = Tensor::empty({A}, DType::I64, logits.device());
      ops::argmax_rows(ids, logits);
      Tensor h = ids.to(Device::CPU);
      std::copy(h.data<int64_t>(), h.data<int64_t>() + A, tok.begin());
    } else if (logits.device() == Device::CUDA) {
      // Sampling on the device: each sequence's uniform drawn here (its stream, as on the CPU), only ids
      // come back; a row the device cannot decide (ops/sample.h) is sampled here with the same uniform.
      Tensor u = Tensor::empty({A}, DType::F64);
      for (int64_t a = 0; a < A; ++a) u.data<double>()[a] = samplers[size_t(active[size_t(a)])].draw();
      const Tensor lf = logits.dtype() == DType::F32 ? logits : logits.to(DType::F32);
      Tensor ids = Tensor::empty({A}, DType::I64, Device::CUDA),
             fb = Tensor::empty({A}, DType::I32, Device::CUDA);
      ops::sample_rows(ids, fb, lf, u.to(Device::CUDA), samplers[0].rule());
      const Tensor hi = ids.to(Device::CPU), hf = fb.to(Device::CPU);
      for (int64_t a = 0; a < A; ++a) {
        tok[size_t(a)] = hi.data<int64_t>()[a];
        if (hf.data<int32_t>()[a] != 0) {
          const Tensor row = lf.slice(a, 1).to(Device::CPU);
          tok[size_t(a)] = ops::sample_row(row.data<float>(), V, samplers[0].rule(), u.data<double>()[a]);
        }
      }
    } else {
      Tensor h = logits.to(DType::F32).to(Device::CPU);
      for (int64_t a = 0; a < A; ++a)
        tok[size_t(a)] = samplers[size_t(active[size_t(a)])].sample(h.data<float>() + a * V, V);
    }
    return tok;
  };
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  std::vector<std::vector<int64_t>> step_tokens(prompts.begin(), prompts.end());
  std::vector<int64_t> step_seqs = seq;
  Tensor logits = m_.forward_paged(step_tokens, step_seqs, cache);
  std::vector<int64_t> tok = choose(logits);
  const double prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
  const char* env = std::getenv("DSEEK_CUDA_GRAPHS");
  std::unique_ptr<DecodeGraphs> graphs;
  if (greedy && graphs_ && m_.device() == Device::CUDA && !(env && std::strcmp(env, "0") == 0))
    graphs = std::make_unique<DecodeGraphs>(m_);
  auto t1 = clock::now();
  while (true) {
    // Record the chosen tokens; sequences that end leave the batch.
    std::vector<int64_t> still;
    step_tokens.clear();
    step_seqs.clear();
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t i = size_t(active[a]);
      res[i].ids.push_back(tok[a]);
      if (on_token) on_token(i, tok[a]);
      bool done = int64_t(res[i].ids.size()) >= opt.max_new_tokens;
      if (opt.stop_at_eos && std::find(eos.begin(), eos.end(), tok[a]) != eos.end()) {
        res[i].finish_reason = "stop";
        done = true;
      }
      if (done) {
        cache.release(seq[i]);
        continue;
      }
      still.push_back(int64_t(i));
      step_tokens.push_back({tok[a]});
      step_seqs.push_back(seq[i]);
    }
    active = still;
    if (active.empty()) break;
    if (graphs) {
      std::vector<int64_t> flat;
      for (const auto& t : step_tokens) flat.push_back(t[0]);
      tok = graphs->step(flat, step_seqs, cache);
    } else {
      logits = m_.forward_paged(step_tokens, step_seqs, cache);
      tok = choose(logits);
    }
  }
  const double decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  for (auto& r : res) {
    r.prefill_seconds = prefill_s;
    r.decode_seconds = decode_s;
  }
  return res;
}

}  // namespace dseek::infer
