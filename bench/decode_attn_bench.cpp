// decode_attn_bench.cpp — the absorbed-MLA decode kernel over the paged latent cache (ops::mla_decode_paged,
// spec/model.md §2.5) on the GPU: achieved GB/s of the cached rows it must read per step, next to the
// device-to-device copy bandwidth measured in the same run (issue 5: "the absorbed decode kernel's
// achieved GB/s next to the measured copy bandwidth"). For one case also the per-(row, head) baseline
// kernel (ops::mla_absorbed_fwd over a contiguous cache, which reads the rows once per head).
//
//   decode_attn_bench [--iters N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/device.h"
#include "ops/attention.h"
#include "ops/decode.h"

using namespace dseek;
using clk = std::chrono::steady_clock;

namespace {

template <typename Fn>
double seconds_per_call(int iters, Fn&& fn) {
  for (int i = 0; i < 3; ++i) fn();
  device_synchronize();
  auto t = clk::now();
  for (int i = 0; i < iters; ++i) fn();
  device_synchronize();
  return std::chrono::duration<double>(clk::now() - t).count() / iters;
}

struct Case {
  int64_t B, L, H, C, R;
  DType dt;
};

}  // namespace

int main(int argc, char** argv) {
  int iters = 50;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string(argv[i]) == "--iters") iters = std::stoi(argv[i + 1]);
  try {
    std::printf("on %s\n", cuda_device_name().c_str());
    const double copy_bw = bench::device_copy_bandwidth(size_t(2) << 30);
    std::printf("device copy bandwidth (read + write): %.1f GB/s\n\n", copy_bw / 1e9);
    std::printf(
        "| batch | context | heads | C + R | cache dtype | µs/step | rows read | GB/s | %% of copy |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    const std::vector<Case> cases = {
        {1, 4096, 16, 256, 32, DType::F32},   {32, 4096, 16, 256, 32, DType::F32},
        {128, 2048, 16, 256, 32, DType::F32}, {32, 4096, 16, 256, 32, DType::BF16},
        {1, 32768, 16, 256, 32, DType::BF16}, {32, 4096, 128, 512, 64, DType::BF16},
        {32, 256, 16, 256, 32, DType::F32},
    };
    for (const Case& c : cases) {
      const int64_t W = c.C + c.R, BS = ops::kCacheBlock, per = (c.L + BS - 1) / BS, NB = c.B * per;
      Tensor pool = Tensor::empty({NB, BS, W}, c.dt, Device::CUDA);  // pool: [NB, 64, W]
      pool.fill(0.01);
      std::vector<int32_t> order(static_cast<size_t>(NB));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(1));  // blocks scattered through the pool
      Tensor bt = Tensor::empty({c.B, per}, DType::I32), sl = Tensor::empty({c.B}, DType::I32);
      std::copy(order.begin(), order.end(), bt.data<int32_t>());
      for (int64_t b = 0; b < c.B; ++b) sl.data<int32_t>()[b] = int32_t(c.L);
      Tensor q = Tensor::empty({c.B, c.H, W}, c.dt, Device::CUDA),
             o = Tensor::empty({c.B, c.H, c.C}, c.dt, Device::CUDA);
      q.fill(0.02);
      const Tensor btg = bt.to(Device::CUDA), slg = sl.to(Device::CUDA);
      const double s =
          seconds_per_call(iters, [&] { ops::mla_decode_paged(o, q, pool, btg, slg, 0.07, c.L); });
      const double bytes = double(c.B * c.L * W) * double(dtype_size(c.dt));
      std::printf("| %lld | %lld | %lld | %lld | %s | %.1f | %.1f MB | %.1f | %.1f %% |\n", (long long)c.B,
                  (long long)c.L, (long long)c.H, (long long)W, dtype_name(c.dt), s * 1e6, bytes / 1e6,
                  bytes / s / 1e9, 100.0 * bytes / s / copy_bw);
    }
    {  // the baseline: one block per (row, head) over a contiguous cache of one sequence
      const int64_t L = 4096, H = 16, C = 256, W = 288;
      Tensor rows = Tensor::empty({L, W}, DType::F32, Device::CUDA),
             q = Tensor::empty({1, H, W}, DType::F32, Device::CUDA),
             o = Tensor::empty({1, H, C}, DType::F32, Device::CUDA);
      rows.fill(0.01);
      q.fill(0.02);
      const double s = seconds_per_call(iters, [&] { ops::mla_absorbed_fwd(o, q, rows, 0.07, L - 1); });
      const double bytes = double(L * W) * 4.0;
      std::printf(
          "\nbaseline mla_absorbed_fwd (per row and head, contiguous), batch 1, context %lld, f32: %.1f µs, "
          "%.1f GB/s of the rows it must read (%.1f %% of copy)\n",
          (long long)L, s * 1e6, bytes / s / 1e9, 100.0 * bytes / s / copy_bw);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decode_attn_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
