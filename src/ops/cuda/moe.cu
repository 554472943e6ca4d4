// moe.cu — token permutation by expert, grouped expert products (one cuBLASLt product per expert with
// rows) and the weighted un-permutation, on the GPU (spec/model.md §4).
#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm.h"

namespace dseek::ops::cuda {

namespace {

template <typename T>
__global__ void permute_kernel(T* xp, const T* x, const int64_t* slot, int64_t K, int64_t D) {
  const int64_t r = blockIdx.x;
  const T* src = x + (slot[r] / K) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) xp[r * D + i] = src[i];
}

template <typename T>
__global__ void unpermute_kernel(T* out, const T* yp, const T* w, const int64_t* row, int64_t K, int64_t D) {
  const int64_t n = blockIdx.x;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += ld(w[n * K + k]) * ld(yp[row[n * K + k] * D + i]);
    out[n * D + i] = st<T>(acc);
  }
}

}  // namespace

void moe_permute(Tensor xp, const Tensor& x, const MoePlan& p) {
  const int64_t M = p.tokens * p.top_k, D = x.size(1);
  if (M == 0) return;
  Tensor slot = upload_i64(p.slot);
  with_act(x.dtype(), "moe_permute", [&](auto t) {
    using T = decltype(t);
    permute_kernel<<<int(M), 128>>>(static_cast<T*>(xp.raw()), static_cast<const T*>(x.raw()),
                                    slot.data<int64_t>(), p.top_k, D);
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_permute");
}

void grouped_linear(Tensor out, const Tensor& x, const std::vector<Tensor>& w, const MoePlan& p) {
  // Activations cast to the experts' dtype (bf16) once, not once per expert; experts with more than 8
  // rows go through the one-launch grouped kernel, those with at most 8 keep the f32 activations of the
  // GEMV kernel (finer, and what decoding uses).
  const bool cast = !w.empty() && w[0].dtype() == DType::BF16 && x.dtype() == DType::F32 && x.size(0) > 8;
  const Tensor xa = cast ? x.to(DType::BF16) : x;
  const bool grouped = x.size(0) > 8 && grouped_gemm_applies(out, xa, w);
  if (grouped) grouped_gemm(out, xa, w, p.offsets, 9);
  for (int64_t e = 0; e < p.experts; ++e) {
    const int64_t n = p.rows(e);
    if (n == 0 || (grouped && n > 8)) continue;
    const int64_t r0 = p.offsets[size_t(e)];
    linear(out.slice(r0, n), (n > 8 ? xa : x).slice(r0, n), w[size_t(e)]);
  }
}

void moe_unpermute(Tensor out, const Tensor& yp, const Tensor& topk_w, const MoePlan& p) {
  const int64_t N = p.tokens, D = yp.size(1);
  if (N == 0) return;
  Tensor row = upload_i64(p.row);
  with_act(yp.dtype(), "moe_unpermute", [&](auto t) {
    using T = decltype(t);
    unpermute_kernel<<<int(N), 128>>>(static_cast<T*>(out.raw()), static_cast<const T*>(yp.raw()),
                                      static_cast<const T*>(topk_w.raw()), row.data<int64_t>(), p.top_k, D);
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_unpermute");
}

}  // namespace dseek::ops::cuda
