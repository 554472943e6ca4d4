// moe_grouped.cu — the routed experts of a large batch (a prefill) on the GPU with the routing plan built
// on the device (spec/model.md §4; ops/moe.h moe_experts_grouped): no device→host copy of the expert ids,
// so the GPU never waits for the host between a layer's router and its experts.
// The shared expert, when given, is expert E: every token takes it once more (slots M .. M + N), weight 1.
//   1. count: rows per expert (atomics);
//   2. plan (one block): offsets = exclusive scan of the counts, the 128-row tile table, fill cursors;
//   3. scatter (a warp per token): claims a row of each of its experts and writes the token there as bf16;
//   4. gate/up: one grouped launch of paired products with SwiGLU in the epilogue → h [M, F] bf16;
//   5. down: one grouped launch → yp [M, D] bf16;
//   6. combine (a block per token): out[n] = Σ_k w[n, k] · yp[row(n, k)] in f32, in slot order.
// The order of rows within an expert depends on the atomics, but each product row depends only on its own
// input row and the sums in step 6 run in slot order, so the result is the same bit for bit every run.
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kPlanThreads = 1024;  // the plan kernel's block; experts ≤ this (moe_experts_grouped_applies)

// Rows per expert: a shared-memory histogram per block (E ≤ 1024), then one global add per expert.
__global__ void count_kernel(int* counts, const int32_t* idx, int64_t M, int E) {
  __shared__ int local[kPlanThreads];
  for (int e = threadIdx.x; e < E; e += blockDim.x) local[e] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int e = idx[i];
    if (e >= 0 && e < E) atomicAdd(&local[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (local[e]) atomicAdd(&counts[e], local[e]);
}

// offsets [E + 1], cursor [E] (= offsets), tiles: for each expert ceil(count / 128) tiles {e, 128·j}, in
// expert order; n_tiles = their number.
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(int64_t* offsets, int* cursor, GroupedTile* tiles, int* n_tiles, int* counts, int E) {
  __shared__ int row0[kPlanThreads + 1], tile0[kPlanThreads + 1];
  if (threadIdx.x == 0) {  // E ≤ 1024 serial additions: cheaper than a scan's barriers at these sizes
    int r = 0, t = 0;
    for (int e = 0; e < E; ++e) {
      row0[e] = r;
      tile0[e] = t;
      r += counts[e];
      t += (counts[e] + int(kGroupedRowTile) - 1) / int(kGroupedRowTile);
    }
    row0[E] = r;
    *n_tiles = t;
    offsets[E] = r;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    offsets[e] = row0[e];
    cursor[e] = row0[e];
    const int n = (counts[e] + int(kGroupedRowTile) - 1) / int(kGroupedRowTile);
    for (int j = 0; j < n; ++j) tiles[tile0[e] + j] = {int32_t(e), int32_t(j * kGroupedRowTile)};
  }
}

// Token n's slots n·K + k (and M + n, the shared expert E, when `shared`): row_of_slot[slot] = the
// permuted row it claimed (−1 for an id outside 0 ..< E), and xp[row] = bf16(x[n]). A warp per token: the
// row is read once, lanes 0 .. K claim the rows (K < 32). D % 4 == 0.
__global__ void scatter_kernel(bf16* __restrict__ xp, int32_t* __restrict__ row_of_slot, int* cursor,
                               const int32_t* __restrict__ idx, const float* __restrict__ x, int64_t N,
                               int64_t M, int K, int D, int E, bool shared) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  int r = -1;
  if (lane < K) {
    const int e = idx[n * K + lane];
    if (e >= 0 && e < E) r = atomicAdd(&cursor[e], 1);
    row_of_slot[n * K + lane] = r;
  } else if (lane == K && shared) {
    r = atomicAdd(&cursor[E], 1);
    row_of_slot[M + n] = r;
  }
  const int slots = K + (shared ? 1 : 0);
  const float* src = x + n * D;
  // Each 4 columns read once, written to every claimed row. Every lane runs every pass (the shuffles need
  // the whole warp); lanes past the row's end only take part in them.
  for (int d0 = 0; d0 < D; d0 += 128) {
    const int d = d0 + lane * 4;
    __nv_bfloat162 lo{}, hi{};
    if (d < D) {
      const float4 f = *reinterpret_cast<const float4*>(src + d);
      lo = __floats2bfloat162_rn(f.x, f.y);
      hi = __floats2bfloat162_rn(f.z, f.w);
    }
    for (int k = 0; k < slots; ++k) {
      const int rk = __shfl_sync(0xffffffffu, r, k);
      if (rk < 0 || d >= D) continue;
      __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(xp + int64_t(rk) * D + d);
      dst[0] = lo;
      dst[1] = hi;
    }
  }
}

// out[n, :] = Σ_k w[n, k] · yp[row_of_slot[n·K + k], :] (slots in order, f32 sums; unassigned slots add
// nothing), then + yp[row_of_slot[M + n], :] with `shared`. yp is bf16 (as the expert outputs of vLLM's
// fused MoE and of transformers), D % 4 == 0.
__global__ void combine_kernel(float* __restrict__ out, const bf16* __restrict__ yp,
                               const float* __restrict__ w, const int32_t* __restrict__ row_of_slot,
                               int64_t M, int K, int D, bool shared) {
  const int64_t n = blockIdx.x;
  for (int d = threadIdx.x * 4; d < D; d += blockDim.x * 4) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int k = 0; k <= K; ++k) {
      if (k == K && !shared) break;
      const int r = k < K ? row_of_slot[n * K + k] : row_of_slot[M + n];
      if (r < 0) continue;
      const float wk = k < K ? w[n * K + k] : 1.0f;
      const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(yp + int64_t(r) * D + d);
      const float2 a = __bfloat1622float2(y[0]), b = __bfloat1622float2(y[1]);
      acc.x += wk * a.x;
      acc.y += wk * a.y;
      acc.z += wk * b.x;
      acc.w += wk * b.y;
    }
    *reinterpret_cast<float4*>(out + n * D + d) = acc;
  }
}

}  // namespace

