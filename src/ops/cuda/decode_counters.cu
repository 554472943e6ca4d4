// decode_counters.cu — arrival counters for the one-launch decode kernels whose blocks first compute parts
// in parallel and whose last arriving block (per row) finishes the row (ops/decode_impl.h; issue 5: one
// launch per op of a decode step). The counters live in device memory, one zeroed set per device and host
// thread (each thread has its own default stream, so steps of two threads never share a set); every
// kernel leaves its counters at zero again, so graph replays find them ready.
// Also the DSEEK_PDL switch read by launch_dep (ops/cuda/common.cuh): programmatic dependent launch of the
// decode kernels, on unless set to 0.
#include <cstdlib>
#include <cstring>
#include <map>

#include "ops/cuda/common.cuh"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

bool dep_launch_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSEEK_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

int* arrival_counters() {
  thread_local std::map<int, int*> per_device;
  int dev = 0;
  DSEEK_CUDA_CHECK(cudaGetDevice(&dev), "arrival_counters (cudaGetDevice)");
  int*& p = per_device[dev];
  if (!p) {  // the first (eager) decode step allocates them, before any capture
    DSEEK_CUDA_CHECK(cudaMalloc(&p, kArrivalCounters * sizeof(int)), "arrival_counters (cudaMalloc)");
    DSEEK_CUDA_CHECK(cudaMemsetAsync(p, 0, kArrivalCounters * sizeof(int), cudaStreamPerThread),
                     "arrival_counters (cudaMemsetAsync)");
  }
  return p;
}

}  // namespace dseek::ops::cuda
