// prefill_gpu_bench.cpp — prefill speed on bench-1b (random bf16 weights): B prompts of L tokens each go
// through the model in one pass, filling one latent cache per prompt and producing each prompt's
// last-token logits (what a server's prefill does). Prints tokens/s, the median of several runs; the
// transformers side is tools/torch_prefill_bench.py, run beside it by scripts/bench-prefill-gpu.
//
//   prefill_gpu_bench [--config PATH] [--batch B] [--seq L] [--iters N] [--device cuda|cpu]
#include "core/blas_env.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/parallel.h"
#include "model/model.h"

using namespace dseek;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  dseek::ensure_blas_kernels(argv);
  std::string config = std::string(DSEEK_BENCH_CONFIGS) + "/bench-1b.json", device = "cuda";
  int64_t B = 8, L = 2048, iters = 5;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "prefill_gpu_bench: %s needs a value\n", k.c_str());
      return 2;
    }
    const std::string v = argv[i + 1];
    if (k == "--config") {
      config = v;
    } else if (k == "--batch") {
      B = std::stoll(v);
    } else if (k == "--seq") {
      L = std::stoll(v);
    } else if (k == "--iters") {
      iters = std::stoll(v);
    } else if (k == "--device") {
      device = v;
    } else {
      std::fprintf(stderr, "prefill_gpu_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  try {
    DSEEK_CHECK(B > 0 && L > 0 && iters > 0, "--batch, --seq and --iters must be positive");
    DSEEK_CHECK(device == "cuda" || device == "cpu", "--device must be cuda or cpu, not ", device);
    ModelConfig cfg = ModelConfig::load(config);
    Model m = Model::from_weights(cfg, init_weights(cfg, DType::BF16, 1234, /*with_mtp=*/false));
    if (device == "cuda") {
      m.to(Device::CUDA, DType::BF16);
      std::printf("on %s\n", cuda_device_name().c_str());
    }
    std::vector<std::vector<int64_t>> seqs(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < L; ++t)
        seqs[size_t(b)].push_back((b * 104729 + t * 7919 + 17) % cfg.vocab_size);
    std::vector<double> times;
    for (int64_t it = 0; it < iters + 1; ++it) {  // the first run warms up (algorithm choices, allocator)
      std::vector<LatentCache> caches;
      for (int64_t b = 0; b < B; ++b) caches.push_back(m.make_cache(L));
      std::vector<LatentCache*> cp;
      for (auto& c : caches) cp.push_back(&c);
      device_synchronize();
      cuda_profile_mark();
      const auto t0 = clk::now();
      Tensor logits = m.forward_cached_batch(seqs, cp);
      device_synchronize();
      const double s = std::chrono::duration<double>(clk::now() - t0).count();
      DSEEK_CHECK(logits.size(0) == B, "logits rows");
      if (it > 0) times.push_back(s);
    }
    std::sort(times.begin(), times.end());
    const double med = times[times.size() / 2];
    std::printf(
        "dseek prefill: batch %lld x %lld tokens, median of %lld: %.2f ms (%.0f tokens/s), peak device "
        "memory %.2f GB\n",
        (long long)B, (long long)L, (long long)iters, med * 1e3, double(B * L) / med,
        double(device_bytes_peak()) / 1e9);
    std::printf("DSEEK_PREFILL_TOKENS_PER_SECOND %.1f\n", double(B * L) / med);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefill_gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
