// device.cu — CUDA device memory (a caching allocator over plain cudaMalloc), copies and dtype
// conversion on the device (core/device.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/device.h"

namespace dseek {

namespace {

// DSEEK_CUDA_PROFILE set: every checked launch synchronizes, and the wall time since the previous check
// (the op's kernels plus the host work that prepared them) is added to the op's row; the table goes to
// stderr at exit. A diagnostic for finding where a forward spends its time (the device has no nsys).
struct OpProfile {
  using clock = std::chrono::steady_clock;
  struct Row {
    double seconds = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Row> rows;
  clock::time_point last = clock::now();
  std::mutex mu;
  void add(const char* what) {
    std::lock_guard<std::mutex> g(mu);
    const auto now = clock::now();
    Row& r = rows[what];
    r.seconds += std::chrono::duration<double>(now - last).count();
    r.calls += 1;
    last = now;
  }
  ~OpProfile() {
    std::vector<std::pair<double, std::string>> order;
    double total = 0;
    for (const auto& [k, r] : rows) {
      order.push_back({r.seconds, k});
      total += r.seconds;
    }
    std::sort(order.rbegin(), order.rend());
    std::fprintf(stderr, "\nCUDA op profile (synchronized; %.3f s in all)\n%-34s %10s %8s %7s\n", total, "op",
                 "ms", "calls", "share");
    for (const auto& [sec, k] : order)
      std::fprintf(stderr, "%-34s %10.3f %8lld %6.1f%%\n", k.c_str(), sec * 1e3, (long long)rows[k].calls,
                   100.0 * sec / std::max(total, 1e-12));
  }
};
OpProfile* op_profile() {
  static OpProfile* p = std::getenv("DSEEK_CUDA_PROFILE") ? new OpProfile() : nullptr;
  static const bool registered = p && std::atexit([] { delete op_profile(); }) == 0;
  (void)registered;
  return p;
}

}  // namespace

void cuda_launch_check(const char* what) {
  DSEEK_CUDA_CHECK(cudaGetLastError(), what);
  static const bool sync = std::getenv("DSEEK_CUDA_SYNC_CHECK") != nullptr;
  if (sync) DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), what);
  if (OpProfile* p = op_profile()) {
    DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), what);
    p->add(what);
  }
}

void cuda_profile_mark() {
  if (OpProfile* p = op_profile()) {
    DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), "cuda_profile_mark");
    p->last = OpProfile::clock::now();
  }
}

void cuda_profile_reset() {
  if (OpProfile* p = op_profile()) {
    DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), "cuda_profile_reset");
    std::lock_guard<std::mutex> g(p->mu);
    p->rows.clear();
    p->last = OpProfile::clock::now();
  }
}

bool cuda_built() {
  return true;
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string cuda_device_name() {
  cudaDeviceProp p;
  if (cuda_device_count() == 0 || cudaGetDeviceProperties(&p, 0) != cudaSuccess) return "none";
  return p.name;
}

}  // namespace dseek

struct dseek::DevicePool {
  std::multimap<size_t, void*> free;  // the pool's cached blocks by size
};

