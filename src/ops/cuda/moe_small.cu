// moe_small.cu — routed experts of a decode step on the GPU without a host-side plan (spec/model.md §4.3;
// issue 5: "no host synchronisation inside the decode step"): the router's expert ids and gate weights
// are read from device memory. Grouped by expert: a block of grid (rows, expert e) first gathers the
// (token, slot) pairs that chose e (exiting at once if none did), then one warp per weight row reads the
// row once with 16-byte loads for all of them; grid row y takes the y-th distinct chosen expert, so only
// min(E, N·K) rows are launched. Three launches: gate+up with SwiGLU, down, and the
// weighted sum over each token's K slots in a fixed order (deterministic). A shared expert of the same
// width runs as expert E (grid row E, every token, slot K of KS = K + 1 per token, weight 1, added after
// the routed sum), so the whole MoE layer of a decode step is these three launches. One token (a batch-1
// step) skips the gathering: row y is slot y. Under programmatic dependent launch the gate+up launch asks
// L2 for the shared expert's rows before its wait and for each chosen expert's down matrix after it, each
// block a slice.
#include <algorithm>

#include "ops/cuda/gemv.cuh"
#include "ops/decode.h"
#include "ops/decode_impl.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kWarps = 8;

// The slots n·KS + k (k < K) whose expert is e, into rows[0 .. returned count); for e = E (the shared
// expert) the slots n·KS + K of all N = NK / K tokens.
__device__ int gather_slots(int* rows, int* count, const int32_t* idx, int NK, int K, int KS, int e, int E) {
  if (e == E) {
    for (int n = threadIdx.x; n < NK / K; n += blockDim.x) rows[n] = n * KS + K;
    __syncthreads();
    return NK / K;
  }
  if (threadIdx.x == 0) *count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < NK; i += blockDim.x)
    if (idx[i] == e) rows[atomicAdd(count, 1)] = (i / K) * KS + i % K;
  __syncthreads();
  return *count;
}

// Grid row y's expert: the y-th distinct expert id in idx (ascending), or -1 when fewer are chosen, so a
// decode step of one token launches K + 1 expert rows instead of E + 1 (each thread flags expert tid; a
// ballot per warp ranks them). Needs blockDim.x ≥ E (E ≤ kMoeSmallExperts = 256 threads).
__device__ int nth_expert(const int32_t* idx, int NK, int E, int y) {
  __shared__ int flag[kMoeSmallExperts], per_warp[kWarps], found;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid < E) flag[tid] = 0;
  if (tid == 0) found = -1;
  __syncthreads();
  for (int i = tid; i < NK; i += blockDim.x)
    if (unsigned(idx[i]) < unsigned(E)) flag[idx[i]] = 1;
  __syncthreads();
  const bool f = tid < E && flag[tid];
  const unsigned b = __ballot_sync(0xffffffffu, f);
  if (lane == 0) per_warp[warp] = __popc(b);
  __syncthreads();
  int rank = __popc(b & ((1u << lane) - 1u));
  for (int w = 0; w < warp; ++w) rank += per_warp[w];
  if (f && rank == y) found = tid;
  __syncthreads();
  return found;
}

// Grid row y's expert when the grid has R = min(E, N·K) routed rows (+ 1 for the shared expert, E).
__device__ __forceinline__ int row_expert(const int32_t* idx, int NK, int E, int R) {
  const int y = blockIdx.y;
  return y == R ? E : nth_expert(idx, NK, E, y);
}

// Grid row y's expert (−1: nothing to do) and its slots in rows[0 .. *c). One token (NK == K): row y < K
// owns slot y, whose expert is idx[y] (whatever the order, repeats included — each row its own slot), so
// the row needs one load instead of the scans of nth_expert and gather_slots; row K is the shared expert.
__device__ int row_slots(int* rows, int* count, int* c, const int32_t* idx, int NK, int K, int KS, int E) {
  const int R = min(E, NK), y = blockIdx.y;
  if (NK == K) {
    const int e = y == R ? E : idx[y];
    if (e != E && unsigned(e) >= unsigned(E)) return -1;
    if (threadIdx.x == 0) rows[0] = y == R ? K : y;
    __syncthreads();
    *c = 1;
    return e;
  }
  const int e = row_expert(idx, NK, E, R);
  if (e < 0) return -1;
  *c = gather_slots(rows, count, idx, NK, K, KS, e, E);
  return e;
}

