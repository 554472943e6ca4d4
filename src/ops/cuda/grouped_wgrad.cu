// grouped_wgrad.cu — the weight gradients of a DeepSeekMoE layer's expert products in one launch (bf16
// training, issue 6; spec/model.md §4): for every expert e, dW_e[O, I] += dy[rows of e]ᵀ · x[rows of e],
// where the reduction runs over the expert's tokens — a grouped product whose K (not M) differs per
// expert. bf16 operands on the tensor cores (m16n8k16 mma, f32 accumulation), 128×128 output tiles per
// block (blockIdx.x: the tile, blockIdx.y: the expert), K in steps of 32 rows through a two-stage cp.async
// pipeline. Both operands arrive token-major (dy[r, o], x[r, i] contiguous along o and i), so ldmatrix.trans
// turns their shared-memory rows into the mma's K-paired fragments; rows are padded by 8 elements so the
// eight addresses of an ldmatrix fall in different banks. Each output element belongs to one thread (no
// atomics): a deterministic sum in row order within each 32-row step.
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/mma.cuh"

namespace dseek::ops::cuda {

namespace {

constexpr int WBM = 128, WBN = 128, WBK = 32, WLD = 128 + 8, WTHREADS = 256;

// Warps 2 (along O) × 4 (along I); each warp owns a 64 × 32 piece of the tile: 4 × 4 mma tiles.
__global__ void __launch_bounds__(WTHREADS)
    grouped_wgrad_kernel(float* const* dw, const bf16* dy, const bf16* x, const int64_t* offsets, int64_t O,
                         int64_t I, int tiles_n) {
  const int e = blockIdx.y;
  const int64_t r0 = offsets[e], r1 = offsets[e + 1];
  if (r1 <= r0) return;                         // no tokens: dW_e untouched
  __shared__ alignas(16) bf16 sA[2][WBK][WLD];  // dy rows: [k][o]
  __shared__ alignas(16) bf16 sB[2][WBK][WLD];  // x rows:  [k][i]
  const int64_t o0 = int64_t(blockIdx.x / tiles_n) * WBM, i0 = int64_t(blockIdx.x % tiles_n) * WBN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
  float acc[4][4][4] = {};
  auto load = [&](int stage, int64_t k0) {
    for (int c = tid; c < WBK * 16; c += WTHREADS) {  // 32 rows × 16 chunks of 8 elements, per operand
      const int row = c / 16, ch = c % 16;
      const int64_t r = k0 + row, oc = o0 + ch * 8, ic = i0 + ch * 8;
      const bool okA = r < r1 && oc < O, okB = r < r1 && ic < I;
      cp_async16(&sA[stage][row][ch * 8], okA ? dy + r * O + oc : dy, okA);
      cp_async16(&sB[stage][row][ch * 8], okB ? x + r * I + ic : x, okB);
    }
  };
  const int64_t steps = (r1 - r0 + WBK - 1) / WBK;
  load(0, r0);
  cp_async_commit();
  const int j = lane / 8, l8 = lane % 8;
  for (int64_t kt = 0; kt < steps; ++kt) {
    if (kt + 1 < steps) load(int((kt + 1) & 1), r0 + (kt + 1) * WBK);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int s = int(kt & 1);
    for (int kk = 0; kk < WBK; kk += 16) {
      uint32_t a[4][4], b[2][4];
      // A = dyᵀ (m = o, k = row): matrices (m0, k0-7), (m0+8, k0-7), (m0, k8-15), (m0+8, k8-15)
      for (int mt = 0; mt < 4; ++mt)
        ldsm_x4<true>(a[mt], &sA[s][kk + l8 + 8 * (j / 2)][wm + mt * 16 + 8 * (j % 2)]);
      // B = x (k = row, n = i): matrices (k0-7, n0), (k8-15, n0), (k0-7, n0+8), (k8-15, n0+8)
      for (int nt2 = 0; nt2 < 2; ++nt2)
        ldsm_x4<true>(b[nt2], &sB[s][kk + l8 + 8 * (j % 2)][wn + nt2 * 16 + 8 * (j / 2)]);
      for (int mt = 0; mt < 4; ++mt)
        for (int nt = 0; nt < 4; ++nt)
          mma16816<bf16>(acc[mt][nt], a[mt], b[nt / 2][(nt % 2) * 2], b[nt / 2][(nt % 2) * 2 + 1]);
    }
    __syncthreads();
  }
  float* out = dw[e];
  const int g = lane / 4, t = lane % 4;
  for (int mt = 0; mt < 4; ++mt)
    for (int nt = 0; nt < 4; ++nt) {
      const int64_t m = o0 + wm + mt * 16 + g, n = i0 + wn + nt * 8 + 2 * t;
      for (int h = 0; h < 2; ++h) {  // rows m and m + 8: accumulators (0, 1) and (2, 3)
        const int64_t mr = m + 8 * h;
        if (mr >= O) continue;
        if (n < I) out[mr * I + n] += acc[mt][nt][2 * h];
        if (n + 1 < I) out[mr * I + n + 1] += acc[mt][nt][2 * h + 1];
      }
    }
}

}  // namespace

bool grouped_linear_wgrad(const std::vector<Tensor>& dw, const Tensor& dy, const Tensor& x,
                          const MoePlan& p) {
  const int64_t E = int64_t(dw.size()), O = dy.size(1), I = x.size(1);
  if (dy.dtype() != DType::BF16 || x.dtype() != DType::BF16 || O % 8 != 0 || I % 8 != 0 ||
      (reinterpret_cast<uintptr_t>(dy.raw()) & 15) != 0 || (reinterpret_cast<uintptr_t>(x.raw()) & 15) != 0)
    return false;
  for (const Tensor& t : dw)
    if (t.dtype() != DType::F32 || t.size(0) != O || t.size(1) != I) return false;
  if (E == 0 || dy.size(0) == 0) return true;
  std::vector<int64_t> ptrs;
  for (const Tensor& t : dw) ptrs.push_back(int64_t(reinterpret_cast<uintptr_t>(t.raw())));
  const Tensor table = upload_i64(ptrs), offs = upload_i64(p.offsets);
  const int tiles_m = int((O + WBM - 1) / WBM), tiles_n = int((I + WBN - 1) / WBN);
  grouped_wgrad_kernel<<<dim3(unsigned(tiles_m * tiles_n), unsigned(E)), WTHREADS>>>(
      reinterpret_cast<float* const*>(table.raw()), static_cast<const bf16*>(dy.raw()),
      static_cast<const bf16*>(x.raw()), offs.data<int64_t>(), O, I, tiles_n);
  DSEEK_CUDA_LAUNCH_CHECK("grouped_linear_wgrad");
  return true;
}

}  // namespace dseek::ops::cuda