namespace dseek {

namespace {

thread_local DevicePool* active_pool = nullptr;

// Blocks are rounded up to 512 B (small) or 2 MiB (large) and kept in free lists by size after use: the
// shared list, or the list of the graph pool that was active when the block was first allocated.
class CachingAllocator {
 public:
  void* alloc(size_t bytes) {
    const size_t sz = round(bytes);
    DevicePool* pool = active_pool;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto& fl = pool ? pool->free : free_;
      auto it = fl.lower_bound(sz);
      if (it != fl.end() && it->first <= sz * 2) {
        void* p = it->second;
        in_use_ += it->first;
        sizes_[p] = {it->first, pool};
        fl.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, sz);
    if (e != cudaSuccess) {
      cudaGetLastError();
      cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(cudaStreamPerThread, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone)
        fail("device allocation of ", bytes,
             " bytes inside a CUDA graph capture (the graph's pool lacks it)");
      release();  // give cached blocks back and try once more
      DSEEK_CUDA_CHECK(cudaMalloc(&p, sz), str_cat("device allocation of ", bytes, " bytes"));
    }
    std::lock_guard<std::mutex> g(mu_);
    sizes_[p] = {sz, pool};
    in_use_ += sz;
    reserved_ += sz;
    peak_ = std::max(peak_, reserved_);
    return p;
  }
  void free(void* p) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    in_use_ -= it->second.size;
    (it->second.pool ? it->second.pool->free : free_).emplace(it->second.size, p);
    sizes_.erase(it);
  }
  void destroy(DevicePool* pool) {
    std::lock_guard<std::mutex> g(mu_);
    cudaStreamSynchronize(cudaStreamPerThread);
    for (auto& [sz, p] : pool->free) {
      cudaFree(p);
      reserved_ -= sz;
    }
    for (auto& [p, b] : sizes_)
      if (b.pool == pool) b.pool = nullptr;
    delete pool;
  }
  void release() {
    std::lock_guard<std::mutex> g(mu_);
    cudaDeviceSynchronize();
    for (auto& [sz, p] : free_) {
      cudaFree(p);
      reserved_ -= sz;
    }
    free_.clear();
  }
  size_t reserved() const { return reserved_; }
  size_t peak() const { return peak_; }

 private:
  static size_t round(size_t b) {
    if (b <= (size_t(1) << 20)) return std::max<size_t>((b + 511) / 512 * 512, 512);
    const size_t m = size_t(2) << 20;
    return (b + m - 1) / m * m;
  }
  struct Block {
    size_t size;
    DevicePool* pool;  // the graph pool it returns to, or null
  };
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  std::map<void*, Block> sizes_;
  size_t in_use_ = 0, reserved_ = 0, peak_ = 0;
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();  // never destroyed: outlives every tensor
  return *a;
}

class CudaStorage : public Storage {
 public:
  CudaStorage(void* p, size_t n) : Storage(p, n, Device::CUDA) {}
  ~CudaStorage() override { allocator().free(data_); }
};

template <typename D, typename S>
__device__ __forceinline__ D cast_one(S s) {
  return D(float(s));
}
template <>
__device__ __forceinline__ double cast_one<double, double>(double s) {
  return s;
}
template <>
__device__ __forceinline__ double cast_one<double, float>(float s) {
  return double(s);
}
template <>
__device__ __forceinline__ float cast_one<float, double>(double s) {
  return float(s);
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = cast_one<D, S>(src[i]);
}

// 8 elements per thread and step: 16-byte loads and stores for 2- and 4-byte types (the f32 ↔ bf16/f16
// casts of activations around the products), the same values as convert_kernel. dst, src 16-byte
// aligned; n8 groups of 8.
template <typename D, typename S>
__global__ void convert8_kernel(D* __restrict__ dst, const S* __restrict__ src, size_t n8) {
  static_assert((sizeof(S) == 2 || sizeof(S) == 4) && (sizeof(D) == 2 || sizeof(D) == 4));
  constexpr int kIn = sizeof(S) / 2, kOut = sizeof(D) / 2;  // 16-byte words per 8 elements
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n8;
       i += size_t(gridDim.x) * blockDim.x) {
    uint4 in[kIn], out[kOut];
#pragma unroll
    for (int j = 0; j < kIn; ++j) in[j] = reinterpret_cast<const uint4*>(src)[i * kIn + j];
    const S* se = reinterpret_cast<const S*>(in);
    D* de = reinterpret_cast<D*>(out);
#pragma unroll
    for (int k = 0; k < 8; ++k) de[k] = cast_one<D, S>(se[k]);
#pragma unroll
    for (int j = 0; j < kOut; ++j) reinterpret_cast<uint4*>(dst)[i * kOut + j] = out[j];
  }
}

