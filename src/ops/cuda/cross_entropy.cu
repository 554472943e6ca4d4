// cross_entropy.cu — the LM head fused with the cross-entropy loss and its gradient on the GPU (issue 6;
// ops/cross_entropy.h; DESIGN.md "LM head + fused cross-entropy"): tokens in chunks whose [chunk, V] f32
// logits stay under 1 GB, so the full [T, V] logits never exist. Per chunk: logits = h · Wᵀ (cuBLASLt),
// a block per row writes the row's loss (f64) and scale · (softmax − onehot) (bf16 for bf16 weights, else
// in place), then dh = dlogits · W and dw += dlogitsᵀ · h (linear's backward). The CPU version is the
// reference.
#include <algorithm>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kThreads = 1024;

// Row i of l [n, V] (f32 logits): loss[i] = log Σ e^(l − max) + max − l[t] (t = tgt[i] ≥ 0, else 0), the
// maximum and the sum found in one pass (online rescaling); with `grad` the row of g (G = f32: in place over
// l; bf16: the operand of the head's backward products) becomes scale · (softmax − onehot(t)), zeros for a
// row without a target. VEC: V % 4 == 0, four elements per access (16-byte loads; 8- or 16-byte stores).
template <typename G>
__device__ __forceinline__ void store4(G* p, float a, float b, float c, float d);
template <>
__device__ __forceinline__ void store4<float>(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
template <>
__device__ __forceinline__ void store4<bf16>(bf16* p, float a, float b, float c, float d) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 v;
  v.x = *reinterpret_cast<const uint32_t*>(&lo);
  v.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = v;
}

template <typename G, bool VEC>
__global__ void __launch_bounds__(kThreads)
    ce_rows_kernel(const float* l, G* g, double* loss, const int64_t* tgt, int64_t V, float scale,
                   bool grad) {
  const int64_t i = blockIdx.x;
  const float* r = l + i * V;
  G* gr = g + i * V;
  const int64_t t = tgt[i];
  if (t < 0) {
    if (grad)
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) gr[v] = st<G>(0.0f);
    if (threadIdx.x == 0) loss[i] = 0.0;
    return;
  }
  // The target's logit, read before the reductions' barriers: with G = f32 the gradient pass below
  // overwrites the row in place, and a warp that gets there first must not change what this read sees.
  const float lt = r[t];
  float m = -INFINITY, z = 0.0f;  // this thread's running maximum and Σ e^(l − m)
  if constexpr (VEC) {
    const float4* r4 = reinterpret_cast<const float4*>(r);
    for (int64_t v = threadIdx.x; v < V / 4; v += blockDim.x) {
      const float4 x = r4[v];
      const float mx = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));
      if (mx > m) {
        z = m == -INFINITY ? 0.0f : z * expf(m - mx);
        m = mx;
      }
      z += expf(x.x - m) + expf(x.y - m) + expf(x.z - m) + expf(x.w - m);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float x = r[v];
      if (x > m) {
        z = z * expf(m - x) + 1.0f;
        m = x;
      } else {
        z += expf(x - m);
      }
    }
  }
  const float mb = block_max(m);
  z = block_sum(m == -INFINITY ? 0.0f : z * expf(m - mb));
  m = mb;
  if (threadIdx.x == 0) loss[i] = log(double(z)) + double(m) - double(lt);
  if (!grad) return;
  const float k = scale / z;
  if constexpr (VEC) {
    const float4* r4 = reinterpret_cast<const float4*>(r);
    for (int64_t v = threadIdx.x; v < V / 4; v += blockDim.x) {
      const float4 x = r4[v];
      const int64_t b = 4 * v;
      store4(gr + b, expf(x.x - m) * k - (b == t ? scale : 0.0f),
             expf(x.y - m) * k - (b + 1 == t ? scale : 0.0f), expf(x.z - m) * k - (b + 2 == t ? scale : 0.0f),
             expf(x.w - m) * k - (b + 3 == t ? scale : 0.0f));
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
      gr[v] = st<G>(expf(r[v] - m) * k - (v == t ? scale : 0.0f));
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
  // Chunks of 1 GB of f32 logits (2,076 rows of a 129,280 vocabulary): each chunk's weight gradient reads
  // and writes all of dw ([V, D] f32), so fewer, larger chunks cut that traffic (32 chunks of 256 MB had
  // moved 34 GB per step on bench-1b).
  const int64_t chunk = std::clamp<int64_t>((int64_t(1) << 30) / (4 * std::max<int64_t>(V, 1)), 1, N);
  Tensor logits = Tensor::empty({chunk, V}, DType::F32, Device::CUDA);  // logits: [chunk, V]
  // With bf16 weights the gradient rows are written in bf16 (the backward products' operand) and h is cast
  // once for every chunk's products; with f32 weights the rows are turned into the gradient in place.
  const bool bf16_head = w.dtype() == DType::BF16;
  Tensor dlogits = grad && bf16_head ? Tensor::empty({chunk, V}, DType::BF16, Device::CUDA) : logits;
  const Tensor ho = bf16_head && N > 8 ? h.to(DType::BF16) : h;
  Tensor loss = Tensor::empty({N}, DType::F64, Device::CUDA);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t n = std::min(chunk, N - n0);
    Tensor lc = logits.slice(0, n), gc = dlogits.slice(0, n), hc = ho.slice(n0, n);  // lc, gc: [n, V]
    linear(lc, hc, w);
    // rows of 16-byte-aligned float4s when V % 4 == 0 (the chunks start at multiples of V)
    const bool vec = V % 4 == 0;
    auto rows = [&](auto kernel, auto* gp) {
      kernel<<<unsigned(n), kThreads>>>(lc.data<float>(), gp, loss.data<double>() + n0,
                                        targets.data<int64_t>() + n0, V, float(scale), grad);
    };
    if (gc.dtype() == DType::BF16) {
      auto* gp = static_cast<bf16*>(gc.raw());
      vec ? rows(ce_rows_kernel<bf16, true>, gp) : rows(ce_rows_kernel<bf16, false>, gp);
    } else {
      float* gp = lc.data<float>();
      vec ? rows(ce_rows_kernel<float, true>, gp) : rows(ce_rows_kernel<float, false>, gp);
    }
    DSEEK_CUDA_LAUNCH_CHECK("lm_head_cross_entropy (rows)");
    if (grad) linear_bwd(dh.slice(n0, n), dw, gc, hc, w);  // dh = dlogits · W, dw += dlogitsᵀ · h
  }
  // The loss on the host, rows in order (rows without a target hold 0).
  const Tensor hl = loss.to(Device::CPU);
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += hl.data<double>()[i];
  return sum;
}

}  // namespace dseek::ops::cuda
