// device.h — device memory for tensors (DESIGN.md core/): plain cudaMalloc arenas (no managed memory),
// copies between host and device, and dtype conversion on the device. Implemented in core/cuda/ when
// built with CUDA, else by core/device_nocuda.cpp, whose functions say so.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/tensor.h"

namespace dseek {

bool cuda_built();        // compiled with the CUDA backend
int cuda_device_count();  // 0 when not built or no device
std::string cuda_device_name();

// Device memory from a caching allocator (blocks return to it when the last tensor lets go).
std::shared_ptr<Storage> device_storage(size_t bytes, Device d);
// Bytes of device memory the allocator holds (in use + cached), and the high-water mark.
size_t device_bytes_reserved();
size_t device_bytes_peak();
void device_release_cache();

// Copies between any two of host and device, in the order of the device's work. They return when the
// source may be reused: small host → device copies are staged in pinned memory and finish asynchronously
// (no stream synchronisation); copies to the host wait for the device.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n);
void device_memset(void* p, int value, size_t n);
// dst[i] = src[i] converted, both on the device (float dtypes: f32, f64, bf16, f16, f8).
void device_convert(void* dst, DType dt, const void* src, DType st, size_t n);
void device_synchronize();
// With DSEEK_CUDA_PROFILE set, per-op times are kept (stderr table at exit); this restarts the clock so
// that host work before a timed region is not charged to the next op. No-op otherwise.
void cuda_profile_mark();
// Clears the per-op times kept so far (a benchmark's warm-up steps) and restarts the clock.
void cuda_profile_reset();

// CUDA graphs for the decode step (DESIGN.md). Device work runs on the calling thread's default stream
// (nvcc --default-stream per-thread), which can be captured; copies between device buffers are ordered
// on that stream (copies to or from the host wait for it).
bool device_capturing();  // the calling thread's stream is being captured into a graph

// Graph-private device memory: while a pool is active on the calling thread, allocations come from it
// and those blocks return to it when freed, so memory that a captured graph uses is never handed to
// other tensors between replays.
struct DevicePool;
DevicePool* device_pool_create();
void device_pool_activate(DevicePool* pool);  // nullptr: the shared cache again
void device_pool_destroy(DevicePool* pool);   // its cached blocks are freed; blocks still in use go
                                              // back to the shared cache when their tensors let go

// Device work captured once and replayed with one launch (core/cuda/graph.cu).
class DeviceGraph {
 public:
  DeviceGraph() = default;
  ~DeviceGraph();
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;
  void begin_capture();
  // Ends the capture and instantiates the graph; throws (keeping nothing) when the capture failed, e.g.
  // because a captured op synchronised with the host.
  void end_capture();
  void abort_capture();  // after an exception between begin and end: ends it, drops what was captured
  void replay() const;
  bool ready() const { return exec_ != nullptr; }
  int64_t kernels() const;  // kernel nodes of the captured graph (0 before a capture)

 private:
  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

}  // namespace dseek
