// train_cpu_bench.cpp — CPU training throughput (tokens/s) of a full step (forward, backward, AdamW) on
// a model config, with random tokens. The PyTorch side of the comparison is tools/torch_train_bench.py;
// scripts/bench-train-cpu runs both on the same CPU threads and prints the ratio.
//
//   train_cpu_bench [--config PATH | --preset demo] [--batch B] [--seq T] [--steps N] [--mtp-lambda X]
//                   [--threads N] [--vocab V] [--device cpu|cuda] [--dtype f32|bf16] [--moments f32|bf16]
//                   [--recompute 0|1]
// With --device cuda the same step runs on the GPU (issue 6; scripts/bench-train-gpu), timed with a
// device synchronisation at the end of each step, and the peak device memory is printed; --dtype bf16
// computes with bf16 copies of the f32 master weights (train/compute_copy.h), as `dseek train --dtype bf16`;
// --moments bf16 keeps AdamW's moments in bf16 (DeepSeek-V3's recipe; `dseek train --moments bf16`);
// --recompute 1 rebuilds RMSNorm outputs, MLA up-projections and the experts' inputs and gate/up products in
// the backward (`dseek train --recompute`).
//   DSEEK_PROFILE=1 also prints the mean time per step of each phase (src/core/profile.h);
//   DSEEK_CUDA_PROFILE=1 the synchronized per-op times of the timed steps (src/core/device.h).
#include <omp.h>

#include "core/blas_env.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include "core/device.h"
#include "core/parallel.h"
#include "core/profile.h"
#include "model/model.h"
#include "train/compute_copy.h"
#include "train/optimizer.h"
#include "train/trainer.h"

extern "C" char* openblas_get_corename();
extern "C" char* openblas_get_config();

using namespace dseek;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  dseek::ensure_blas_kernels(argv);
  std::string config, preset = "demo";
  int64_t B = 8, T = 256, steps = 10, vocab = 1024;
  double mtp_lambda = 0.0;
  std::string device = "cpu", dtype = "f32", moments = "f32";
  bool recompute = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--config")
      config = v;
    else if (k == "--preset")
      preset = v;
    else if (k == "--batch")
      B = std::stoll(v);
    else if (k == "--seq")
      T = std::stoll(v);
    else if (k == "--steps")
      steps = std::stoll(v);
    else if (k == "--mtp-lambda")
      mtp_lambda = std::stod(v);
    else if (k == "--vocab")
      vocab = std::stoll(v);
    else if (k == "--device")
      device = v;
    else if (k == "--dtype")
      dtype = v;
    else if (k == "--moments")
      moments = v;
    else if (k == "--recompute")
      recompute = v == "1";
    else if (k == "--threads")
      omp_set_num_threads(std::stoi(v));
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  try {
    ModelConfig cfg = config.empty()
                          ? ModelConfig::from_json(train::preset_model_config(preset, vocab, 0, 1), preset)
                          : ModelConfig::load(config);
    Model m = Model::from_weights(cfg, init_weights(cfg, DType::F32, 1, true));
    DSEEK_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda");
    const Device dev = device == "cuda" ? Device::CUDA : Device::CPU;
    if (dev == Device::CUDA) m.to(Device::CUDA, DType::F32);
    DSEEK_CHECK(dtype == "f32" || dtype == "bf16", "--dtype must be f32 or bf16");
    train::ComputeCopy compute(m, dtype == "bf16" ? DType::BF16 : DType::F32);
    DSEEK_CHECK(moments == "f32" || moments == "bf16", "--moments must be f32 or bf16");
    train::AdamW opt(m.w, cfg, {.moments = moments == "bf16" ? DType::BF16 : DType::F32});
    Weights g = zero_grads(m.w, cfg, DType::F32, dev);  // zeroed before each step (zero_grads_)
    std::mt19937 rng(1);
    Tensor ids = Tensor::empty({B, T}, DType::I64), tg = Tensor::empty({B, T}, DType::I64);
    std::vector<double> times, t_zero, t_fb, t_opt;  // whole step and its three parts
    for (int64_t s = 0; s < steps + 2; ++s) {
      for (int64_t i = 0; i < B * T; ++i) {
        ids.data<int64_t>()[i] = int64_t(rng() % uint32_t(cfg.vocab_size));
        tg.data<int64_t>()[i] = int64_t(rng() % uint32_t(cfg.vocab_size));
      }
      if (s == 2) {  // phase totals (and DSEEK_CUDA_PROFILE's per-op times) count the timed steps only
        prof::reset();
        cuda_profile_reset();
      }
      auto t0 = clk::now();
      zero_grads_(g);
      auto t1 = clk::now();
      compute.model().forward_backward(ids, tg, {.mtp_lambda = mtp_lambda, .recompute = recompute}, &g);
      auto t2 = clk::now();
      opt.step(g, 1e-4, &compute);  // and the bf16 copies, in the same pass on the GPU
      if (dev == Device::CUDA) device_synchronize();
      auto t3 = clk::now();
      if (s >= 2) {
        auto sec = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
        times.push_back(sec(t0, t3));
        t_zero.push_back(sec(t0, t1));
        t_fb.push_back(sec(t1, t2));
        t_opt.push_back(sec(t2, t3));
      }
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double med = median(times);
    ParamCounts pc = count_params(cfg);
    std::printf(
        "dseek train step: %s, %.2f M params, %s, %s moments, batch %lld x %lld, %d threads, MTP %s: median "
        "%.3f s/step, %.0f tokens/s\n",
        config.empty() ? preset.c_str() : config.c_str(), double(pc.total) / 1e6, dtype.c_str(),
        moments.c_str(), (long long)B, (long long)T, num_threads(), mtp_lambda > 0 ? "on" : "off", med,
        double(B * T) / med);
    if (prof::enabled()) {  // DSEEK_PROFILE=1: mean time per step of each phase of forward+backward
      std::printf("phases (mean per step):\n");
      prof::report(stdout, double(steps));
    }
    std::printf("parts (medians): zero grads %.1f ms, forward+backward %.1f ms, AdamW %.1f ms\n",
                1e3 * median(t_zero), 1e3 * median(t_fb), 1e3 * median(t_opt));
    std::printf("openblas: %s (%s)\n", openblas_get_corename(), openblas_get_config());
    std::printf("DSEEK_TOKENS_PER_SECOND %.1f\n", double(B * T) / med);
    if (dev == Device::CUDA) {  // model FLOPs as the trainer counts them
      const double fpt = train_flops_per_token(cfg, T);
      std::printf("on %s: peak device memory %.1f GB, MFU %.2f %% of 989 TFLOP/s\n",
                  cuda_device_name().c_str(), double(device_bytes_peak()) / 1e9,
                  100.0 * fpt * double(B * T) / med / 989e12);
      std::printf("DSEEK_PEAK_GB %.2f\n", double(device_bytes_peak()) / 1e9);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_cpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
