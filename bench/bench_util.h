// bench_util.h — measurements shared by the benchmarks: the GPU's device-to-device copy bandwidth, the
// ceiling the decode figures are set against (docs/PERF.md).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>

#include "core/device.h"
#include "core/tensor.h"

namespace dseek::bench {

// Device-to-device copy bandwidth (bytes read + written per second), best of 8 copies of `bytes`.
inline double device_copy_bandwidth(size_t bytes) {
  using clk = std::chrono::steady_clock;
  Tensor a = Tensor::zeros({int64_t(bytes)}, DType::U8, Device::CUDA),
         b = Tensor::zeros({int64_t(bytes)}, DType::U8, Device::CUDA);
  double best = 0;
  for (int it = 0; it < 8; ++it) {
    device_synchronize();
    const auto t = clk::now();
    copy_bytes(b.raw(), Device::CUDA, a.raw(), Device::CUDA, bytes);
    device_synchronize();
    best = std::max(best, 2.0 * double(bytes) / std::chrono::duration<double>(clk::now() - t).count());
  }
  return best;
}

}  // namespace dseek::bench
