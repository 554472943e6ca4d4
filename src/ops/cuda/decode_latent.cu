// decode_latent.cu — the latent side of a decode step in one launch (ops/decode.h mla_decode_latent;
// spec/model.md §2.2 the q_a / kv_a norms, §2.4 RoPE, §2.5 what the cache holds; spec/serving.md paged
// cache): one block per token normalizes the q_a output (for q_b_proj) and the kv latent, rotates k_pe,
// and writes the row [c_kv normed | k_pe roped] into the token's cache slot. Its fused form for few f32
// tokens (mla_decode_latent_q) also runs q_b_proj on the normed q_a output in the same launch, so the
// latent side of a step is the q_a/kv_a product and this one launch. The same arithmetic as
// rmsnorm_fwd, rope_fwd and paged_cache_write in sequence (f32 statistics, each value rounded once).
#include "ops/cuda/gemv.cuh"
#include "ops/decode.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

// Token n's cache row: [rmsnorm(kv[n, :C]) · kv_norm | rope(kv[n, C:])] written to pool at slots[n], by
// the whole block.
template <typename T, typename Wn>
__device__ void latent_row(T* pool, const T* kv, const Wn* kv_norm, const int64_t* pos, const float* inv_freq,
                           const int32_t* slots, int C, int R, float af, float eps, int64_t n) {
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
  latent_row<T, Wn>(pool, kv, kv_norm, pos, inv_freq, slots, C, R, af, eps, n);
}

// The latent step with q_b_proj folded in (f32 activations and norms, bf16 q_b): grid ceil(O / 8) + 1
// blocks of 8 warps. The last block writes the N cache rows (latent_row); every other block builds
// cqn = rmsnorm(cq) · q_norm for all N rows in shared memory ([NB, Q]) and gives one warp per output
// row o: q[:, o] = cqn · w_qb[o] (its first chunks read before the wait). cqn itself is not stored.
template <int NB>
__global__ void __launch_bounds__(256)
    sm90_decode_latent_q(float* q, float* pool, const float* cq, const float* kv, const float* q_norm,
                         const float* kv_norm, const bf16* wq, const int64_t* pos, const float* inv_freq,
                         const int32_t* slots, int Q, int O, int C, int R, float af, float eps, bool vec) {
  extern __shared__ __align__(16) float xs[];
  dep_launch();
  const int lane = threadIdx.x & 31;
  const bool side = blockIdx.x == gridDim.x - 1;
  const int o = blockIdx.x * 8 + (threadIdx.x >> 5);
  const bf16* wr = wq + int64_t(o < O ? o : 0) * Q;
  uint4 pre[kGemvPre] = {};
  if (!side && o < O) row_pre(pre, wr, Q, vec, lane);
  dep_wait();
  if (side) {
    for (int n = 0; n < NB; ++n)
      latent_row<float, float>(pool, kv, kv_norm, pos, inv_freq, slots, C, R, af, eps, n);
    return;
  }
  NormArgs na;
  na.h = cq;
  na.norm = q_norm;
  na.eps = eps;
  normed_rows<NB>(xs, na, 0, Q, false);
  if (o >= O) return;
  float acc[NB];
  row_dot<NB>(acc, pre, wr, xs, Q, vec, lane);
#pragma unroll
  for (int n = 0; n < NB; ++n) {
    const float s = warp_sum(acc[n]);
    if (lane == 0) q[int64_t(n) * O + o] = s;
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

void mla_decode_latent_q(Tensor q, const LatentStep& a, const Tensor& q_b) {
  const int64_t N = a.kv.size(0), C = a.kv_norm.size(0), R = a.kv.size(1) - C, Q = a.cq.size(1),
                O = q_b.size(0);
  const bf16* wq = static_cast<const bf16*>(q_b.raw());
  const bool vec = Q % 8 == 0 && (reinterpret_cast<uintptr_t>(wq) & 15) == 0;
  const size_t smem = size_t(N * Q) * sizeof(float);
  with_rows(N, "mla_decode_latent_q", [&](auto nb) {
    using NB = decltype(nb);
    const auto kernel = sm90_decode_latent_q<NB::value>;
    allow_smem(kernel, smem, "mla_decode_latent_q");
    launch_dep("mla_decode_latent_q", kernel, unsigned((O + 7) / 8 + 1), 256, smem, q.data<float>(),
               a.pool.data<float>(), a.cq.data<float>(), a.kv.data<float>(), a.q_norm.data<float>(),
               a.kv_norm.data<float>(), wq, a.positions.data<int64_t>(), a.inv_freq.data<float>(),
               a.slots.data<int32_t>(), int(Q), int(O), int(C), int(R), float(a.attention_factor),
               float(a.eps), vec);
  });
}

}  // namespace dseek::ops::cuda
