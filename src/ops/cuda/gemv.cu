// gemv.cu — decode-sized products on the GPU: y[N, O] = x[N, I] · W[O, I]ᵀ for N ≤ 8 rows of f32
// activations and bf16 weights. Bandwidth-bound: each weight row is read once with 16-byte loads by one
// warp, products accumulate in f32 for all N rows at once, and the activations are never rounded to
// bf16 (so decoding matches the CPU's bf16-weight path). Two fused forms for a decode step (ops/decode.h):
// two weight matrices over one input in one launch (q_a_proj and kv_a_proj_with_mqa), and gate + up with
// the SwiGLU in one launch (a warp reads both rows of output f and writes silu(g) · u). Launched with
// programmatic dependent launch (common.cuh launch_dep): a warp's first four 16-byte chunks of its row are
// read before the wait, while the kernel before it finishes.
#include "ops/cuda/gemv.cuh"
#include "ops/cuda/gemv.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kPre = kGemvPre;

// Rows o < Oa of the grid: ya[:, o] = x · wa[o]; the rest: yb[:, o - Oa] = x · wb[o - Oa] (Ob = 0: one
// product). vec: I % 8 == 0 and the bases 16-byte aligned, so every row start is too. NORM: x is the
// normalized input described by na (built per block in shared memory, [NB, I]; block 0 writes its h_out
// / x_out), not the x argument.
template <int NB, bool NORM>
__global__ void __launch_bounds__(kWarps * 32)
    sm90_gemv_bf16_pair(float* ya, float* yb, const float* x, const bf16* wa, const bf16* wb, int64_t I,
                        int64_t Oa, int64_t Ob, bool vec, NormArgs na) {
  extern __shared__ __align__(16) float xs[];
  dep_launch();
  const int lane = threadIdx.x & 31;
  const int64_t o = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  const bool a = o < Oa;
  const int64_t r = a ? o : o - Oa, O = a ? Oa : Ob;
  const bf16* wr = (a ? wa : wb) + r * I;
  uint4 pre[kPre] = {};
  if (o < Oa + Ob) row_pre(pre, wr, I, vec, lane);
  dep_wait();
  if constexpr (NORM) {
    normed_rows<NB>(xs, na, 0, I, blockIdx.x == 0);
    x = xs;
  }
  if (o >= Oa + Ob) return;
  float acc[NB];
  row_dot<NB>(acc, pre, wr, x, I, vec, lane);
  float* y = a ? ya : yb;
#pragma unroll
  for (int n = 0; n < NB; ++n) {
    const float s = warp_sum(acc[n]);
    if (lane == 0) y[n * O + r] = s;
  }
}

// y[:, f] = silu(x · wg[f]) ⊙ (x · wu[f]), as swiglu_fwd computes it from the two products.
template <int NB>
__global__ void __launch_bounds__(kWarps * 32)
    sm90_gemv_bf16_swiglu(float* y, const float* x, const bf16* wg, const bf16* wu, int64_t I, int64_t F,
                          bool vec) {
  dep_launch();
  const int lane = threadIdx.x & 31;
  const int64_t f = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  uint4 pg[kPre] = {}, pu[kPre] = {};
  if (f < F) {
    row_pre(pg, wg + f * I, I, vec, lane);
    row_pre(pu, wu + f * I, I, vec, lane);
  }
  dep_wait();
  if (f >= F) return;
  float ag[NB], au[NB];
  row_dot<NB>(ag, pg, wg + f * I, x, I, vec, lane);
  row_dot<NB>(au, pu, wu + f * I, x, I, vec, lane);
#pragma unroll
  for (int n = 0; n < NB; ++n) {
    const float g = warp_sum(ag[n]), u = warp_sum(au[n]);
    if (lane == 0) y[n * F + f] = g / (1.0f + __expf(-g)) * u;
  }
}

bool vec_ok(const void* x, const void* a, const void* b, int64_t I) {
  const auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return I % 8 == 0 && al(x) && al(a) && al(b);
}

}  // namespace