// Expert e's matrix: the table's, or the shared expert's for e = E.
__device__ __forceinline__ const void* mat(const ExpertPtrs& t, const void* shared, int e, int E) {
  return e == E ? shared : t.p[e];
}

// grid (ceil(F / 8), min(E, N·K) (+ 1 shared)): h[s, f] = silu(gate_e[f] · x[s / KS]) · (up_e[f] · x[s / KS])
// for slots s of e.
template <typename Wt, int kChunk>
__global__ void __launch_bounds__(kWarps * 32)
    sm90_moe_small_gate_up(float* h, const float* x, const int32_t* idx, ExpertPtrs gate, ExpertPtrs up,
                           ExpertPtrs down, const void* sh_gate, const void* sh_up, const void* sh_down,
                           int NK, int K, int KS, int E, int D, int F, bool vec, bool aligned) {
  __shared__ int rows[kMoeSmallTokens * 16];
  __shared__ int count;
  dep_launch();
  // L2 hints, spread so that each block asks for a small slice (one SM's bulk-prefetch unit moves a large
  // request slowly, and a block is not done until its requests are): the block's own 8 rows of the shared
  // expert's gate and up (known before the wait), and slice blockIdx.x of the chosen expert's down matrix
  // for the next launch.
  const int64_t mat_bytes = int64_t(F) * D * int64_t(sizeof(Wt));  // gate, up and down are F·D each
  const int64_t rows_bytes = int64_t(kWarps) * D * int64_t(sizeof(Wt)), f0 = int64_t(blockIdx.x) * kWarps;
  const int64_t slice = (mat_bytes / gridDim.x + 15) / 16 * 16, s0 = int64_t(blockIdx.x) * slice;
  const bool hint = aligned && threadIdx.x == 0 && mat_bytes % 16 == 0 && rows_bytes % 16 == 0;
  if (hint && sh_gate && int(blockIdx.y) == min(E, NK) && f0 < F) {
    const int64_t n = std::min<int64_t>(rows_bytes, (F - f0) * D * int64_t(sizeof(Wt)));
    prefetch_l2(static_cast<const char*>(sh_gate) + f0 * D * int64_t(sizeof(Wt)), n, 0, 1);
    prefetch_l2(static_cast<const char*>(sh_up) + f0 * D * int64_t(sizeof(Wt)), n, 0, 1);
  }
  dep_wait();
  int c = 0;
  const int e = row_slots(rows, &count, &c, idx, NK, K, KS, E);
  if (e < 0) return;
  if (hint && s0 < mat_bytes)
    prefetch_l2(static_cast<const char*>(mat(down, sh_down, e, E)) + s0, std::min(slice, mat_bytes - s0), 0,
                1);
  const int lane = threadIdx.x & 31, f = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (c == 0 || f >= F) return;
  const Wt* gr = static_cast<const Wt*>(mat(gate, sh_gate, e, E)) + int64_t(f) * D;
  const Wt* ur = static_cast<const Wt*>(mat(up, sh_up, e, E)) + int64_t(f) * D;
  for (int j0 = 0; j0 < c; j0 += kChunk) {
    const int nt = min(kChunk, c - j0);
    const float* xr[kChunk];
#pragma unroll
    for (int t = 0; t < kChunk; ++t) xr[t] = x + int64_t(rows[j0 + min(t, nt - 1)] / KS) * D;
    float ag[kChunk] = {}, au[kChunk] = {};
    if (vec) {
#pragma unroll 4
      for (int i = lane * 8; i < D; i += 256) {
        float g8[8], u8[8];
        load8(gr + i, g8);
        load8(ur + i, u8);
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
          ag[t] += dot8(g8, xr[t] + i);
          au[t] += dot8(u8, xr[t] + i);
        }
      }
    } else {
      for (int i = lane; i < D; i += 32) {
        const float g1 = ld(gr[i]), u1 = ld(ur[i]);
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
          ag[t] += g1 * xr[t][i];
          au[t] += u1 * xr[t][i];
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kChunk; ++t) {
      const float g = warp_sum(ag[t]), u = warp_sum(au[t]);
      if (lane == 0 && t < nt) h[int64_t(rows[j0 + t]) * F + f] = g / (1.0f + expf(-g)) * u;
    }
  }
}