template <typename D, typename S>
void launch_convert(D* dst, const S* src, size_t n) {
  const int threads = 256;
  size_t done = 0;
  if constexpr ((sizeof(S) == 2 || sizeof(S) == 4) && (sizeof(D) == 2 || sizeof(D) == 4)) {
    if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0 && n >= 8) {
      const size_t n8 = n / 8;
      const int blocks = int(std::min<size_t>((n8 + threads - 1) / threads, 65535));
      convert8_kernel<<<blocks, threads>>>(dst, src, n8);
      done = n8 * 8;
    }
  }
  if (done < n) {
    const int blocks = int(std::min<size_t>((n - done + threads - 1) / threads, 65535));
    convert_kernel<<<blocks, threads>>>(dst + done, src + done, n - done);
  }
}

template <typename S>
void convert_from(void* dst, DType dt, const S* src, size_t n) {
  const int threads = 256;
  const int blocks = int(std::min<size_t>((n + threads - 1) / threads, 65535));
  switch (dt) {
    case DType::F32:
      launch_convert(static_cast<float*>(dst), src, n);
      break;
    case DType::F64:
      convert_kernel<<<blocks, threads>>>(static_cast<double*>(dst), src, n);
      break;
    case DType::BF16:
      launch_convert(static_cast<__nv_bfloat16*>(dst), src, n);
      break;
    case DType::F16:
      launch_convert(static_cast<__half*>(dst), src, n);
      break;
    case DType::F8E4M3:
      convert_kernel<<<blocks, threads>>>(static_cast<__nv_fp8_e4m3*>(dst), src, n);
      break;
    case DType::F8E5M2:
      convert_kernel<<<blocks, threads>>>(static_cast<__nv_fp8_e5m2*>(dst), src, n);
      break;
    default:
      fail("device_convert: unsupported target dtype ", dtype_name(dt));
  }
  DSEEK_CUDA_LAUNCH_CHECK("device_convert");
}

}  // namespace

std::shared_ptr<Storage> device_storage(size_t bytes, Device d) {
  DSEEK_CHECK(d == Device::CUDA, "device_storage: not a device");
  DSEEK_CHECK(cuda_device_count() > 0, "device memory: no CUDA device is visible");
  return std::make_shared<CudaStorage>(allocator().alloc(bytes), bytes);
}

size_t device_bytes_reserved() {
  return allocator().reserved();
}
size_t device_bytes_peak() {
  return allocator().peak();
}
void device_release_cache() {
  allocator().release();
}

DevicePool* device_pool_create() {
  return new DevicePool();
}
void device_pool_activate(DevicePool* pool) {
  active_pool = pool;
}
void device_pool_destroy(DevicePool* pool) {
  if (!pool) return;
  if (active_pool == pool) active_pool = nullptr;
  allocator().destroy(pool);
}