bool moe_experts_grouped_applies(const Tensor& x, const std::vector<Tensor>& gate) {
  if (x.device() != Device::CUDA || x.dtype() != DType::F32 || x.ndim() != 2 || x.size(1) % 8 != 0)
    return false;
  if (gate.empty() || int64_t(gate.size()) >= kPlanThreads || gate[0].ndim() != 2) return false;
  const Tensor& g = gate[0];
  return g.dtype() == DType::BF16 && !g.block_scale() && g.size(0) % 8 == 0;
}

void moe_experts_grouped(Tensor out, const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w,
                         const std::vector<Tensor>& gate, const std::vector<Tensor>& up,
                         const std::vector<Tensor>& down, const SharedExpert& shared) {
  const bool sh = shared.defined();
  const int64_t N = x.size(0), D = x.size(1), K = topk_idx.size(1), E = int64_t(gate.size()),
                F = gate[0].size(0), M = N * K, S = M + (sh ? N : 0), ET = E + (sh ? 1 : 0);
  DSEEK_CHECK(S < (int64_t(1) << 31) && S * std::max(D, F) < (int64_t(1) << 40), "moe_experts_grouped: ", N,
              " tokens × ", K, " experts is too many rows");
  const int64_t max_tiles = (S + kGroupedRowTile - 1) / kGroupedRowTile + ET;
  // ints: counts [ET], cursor [ET], n_tiles [1], row_of_slot [S]; offsets [ET + 1]; tiles [max_tiles].
  Tensor ints = Tensor::empty({2 * ET + 1 + S}, DType::I32, Device::CUDA);
  Tensor offsets = Tensor::empty({ET + 1}, DType::I64, Device::CUDA);
  Tensor tiles = Tensor::empty({max_tiles * 2}, DType::I32, Device::CUDA);  // tiles: [max_tiles] GroupedTile
  int* counts = ints.data<int32_t>();
  int* cursor = counts + ET;
  int* n_tiles = cursor + ET;
  int32_t* row_of_slot = n_tiles + 1;
  auto* tt = reinterpret_cast<GroupedTile*>(tiles.data<int32_t>());
  // The experts' matrices as device pointer tables: gate [ET], up [ET], down [ET] (the shared one last).
  std::vector<const void*> ptrs;
  for (int m = 0; m < 3; ++m) {
    for (const Tensor& t : m == 0 ? gate : m == 1 ? up : down) ptrs.push_back(t.raw());
    if (sh) ptrs.push_back((m == 0 ? shared.gate : m == 1 ? shared.up : shared.down).raw());
  }
  // The shared expert's count (every token) goes up with the pointers: counts start as {0 …, N}.
  std::vector<int32_t> init(size_t(2 * ET + 1), 0);
  if (sh) init[size_t(E)] = int32_t(N);
  Tensor table = Tensor::empty({int64_t(ptrs.size())}, DType::I64, Device::CUDA);
  copy_bytes(table.raw(), Device::CUDA, ptrs.data(), Device::CPU, ptrs.size() * sizeof(void*));
  copy_bytes(counts, Device::CUDA, init.data(), Device::CPU, init.size() * sizeof(int32_t));
  const auto* wt = reinterpret_cast<const void* const*>(table.raw());

  count_kernel<<<unsigned(std::min<int64_t>((M + 4095) / 4096, 1024)), 256>>>(
      counts, topk_idx.data<int32_t>(), M, int(E));
  DSEEK_CUDA_LAUNCH_CHECK("moe_experts_grouped (count)");
  plan_kernel<<<1, kPlanThreads>>>(offsets.data<int64_t>(), cursor, tt, n_tiles, counts, int(ET));
  DSEEK_CUDA_LAUNCH_CHECK("moe_experts_grouped (plan)");
  Tensor xp = Tensor::empty({S, D}, DType::BF16, Device::CUDA);  // xp: [S, D] tokens grouped by expert
  scatter_kernel<<<unsigned((N + 7) / 8), 256>>>(static_cast<bf16*>(xp.raw()), row_of_slot, cursor,
                                                 topk_idx.data<int32_t>(), x.data<float>(), N, M, int(K),
                                                 int(D), int(E), sh);
  DSEEK_CUDA_LAUNCH_CHECK("moe_experts_grouped (scatter)");
  Tensor h = Tensor::empty({S, F}, DType::BF16, Device::CUDA);  // h: [S, F] silu(gate) ⊙ up per row
  grouped_gemm_device(h.raw(), DType::BF16, xp.raw(), wt, wt + ET, offsets.data<int64_t>(), tt, n_tiles,
                      max_tiles, D, F);
  Tensor yp = Tensor::empty({S, D}, DType::BF16, Device::CUDA);  // yp: [S, D] each row's expert output
  grouped_gemm_device(yp.raw(), DType::BF16, h.raw(), wt + 2 * ET, nullptr, offsets.data<int64_t>(), tt,
                      n_tiles, max_tiles, F, D);
  combine_kernel<<<unsigned(N), 256>>>(out.data<float>(), static_cast<const bf16*>(yp.raw()),
                                       topk_w.data<float>(), row_of_slot, M, int(K), int(D), sh);
  DSEEK_CUDA_LAUNCH_CHECK("moe_experts_grouped (combine)");
}

}  // namespace dseek::ops::cuda
