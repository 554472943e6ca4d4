// cuda_check.h — every CUDA and cuBLASLt call and every kernel launch is checked; the error names the op.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define DSEEK_CUDA_CHECK(call, what)                                                          \
  do {                                                                                        \
    cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess)                                                                  \
      ::dseek::fail(what, ": ", cudaGetErrorName(err_), " (", cudaGetErrorString(err_), ")"); \
  } while (0)

// After a kernel launch: launch-configuration errors now, and (with DSEEK_CUDA_SYNC_CHECK set in the
// environment) execution errors too, naming the kernel's op.
#define DSEEK_CUDA_LAUNCH_CHECK(what) ::dseek::cuda_launch_check(what)

#define DSEEK_CUBLAS_CHECK(call, what)                                                     \
  do {                                                                                     \
    cublasStatus_t st_ = (call);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS) ::dseek::fail(what, ": cuBLASLt status ", int(st_)); \
  } while (0)

namespace dseek {
void cuda_launch_check(const char* what);
}  // namespace dseek
