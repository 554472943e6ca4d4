// norm_rope.cu — RMSNorm (one block per row, f32 statistics), alone or fused with the residual add before
// it, and interleaved-pair RoPE on the GPU (spec/model.md §2.1, §2.4, §3).
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

template <typename T, typename W>
__global__ void rmsnorm_kernel(T* out, T* rstd, const T* x, const W* w, int64_t D, float eps) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  const T* xr = x + n * D;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = ld(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss);
  const float r = rsqrtf(ss / float(D) + eps);
  if (rstd && threadIdx.x == 0) rstd[n] = st<T>(r);
  T* o = out + n * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = st<T>(ld(w[i]) * (ld(xr[i]) * r));
}

// h[n] += y[n] (rounded to T, as axpy_ does), then out[n] = w ⊙ h[n] · rstd over the rounded sums. Each
// thread reads back only the elements it wrote.
template <typename T, typename W>
__global__ void add_rmsnorm_kernel(T* h, T* out, T* rstd, const T* y, const W* w, int64_t D, float eps) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  T* hr = h + n * D;
  const T* yr = y + n * D;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const T v = st<T>(ld(hr[i]) + ld(yr[i]));
    hr[i] = v;
    ss += ld(v) * ld(v);
  }
  ss = block_sum(ss);
  const float r = rsqrtf(ss / float(D) + eps);
  if (rstd && threadIdx.x == 0) rstd[n] = st<T>(r);
  T* o = out + n * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = st<T>(ld(w[i]) * (ld(hr[i]) * r));
}

// The same for many f32 rows: a warp per row, the row's sums kept in registers (D / 128 float4 per lane,
// D % 128 == 0, D ≤ 128·C), one pass over memory for each of h, y, out.
template <typename W, int C>
__global__ void add_rmsnorm_rows_kernel(float* h, float* out, float* rstd, const float* y, const W* w,
                                        int64_t N, int D, float eps) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  float4 v[C];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < C; ++j) {
    const int d = j * 128 + lane * 4;
    if (d >= D) break;
    const float4 a = *reinterpret_cast<const float4*>(h + n * D + d);
    const float4 b = *reinterpret_cast<const float4*>(y + n * D + d);
    v[j] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    *reinterpret_cast<float4*>(h + n * D + d) = v[j];
    ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(D) + eps);
  if (rstd && lane == 0) rstd[n] = r;
#pragma unroll
  for (int j = 0; j < C; ++j) {
    const int d = j * 128 + lane * 4;
    if (d >= D) break;
    float4 o;
    o.x = ld(w[d]) * (v[j].x * r);
    o.y = ld(w[d + 1]) * (v[j].y * r);
    o.z = ld(w[d + 2]) * (v[j].z * r);
    o.w = ld(w[d + 3]) * (v[j].w * r);
    *reinterpret_cast<float4*>(out + n * D + d) = o;
  }
}

template <typename T>
__global__ void rope_kernel(T* x, const int64_t* pos, const float* inv_freq, int64_t N, int64_t H, int64_t W,
                            int64_t col, int64_t half, float af, float sign) {
  const int64_t total = N * H * half;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t % half, nh = t / half, n = nh / H;
    float s, c;
    sincosf(float(pos[n]) * inv_freq[i], &s, &c);
    c *= af;
    s *= af * sign;  // sign −1: the transposed rotation (the backward)
    T* v = x + nh * W + col + 2 * i;
    const float a = ld(v[0]), b = ld(v[1]);
    v[0] = st<T>(a * c - b * s);
    v[1] = st<T>(a * s + b * c);
  }
}

}  // namespace

void rmsnorm_fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& w, double eps) {
  const int64_t N = x.size(0), D = x.size(1);
  if (N == 0) return;
  with_act(x.dtype(), "rmsnorm_fwd", [&](auto t) {
    using T = decltype(t);
    T* r = rstd.defined() ? static_cast<T*>(rstd.raw()) : nullptr;
    if (w.dtype() == DType::F32) {
      launch_dep("rmsnorm_fwd", rmsnorm_kernel<T, float>, unsigned(N), 256, 0, static_cast<T*>(out.raw()), r,
                 static_cast<const T*>(x.raw()), static_cast<const float*>(w.raw()), D, float(eps));
    } else {
      launch_dep("rmsnorm_fwd", rmsnorm_kernel<T, T>, unsigned(N), 256, 0, static_cast<T*>(out.raw()), r,
                 static_cast<const T*>(x.raw()), static_cast<const T*>(w.raw()), D, float(eps));
    }
  });
}

void add_rmsnorm_fwd(Tensor h, Tensor out, Tensor rstd, const Tensor& y, const Tensor& w, double eps) {
  const int64_t N = h.size(0), D = h.size(1);
  if (N == 0) return;
  with_act(h.dtype(), "add_rmsnorm_fwd", [&](auto t) {
    using T = decltype(t);
    T* r = rstd.defined() ? static_cast<T*>(rstd.raw()) : nullptr;
    T* hp = static_cast<T*>(h.raw());
    T* op = static_cast<T*>(out.raw());
    const T* yp = static_cast<const T*>(y.raw());
    if constexpr (std::is_same_v<T, float>) {
      if (N > 8 && D % 128 == 0 && D <= 2048) {  // a prefill's many rows: a warp per row
        const unsigned blocks = unsigned((N + 7) / 8);
        if (w.dtype() == DType::F32)
          add_rmsnorm_rows_kernel<float, 16>
              <<<blocks, 256>>>(hp, op, r, yp, static_cast<const float*>(w.raw()), N, int(D), float(eps));
        else
          add_rmsnorm_rows_kernel<bf16, 16>
              <<<blocks, 256>>>(hp, op, r, yp, static_cast<const bf16*>(w.raw()), N, int(D), float(eps));
        return;
      }
    }
    const int threads = D >= 1024 ? 1024 : 256;  // a decode step's few rows: every load in flight at once
    if (w.dtype() == DType::F32) {
      launch_dep("add_rmsnorm_fwd", add_rmsnorm_kernel<T, float>, unsigned(N), threads, 0, hp, op, r, yp,
                 static_cast<const float*>(w.raw()), D, float(eps));
    } else {
      launch_dep("add_rmsnorm_fwd", add_rmsnorm_kernel<T, T>, unsigned(N), threads, 0, hp, op, r, yp,
                 static_cast<const T*>(w.raw()), D, float(eps));
    }
  });
  DSEEK_CUDA_LAUNCH_CHECK("add_rmsnorm_fwd");
}

namespace {
void rope_any(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col, double attention_factor,
              float sign, const char* op) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), half = inv_freq.size(0);
  if (N == 0) return;
  with_act(x.dtype(), op, [&](auto t) {
    using T = decltype(t);
    rope_kernel<<<blocks_for(N * H * half, 256), 256>>>(static_cast<T*>(x.raw()), positions.data<int64_t>(),
                                                        inv_freq.data<float>(), N, H, W, col, half,
                                                        float(attention_factor), sign);
  });
  DSEEK_CUDA_LAUNCH_CHECK(op);
}
}  // namespace

void rope_fwd(Tensor x, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor) {
  rope_any(x, positions, inv_freq, col, attention_factor, 1.0f, "rope_fwd");
}

void rope_bwd(Tensor dx, const Tensor& positions, const Tensor& inv_freq, int64_t col,
              double attention_factor) {
  rope_any(dx, positions, inv_freq, col, attention_factor, -1.0f, "rope_bwd");
}

}  // namespace dseek::ops::cuda
