// decode_latent.cu — the latent side of a decode step in one launch (ops/decode.h mla_decode_latent;
// spec/model.md §2.2 the q_a / kv_a norms, §2.4 RoPE, §2.5 what the cache holds; spec/serving.md paged
// cache): one block per token normalizes the q_a output (for q_b_proj) and the kv latent, rotates k_pe,
// and writes the row [c_kv normed | k_pe roped] into the token's cache slot. The same arithmetic as
// rmsnorm_fwd, rope_fwd and paged_cache_write in sequence (f32 statistics, each value rounded once).
#include "ops/cuda/common.cuh"
#include "ops/decode.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

// cq, cqn: [N, Q] (cq null: no q part); kv: [N, C + R]; pool rows of width C + R; slots: [N].
template <typename T, typename Wn>
__global__ void __launch_bounds__(512)
    sm90_decode_latent(T* cqn, T* pool, const T* cq, const T* kv, const Wn* q_norm, const Wn* kv_norm,
                       const int64_t* pos, const float* inv_freq, const int32_t* slots, int Q, int C, int R,
                       float af, float eps) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  if (cq) {
    const T* x = cq + n * Q;
    float ss = 0;
    for (int i = threadIdx.x; i < Q; i += blockDim.x) ss += ld(x[i]) * ld(x[i]);
    ss = block_sum(ss);
    const float r = rsqrtf(ss / float(Q) + eps);
    for (int i = threadIdx.x; i < Q; i += blockDim.x) cqn[n * Q + i] = st<T>(ld(q_norm[i]) * (ld(x[i]) * r));
  }
  const int W = C + R;
  const T* x = kv + n * W;
  T* row = pool + int64_t(slots[n]) * W;
  float ss = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) ss += ld(x[i]) * ld(x[i]);
  ss = block_sum(ss);
  const float r = rsqrtf(ss / float(C) + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) row[i] = st<T>(ld(kv_norm[i]) * (ld(x[i]) * r));
  for (int i = threadIdx.x; i < R / 2; i += blockDim.x) {
    float s, c;
    sincosf(float(pos[n]) * inv_freq[i], &s, &c);
    c *= af;
    s *= af;
    const float a = ld(x[C + 2 * i]), b = ld(x[C + 2 * i + 1]);
    row[C + 2 * i] = st<T>(a * c - b * s);
    row[C + 2 * i + 1] = st<T>(a * s + b * c);
  }
}

}  // namespace

void mla_decode_latent(const LatentStep& a) {
  const int64_t N = a.kv.size(0), C = a.kv_norm.size(0), R = a.kv.size(1) - C;
  const int Q = a.cq.defined() ? int(a.cq.size(1)) : 0;
  with_act(a.kv.dtype(), "mla_decode_latent", [&](auto t) {
    using T = decltype(t);
    auto run = [&](auto wn) {
      using Wn = decltype(wn);
      launch_dep("mla_decode_latent", sm90_decode_latent<T, Wn>, unsigned(N), 512, 0,
                 Q ? static_cast<T*>(a.cqn.raw()) : nullptr, static_cast<T*>(a.pool.raw()),
                 Q ? static_cast<const T*>(a.cq.raw()) : nullptr, static_cast<const T*>(a.kv.raw()),
                 Q ? static_cast<const Wn*>(a.q_norm.raw()) : nullptr,
                 static_cast<const Wn*>(a.kv_norm.raw()), a.positions.data<int64_t>(),
                 a.inv_freq.data<float>(), a.slots.data<int32_t>(), Q, int(C), int(R),
                 float(a.attention_factor), float(a.eps));
    };
    if (a.kv_norm.dtype() == DType::F32) {
      run(float{});
    } else {
      run(T{});
    }
  });
}

}  // namespace dseek::ops::cuda