bool gemv_applies(const Tensor& out, const Tensor& x, const Tensor& w) {
  return x.dtype() == DType::F32 && w.dtype() == DType::BF16 && out.dtype() == DType::F32 && x.size(0) >= 1 &&
         x.size(0) <= 8;
}

void gemv_bf16(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  float* y = out.data<float>();
  const float* xp = x.data<float>();
  const bf16* wp = static_cast<const bf16*>(w.raw());
  const bool vec = vec_ok(xp, wp, wp, I);
  with_rows(N, "gemv_bf16", [&](auto nb) {  // the pair kernel with no second matrix
    using NB = decltype(nb);
    launch_dep("linear (bf16 gemv)", sm90_gemv_bf16_pair<NB::value, false>,
               unsigned((O + kWarps - 1) / kWarps), kWarps * 32, 0, y, static_cast<float*>(nullptr), xp, wp,
               static_cast<const bf16*>(nullptr), I, O, int64_t(0), vec, NormArgs{});
  });
}

void gemv_pair(Tensor out_a, Tensor out_b, const Tensor& x, const Tensor& w_a, const Tensor& w_b) {
  const int64_t N = x.size(0), I = x.size(1), Oa = w_a.size(0), Ob = w_b.size(0);
  const float* xp = x.data<float>();
  const bf16* wa = static_cast<const bf16*>(w_a.raw());
  const bf16* wb = static_cast<const bf16*>(w_b.raw());
  const bool vec = vec_ok(xp, wa, wb, I);
  with_rows(N, "linear_pair", [&](auto nb) {
    using NB = decltype(nb);
    launch_dep("linear_pair (bf16 gemv)", sm90_gemv_bf16_pair<NB::value, false>,
               unsigned((Oa + Ob + kWarps - 1) / kWarps), kWarps * 32, 0, out_a.data<float>(),
               out_b.data<float>(), xp, wa, wb, I, Oa, Ob, vec, NormArgs{});
  });
}

void gemv_pair_normed(Tensor out_a, Tensor out_b, const NormedInput& in, const Tensor& w_a,
                      const Tensor& w_b) {
  const int64_t N = in.h.size(0), I = in.h.size(1), Oa = w_a.size(0), Ob = w_b.defined() ? w_b.size(0) : 0;
  const bf16* wa = static_cast<const bf16*>(w_a.raw());
  const bf16* wb = Ob ? static_cast<const bf16*>(w_b.raw()) : wa;
  const bool vec = vec_ok(wa, wa, wb, I);  // the input rows live in shared memory, 16-byte aligned
  const size_t smem = size_t(N * I) * sizeof(float);
  with_rows(N, "linear_pair (normed input)", [&](auto nb) {
    using NB = decltype(nb);
    const auto kernel = sm90_gemv_bf16_pair<NB::value, true>;
    allow_smem(kernel, smem, "linear_pair (normed input)");
    launch_dep("linear_pair (normed input, bf16 gemv)", kernel, unsigned((Oa + Ob + kWarps - 1) / kWarps),
               kWarps * 32, smem, out_a.data<float>(), Ob ? out_b.data<float>() : nullptr,
               static_cast<const float*>(nullptr), wa, wb, I, Oa, Ob, vec, norm_args(in));
  });
}

void gemv_swiglu(Tensor out, const Tensor& x, const Tensor& w_gate, const Tensor& w_up) {
  const int64_t N = x.size(0), I = x.size(1), F = w_gate.size(0);
  const float* xp = x.data<float>();
  const bf16* wg = static_cast<const bf16*>(w_gate.raw());
  const bf16* wu = static_cast<const bf16*>(w_up.raw());
  const bool vec = vec_ok(xp, wg, wu, I);
  with_rows(N, "linear_swiglu", [&](auto nb) {
    using NB = decltype(nb);
    launch_dep("linear_swiglu (bf16 gemv)", sm90_gemv_bf16_swiglu<NB::value>,
               unsigned((F + kWarps - 1) / kWarps), kWarps * 32, 0, out.data<float>(), xp, wg, wu, I, F, vec);
  });
}

}  // namespace dseek::ops::cuda
