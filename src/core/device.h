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

}  // namespace dseek