bool device_capturing() {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  DSEEK_CUDA_CHECK(cudaStreamIsCapturing(cudaStreamPerThread, &st), "cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

namespace {

// Small host → device copies go through a pinned staging ring and cudaMemcpyAsync: a copy from pageable
// memory synchronizes the stream first (CUDA's documented behaviour), which left the GPU idle between a
// layer's launches (routing plans, tile lists, sequence offsets are uploaded every layer). A region of
// the ring is reused only after the event recorded behind its copy has completed.
class StagingRing {
 public:
  static constexpr size_t kBytes = size_t(16) << 20, kMaxCopy = size_t(2) << 20;
  bool upload(void* dst, const void* src, size_t n) {
    if (n > kMaxCopy) return false;
    std::lock_guard<std::mutex> g(mu_);
    if (!buf_) {
      DSEEK_CUDA_CHECK(cudaHostAlloc(&buf_, kBytes, cudaHostAllocDefault), "staging ring");
    }
    const size_t need = (n + 255) & ~size_t(255);
    if (head_ + need > kBytes) head_ = 0;
    const size_t a = head_, b = head_ + need;
    // Regions are taken in ring order, so the oldest copies sit at the front: retire those that are done,
    // and wait for those that still hold [a, b).
    while (!inflight_.empty()) {
      Region& r = inflight_.front();
      const bool overlaps = r.start < b && a < r.end;
      if (overlaps) {
        DSEEK_CUDA_CHECK(cudaEventSynchronize(r.done), "staging ring: wait");
      } else {
        const cudaError_t q = cudaEventQuery(r.done);
        if (q == cudaErrorNotReady) {
          cudaGetLastError();  // "not ready" is an answer, not an error to report later
          break;
        }
        DSEEK_CUDA_CHECK(q, "staging ring: query");
      }
      free_events_.push_back(r.done);
      inflight_.pop_front();
    }
    std::memcpy(static_cast<char*>(buf_) + a, src, n);
    DSEEK_CUDA_CHECK(
        cudaMemcpyAsync(dst, static_cast<char*>(buf_) + a, n, cudaMemcpyHostToDevice, cudaStreamPerThread),
        "copy_bytes (staged)");
    cudaEvent_t ev;
    if (free_events_.empty()) {
      DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "staging ring: event");
    } else {
      ev = free_events_.back();
      free_events_.pop_back();
    }
    DSEEK_CUDA_CHECK(cudaEventRecord(ev, cudaStreamPerThread), "staging ring: record");
    inflight_.push_back({a, b, ev});
    head_ = b;
    return true;
  }

 private:
  struct Region {
    size_t start, end;
    cudaEvent_t done;
  };
  std::mutex mu_;
  void* buf_ = nullptr;
  size_t head_ = 0;
  std::deque<Region> inflight_;
  std::vector<cudaEvent_t> free_events_;
};

StagingRing& staging() {
  static StagingRing* r = new StagingRing();
  return *r;
}

}  // namespace

void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd == Device::CUDA && sd == Device::CPU) {
    // A captured copy would read the staging slot at every replay, long after it was reused.
    DSEEK_CHECK(!device_capturing(), "copy_bytes: a host-to-device copy inside a CUDA graph capture");
    if (staging().upload(dst, src, n)) return;
  }
  if (dd == Device::CPU && sd == Device::CPU) {  // no driver needed (and none may be there)
    std::memcpy(dst, src, n);
    return;
  }
  if (dd == Device::CUDA && sd == Device::CUDA) {  // ordered on the stream, no host wait (capturable)
    DSEEK_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cudaStreamPerThread),
                     "copy_bytes");
    return;
  }
  cudaMemcpyKind k = dd == Device::CPU
                         ? (sd == Device::CPU ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost)
                         : (sd == Device::CPU ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
  DSEEK_CUDA_CHECK(cudaMemcpy(dst, src, n, k), "copy_bytes");
}

void device_memset(void* p, int v, size_t n) {
  DSEEK_CUDA_CHECK(cudaMemsetAsync(p, v, n, cudaStreamPerThread), "device_memset");
}

void device_convert(void* dst, DType dt, const void* src, DType st, size_t n) {
  if (n == 0) return;
  if (dt == st) {
    DSEEK_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, n * dtype_size(dt), cudaMemcpyDeviceToDevice, cudaStreamPerThread),
        "device_convert");
    return;
  }
  switch (st) {
    case DType::F32:
      return convert_from(dst, dt, static_cast<const float*>(src), n);
    case DType::F64:
      return convert_from(dst, dt, static_cast<const double*>(src), n);
    case DType::BF16:
      return convert_from(dst, dt, static_cast<const __nv_bfloat16*>(src), n);
    case DType::F16:
      return convert_from(dst, dt, static_cast<const __half*>(src), n);
    case DType::F8E4M3:
      return convert_from(dst, dt, static_cast<const __nv_fp8_e4m3*>(src), n);
    case DType::F8E5M2:
      return convert_from(dst, dt, static_cast<const __nv_fp8_e5m2*>(src), n);
    default:
      fail("device_convert: unsupported source dtype ", dtype_name(st));
  }
}

void device_synchronize() {
  DSEEK_CUDA_CHECK(cudaDeviceSynchronize(), "device_synchronize");
}

}  // namespace dseek
