// cross_entropy.cu — the LM head fused with the cross-entropy loss and its gradient on the GPU (issue 6;
// ops/cross_entropy.h; DESIGN.md "LM head + fused cross-entropy"): tokens in chunks whose [chunk, V] f32
// logits stay under 256 MB, so the full [T, V] logits never exist. Per chunk: logits = h · Wᵀ (cuBLASLt),
// a block per row turns them in place into scale · (softmax − onehot) and writes the row's loss (f64),
// then dh = dlogits · W and dw += dlogitsᵀ · h (linear's backward). The CPU version is the reference.
#include <algorithm>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kThreads = 1024;

// Row i of l [n, V]: loss[i] = log Σ e^(l − max) + max − l[t] (t = tgt[i] ≥ 0, else 0); with `grad` the row
// becomes scale · (softmax − onehot(t)) (zeros for a row without a target).
__global__ void __launch_bounds__(kThreads)
    ce_rows_kernel(float* l, double* loss, const int64_t* tgt, int64_t V, float scale, bool grad) {
  const int64_t i = blockIdx.x;
  float* r = l + i * V;
  const int64_t t = tgt[i];
  if (t < 0) {
    if (grad)
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) r[v] = 0.0f;
    if (threadIdx.x == 0) loss[i] = 0.0;
    return;
  }
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, r[v]);
  m = block_max(m);
  float z = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) z += expf(r[v] - m);
  z = block_sum(z);
  const float lt = r[t];
  __syncthreads();  // every thread has read r[t] before the row is overwritten
  if (threadIdx.x == 0) loss[i] = log(double(z)) + double(m) - double(lt);
  if (grad) {
    const float k = scale / z;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) r[v] = expf(r[v] - m) * k - (v == t ? scale : 0.0f);
  }
}

}  // namespace

double lm_head_cross_entropy_sum(Tensor dh, Tensor dw, const Tensor& h, const Tensor& w,
                                 const Tensor& targets, double scale) {
  const int64_t N = h.size(0), V = w.size(0);
  DSEEK_CHECK(h.dtype() == DType::F32 && (w.dtype() == DType::F32 || w.dtype() == DType::BF16),
              "lm_head_cross_entropy (CUDA): f32 h with f32 or bf16 w, not ", dtype_name(h.dtype()), " / ",
              dtype_name(w.dtype()));
  if (N == 0) return 0.0;
  const bool grad = dh.defined();
  const int64_t chunk = std::clamp<int64_t>((int64_t(256) << 20) / (4 * std::max<int64_t>(V, 1)), 1, N);
  Tensor logits = Tensor::empty({chunk, V}, DType::F32, Device::CUDA);  // logits: [chunk, V]
  Tensor loss = Tensor::empty({N}, DType::F64, Device::CUDA);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t n = std::min(chunk, N - n0);
    Tensor lc = logits.slice(0, n), hc = h.slice(n0, n);  // lc: [n, V], hc: [n, D]
    linear(lc, hc, w);
    ce_rows_kernel<<<unsigned(n), kThreads>>>(lc.data<float>(), loss.data<double>() + n0,
                                              targets.data<int64_t>() + n0, V, float(scale), grad);
    DSEEK_CUDA_LAUNCH_CHECK("lm_head_cross_entropy (rows)");
    if (grad) linear_bwd(dh.slice(n0, n), dw, lc, hc, w);  // dh = dlogits · W, dw += dlogitsᵀ · h
  }
  // The loss on the host, rows in order (rows without a target hold 0).
  const Tensor hl = loss.to(Device::CPU);
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += hl.data<double>()[i];
  return sum;
}

}  // namespace dseek::ops::cuda