// grid (ceil(D / 8), min(E, N·K) (+ 1 shared)): yp[s, d] = down_e[d] · h[s] for slots s of e.
template <typename Wt, int kChunk>
__global__ void __launch_bounds__(kWarps * 32)
    sm90_moe_small_down(float* yp, const float* h, const int32_t* idx, ExpertPtrs down, const void* sh_down,
                        int NK, int K, int KS, int E, int D, int F, bool vec) {
  __shared__ int rows[kMoeSmallTokens * 16];
  __shared__ int count;
  dep_launch();
  dep_wait();
  int c = 0;
  const int e = row_slots(rows, &count, &c, idx, NK, K, KS, E);
  if (e < 0) return;
  const int lane = threadIdx.x & 31, d = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (c == 0 || d >= D) return;
  const Wt* wr = static_cast<const Wt*>(mat(down, sh_down, e, E)) + int64_t(d) * F;
  for (int j0 = 0; j0 < c; j0 += kChunk) {
    const int nt = min(kChunk, c - j0);
    const float* hr[kChunk];
#pragma unroll
    for (int t = 0; t < kChunk; ++t) hr[t] = h + int64_t(rows[j0 + min(t, nt - 1)]) * F;
    float acc[kChunk] = {};
    if (vec) {
#pragma unroll 4
      for (int i = lane * 8; i < F; i += 256) {
        float w8[8];
        load8(wr + i, w8);
#pragma unroll
        for (int t = 0; t < kChunk; ++t) acc[t] += dot8(w8, hr[t] + i);
      }
    } else {
      for (int i = lane; i < F; i += 32) {
        const float w1 = ld(wr[i]);
#pragma unroll
        for (int t = 0; t < kChunk; ++t) acc[t] += w1 * hr[t][i];
      }
    }
#pragma unroll
    for (int t = 0; t < kChunk; ++t) {
      const float s = warp_sum(acc[t]);
      if (lane == 0 && t < nt) yp[int64_t(rows[j0 + t]) * D + d] = s;
    }
  }
}

// grid N: out[n, d] = Σ_k w[n, k] · yp[n·KS + k, d], k ascending, then + yp[n·KS + K, d] (the shared
// expert) when KS > K.
__global__ void sm90_moe_small_combine(float* out, const float* yp, const float* w, int K, int KS, int D) {
  dep_launch();
  dep_wait();
  const int64_t n = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += w[n * K + k] * yp[(n * KS + k) * D + d];
    if (KS > K) acc = yp[(n * KS + K) * D + d] + acc;
    out[n * D + d] = acc;
  }
}

// grid N, 256 threads: x[n] (and h_out[n]) of a NormedInput (gemv.cuh normed_rows), one launch for the
// slots' combine, the residual add and the RMSNorm. Shared memory: [D] f32.
__global__ void __launch_bounds__(256) sm90_normed_input(NormArgs na, int D) {
  extern __shared__ __align__(16) float xs[];
  dep_launch();
  dep_wait();
  normed_rows<1>(xs, na, blockIdx.x, D, true);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

ExpertPtrs table(const std::vector<Tensor>& m, bool& aligned) {
  ExpertPtrs t{};
  for (size_t e = 0; e < m.size(); ++e) {
    t.p[e] = m[e].raw();
    aligned = aligned && aligned16(t.p[e]);
  }
  return t;
}

}  // namespace

