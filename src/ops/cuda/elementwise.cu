// elementwise.cu — SwiGLU, embedding gather, axpy and column copies on the GPU.
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

template <typename T, typename TO>
__global__ void swiglu_kernel(TO* out, const T* g, const T* u, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float a = ld(g[i]);
    out[i] = st<TO>(a / (1.0f + __expf(-a)) * ld(u[i]));
  }
}

template <typename T>
__global__ void axpy_kernel(T* x, const T* y, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = st<T>(ld(x[i]) + alpha * ld(y[i]));
}

template <typename T, typename S>
__global__ void embedding_kernel(T* out, const int64_t* ids, const S* table, int64_t D) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  const S* row = table + ids[n] * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[n * D + i] = st<T>(ld(row[i]));
}

}  // namespace

void swiglu_fwd(Tensor out, const Tensor& gate, const Tensor& up) {
  const int64_t n = gate.numel();
  if (n == 0) return;
  with_act(gate.dtype(), "swiglu_fwd", [&](auto t) {
    with_act(out.dtype(), "swiglu_fwd", [&](auto to) {
      using T = decltype(t);
      using TO = decltype(to);
      swiglu_kernel<<<blocks_for(n, 256), 256>>>(
          static_cast<TO*>(out.raw()), static_cast<const T*>(gate.raw()), static_cast<const T*>(up.raw()), n);
    });
  });
  DSEEK_CUDA_LAUNCH_CHECK("swiglu_fwd");
}

void axpy_(Tensor x, const Tensor& y, double alpha) {
  const int64_t n = x.numel();
  if (n == 0) return;
  with_act(x.dtype(), "axpy_", [&](auto t) {
    using T = decltype(t);
    axpy_kernel<<<blocks_for(n, 256), 256>>>(static_cast<T*>(x.raw()), static_cast<const T*>(y.raw()),
                                             float(alpha), n);
  });
  DSEEK_CUDA_LAUNCH_CHECK("axpy_");
}

void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table) {
  const int64_t N = ids.size(0), V = table.size(0), D = table.size(1);
  if (N == 0) return;
  // Ids are checked on the host (a bad id is an input error, not something to clamp), except inside a
  // CUDA graph capture (the decode step's caller checks them before they reach the device). Host ids are
  // checked where they are and uploaded; device ids come back for the check.
  const bool on_host = ids.device() == Device::CPU;
  if (on_host || !device_capturing()) {
    const Tensor h = on_host ? ids : ids.to(Device::CPU);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = h.data<int64_t>()[n];
      DSEEK_CHECK(i >= 0 && i < V, "token id ", i, " is outside the vocabulary (", V, ")");
    }
  }
  const Tensor dev_ids = on_host ? ids.to(Device::CUDA) : ids;
  with_act(out.dtype(), "embedding_fwd", [&](auto t) {
    using T = decltype(t);
    if (table.dtype() == DType::BF16) {
      launch_dep("embedding_fwd", embedding_kernel<T, bf16>, unsigned(N), 128, 0, static_cast<T*>(out.raw()),
                 dev_ids.data<int64_t>(), static_cast<const bf16*>(table.raw()), D);
    } else {
      DSEEK_CHECK(table.dtype() == DType::F32, "embedding_fwd: table dtype ", dtype_name(table.dtype()));
      launch_dep("embedding_fwd", embedding_kernel<T, float>, unsigned(N), 128, 0, static_cast<T*>(out.raw()),
                 dev_ids.data<int64_t>(), static_cast<const float*>(table.raw()), D);
    }
  });
}

void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width) {
  const int64_t R = dst.size(0);
  if (R == 0 || width == 0) return;
  const size_t es = dtype_size(dst.dtype());
  DSEEK_CUDA_CHECK(
      cudaMemcpy2DAsync(static_cast<uint8_t*>(dst.raw()) + size_t(dcol) * es, size_t(dst.size(1)) * es,
                        static_cast<const uint8_t*>(src.raw()) + size_t(scol) * es, size_t(src.size(1)) * es,
                        size_t(width) * es, size_t(R), cudaMemcpyDeviceToDevice, cudaStreamPerThread),
      "copy_cols");
}

}  // namespace dseek::ops::cuda
