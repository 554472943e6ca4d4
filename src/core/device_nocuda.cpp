// device_nocuda.cpp — the device API of a build without CUDA: no devices, and a clear error when one is
// asked for.
#include "core/device.h"

#include <cstring>

namespace dseek {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  fail(what, ": this dseek was built without CUDA (rebuild on a machine with nvcc)");
}
}  // namespace

bool cuda_built() {
  return false;
}
int cuda_device_count() {
  return 0;
}
std::string cuda_device_name() {
  return "none";
}
std::shared_ptr<Storage> device_storage(size_t, Device) {
  no_cuda("device memory");
}
size_t device_bytes_reserved() {
  return 0;
}
size_t device_bytes_peak() {
  return 0;
}
void device_release_cache() {}
void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (dd != Device::CPU || sd != Device::CPU) no_cuda("copy to or from a device");
  std::memcpy(dst, src, n);
}
void device_memset(void*, int, size_t) {
  no_cuda("device memset");
}
void device_convert(void*, DType, const void*, DType, size_t) {
  no_cuda("device conversion");
}
void device_synchronize() {}
void cuda_profile_mark() {}
void cuda_profile_reset() {}

bool device_capturing() {
  return false;
}
struct DevicePool {};
DevicePool* device_pool_create() {
  no_cuda("device memory pool");
}
void device_pool_activate(DevicePool*) {}
void device_pool_destroy(DevicePool*) {}
DeviceGraph::~DeviceGraph() = default;
void DeviceGraph::begin_capture() {
  no_cuda("CUDA graph capture");
}
void DeviceGraph::end_capture() {
  no_cuda("CUDA graph capture");
}
void DeviceGraph::abort_capture() {}
int64_t DeviceGraph::kernels() const {
  return 0;
}
void DeviceGraph::replay() const {
  no_cuda("CUDA graph replay");
}

}  // namespace dseek