void moe_experts_slots(Tensor yp, const Tensor& x, const Tensor& topk_idx, const std::vector<Tensor>& gate,
                       const std::vector<Tensor>& up, const std::vector<Tensor>& down,
                       const SharedExpert* shared) {
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size()),
                F = gate[0].size(0), NK = N * K, KS = K + (shared ? 1 : 0),
                EG = std::min(E, NK) + (shared ? 1 : 0);  // grid rows: the distinct experts at most, + shared
  bool al_gu = aligned16(x.raw()), al_dn = true;
  const ExpertPtrs g = table(gate, al_gu), u = table(up, al_gu), dn = table(down, al_dn);
  const void* sg = shared ? shared->gate.raw() : nullptr;
  const void* su = shared ? shared->up.raw() : nullptr;
  const void* sd = shared ? shared->down.raw() : nullptr;
  if (shared) {
    al_gu = al_gu && aligned16(sg) && aligned16(su);
    al_dn = al_dn && aligned16(sd);
  }
  Tensor h = Tensor::empty({N * KS, F}, DType::F32, Device::CUDA);  // h: [N·KS, F] silu(gate)·up per slot
  const bool vec_gu = al_gu && D % 8 == 0, vec_dn = al_dn && F % 8 == 0 && aligned16(h.raw());
  // kChunk: the slots accumulated at once per weight row; an expert has at most N slots (its tokens).
  auto run_chunk = [&](auto wt, auto ch) {
    using Wt = decltype(wt);
    constexpr int kChunk = decltype(ch)::value;
    launch_dep("moe_experts_small (gate, up)", sm90_moe_small_gate_up<Wt, kChunk>,
               dim3(unsigned((F + kWarps - 1) / kWarps), unsigned(EG)), kWarps * 32, 0, h.data<float>(),
               x.data<float>(), topk_idx.data<int32_t>(), g, u, dn, sg, su, sd, int(NK), int(K), int(KS),
               int(E), int(D), int(F), vec_gu, al_gu && al_dn);
    launch_dep("moe_experts_small (down)", sm90_moe_small_down<Wt, kChunk>,
               dim3(unsigned((D + kWarps - 1) / kWarps), unsigned(EG)), kWarps * 32, 0, yp.data<float>(),
               h.data<float>(), topk_idx.data<int32_t>(), dn, sd, int(NK), int(K), int(KS), int(E), int(D),
               int(F), vec_dn);
  };
  auto run = [&](auto wt) {
    if (N == 1) {
      run_chunk(wt, std::integral_constant<int, 1>{});
    } else if (N == 2) {
      run_chunk(wt, std::integral_constant<int, 2>{});
    } else {
      run_chunk(wt, std::integral_constant<int, 4>{});
    }
  };
  if (gate[0].dtype() == DType::F32) {
    run(float{});
  } else {
    run(bf16{});
  }
}

void moe_combine_slots(Tensor out, const Tensor& yp, const Tensor& topk_w, int64_t K, int64_t KS) {
  const int64_t N = out.size(0), D = out.size(1);
  launch_dep("moe_experts_small (combine)", sm90_moe_small_combine, unsigned(N), 1024, 0, out.data<float>(),
             yp.data<float>(), topk_w.data<float>(), int(K), int(KS), int(D));
}

void moe_experts_small(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                       const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                       const std::vector<Tensor>& down, const SharedExpert* shared) {
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), KS = K + (shared ? 1 : 0);
  Tensor yp = Tensor::empty({N * KS, D}, DType::F32, Device::CUDA);  // yp: [N·KS, D] expert output per slot
  moe_experts_slots(yp, x, topk_idx, gate, up, down, shared);
  moe_combine_slots(out, yp, topk_w, K, KS);
}

void normed_input(Tensor x, const NormedInput& in) {
  const int64_t N = in.h.size(0), D = in.h.size(1);
  NormArgs na = norm_args(in);
  na.x_out = x.data<float>();
  const size_t smem = size_t(D) * sizeof(float);
  allow_smem(sm90_normed_input, smem, "normed_input");
  launch_dep("normed_input (residual add + RMSNorm)", sm90_normed_input, unsigned(N), 256, smem, na, int(D));
}

}  // namespace dseek::ops::cuda
