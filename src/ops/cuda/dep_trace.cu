// dep_trace.cu — the host side of the decode-step tracer (ops/dep_trace.h): the registry of every
// translation unit's device buffer descriptor (common.cuh declares one per unit, as units are compiled
// without relocatable device code), the device buffer, and launch_dep's op names.
#include <mutex>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/dep_trace.h"

namespace dseek::ops {

namespace cuda {

namespace {
struct Registry {
  std::mutex mu;
  std::vector<void (*)(const DepTraceBuf&)> setters;
  std::vector<std::string> names;
  bool on = false;
  DepTraceBuf buf{};
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void dep_trace_register(void (*set)(const DepTraceBuf&)) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  r.setters.push_back(set);
}

void dep_trace_name(const char* op) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  if (r.on) r.names.emplace_back(op);
}

}  // namespace cuda

bool dep_trace_available() {
#ifdef DSEEK_DEP_TRACE
  return true;
#else
  return false;
#endif
}

void dep_trace_begin(int64_t capacity) {
  DSEEK_CHECK(dep_trace_available(),
              "dep_trace: this build records nothing (configure with -DDSEEK_DEP_TRACE=ON)");
  DSEEK_CHECK(capacity > 0 && capacity < (int64_t(1) << 31), "dep_trace: capacity ", capacity);
  cuda::Registry& r = cuda::registry();
  std::lock_guard<std::mutex> g(r.mu);
  DSEEK_CHECK(!r.on, "dep_trace: already recording");
  DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), "dep_trace_begin");
  DSEEK_CUDA_CHECK(cudaMalloc(&r.buf.t, size_t(capacity) * sizeof(unsigned long long)), "dep_trace_begin");
  DSEEK_CUDA_CHECK(cudaMalloc(&r.buf.n, sizeof(unsigned int)), "dep_trace_begin");
  DSEEK_CUDA_CHECK(cudaMemset(r.buf.n, 0, sizeof(unsigned int)), "dep_trace_begin");
  r.buf.cap = unsigned(capacity);
  for (auto* set : r.setters) set(r.buf);
  r.names.clear();
  r.on = true;
}

DepTrace dep_trace_end() {
  cuda::Registry& r = cuda::registry();
  std::lock_guard<std::mutex> g(r.mu);
  DSEEK_CHECK(r.on, "dep_trace: not recording");
  DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), "dep_trace_end");
  unsigned int n = 0;
  DSEEK_CUDA_CHECK(cudaMemcpy(&n, r.buf.n, sizeof n, cudaMemcpyDeviceToHost), "dep_trace_end");
  DepTrace out;
  out.ns.resize(std::min(n, r.buf.cap));
  DSEEK_CUDA_CHECK(
      cudaMemcpy(out.ns.data(), r.buf.t, out.ns.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost),
      "dep_trace_end");
  const cuda::DepTraceBuf none{};
  for (auto* set : r.setters) set(none);
  DSEEK_CUDA_CHECK(cudaFree(r.buf.t), "dep_trace_end");
  DSEEK_CUDA_CHECK(cudaFree(r.buf.n), "dep_trace_end");
  r.buf = {};
  r.on = false;
  out.names = std::move(r.names);
  r.names.clear();
  return out;
}

}  // namespace dseek::ops
