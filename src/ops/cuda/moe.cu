// moe.cu — token permutation by expert, grouped expert products (one cuBLASLt product per expert with
// rows) and the weighted un-permutation, on the GPU (spec/model.md §4).
#include <algorithm>
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm.h"

namespace dseek::ops::cuda {

namespace {

template <typename T, typename TO>
__global__ void permute_kernel(TO* xp, const T* x, const int64_t* slot, int64_t K, int64_t D) {
  const int64_t r = blockIdx.x;
  const T* src = x + (slot[r] / K) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) xp[r * D + i] = st<TO>(ld(src[i]));
}

// Warp-per-row forms of the two above (D % 8 == 0, rows 16-byte aligned; eight elements per lane access, the
// same per-element arithmetic). 8 rows per 256-thread block.
template <typename T, typename TO>
__global__ void permute_vec_kernel(TO* xp, const T* x, const int64_t* slot, int64_t M, int64_t K, int64_t D) {
  const int64_t r = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (r >= M) return;
  const T* src = x + (slot[r] / K) * D;
  for (int64_t i = (threadIdx.x & 31) * 8; i < D; i += 256) {
    float v[8];
    load8(src + i, v);
    store8(xp + r * D + i, v);
  }
}
template <typename T, typename TY>
__global__ void unpermute_vec_kernel(T* out, const TY* yp, const T* w, const int64_t* row, int64_t N,
                                     int64_t K, int64_t D) {
  const int64_t n = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (n >= N) return;
  for (int64_t i = (threadIdx.x & 31) * 8; i < D; i += 256) {
    float acc[8] = {};
    for (int64_t k = 0; k < K; ++k) {
      const float g = ld(w[n * K + k]);
      float y[8];
      load8(yp + row[n * K + k] * D + i, y);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += g * y[j];
    }
    store8(out + n * D + i, acc);
  }
}

template <typename T, typename TY>
__global__ void unpermute_kernel(T* out, const TY* yp, const T* w, const int64_t* row, int64_t K, int64_t D) {
  const int64_t n = blockIdx.x;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += ld(w[n * K + k]) * ld(yp[row[n * K + k] * D + i]);
    out[n * D + i] = st<T>(acc);
  }
}

// grid (ceil(I / 64), ceil(O / 64), E), block (32, 8): out[e] [I, O] = w[e]ᵀ for w[e] [O, I] (bf16, I and O
// even), through a 64×64 shared tile (pairs of elements read and written; rows of 65 so the column reads of
// a warp fall in different banks).
__global__ void transpose_many_kernel(bf16* out, const bf16* const* w, int64_t O, int64_t I) {
  __shared__ bf16 tile[64][65];
  const bf16* src = w[blockIdx.z];
  bf16* dst = out + int64_t(blockIdx.z) * I * O;
  const int64_t i0 = int64_t(blockIdx.x) * 64, o0 = int64_t(blockIdx.y) * 64;
  const int c = 2 * int(threadIdx.x);
  for (int r = threadIdx.y; r < 64; r += 8) {  // row o0 + r of w[e], columns i0 + c, + 1
    const int64_t o = o0 + r, i = i0 + c;
    if (o < O && i < I) {
      const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(src + o * I + i);
      tile[r][c] = v.x;
      tile[r][c + 1] = v.y;
    }
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 64; r += 8) {  // row i0 + r of out[e], columns o0 + c, + 1
    const int64_t i = i0 + r, o = o0 + c;
    if (i < I && o < O) {
      __nv_bfloat162 v;
      v.x = tile[c][r];
      v.y = tile[c + 1][r];
      *reinterpret_cast<__nv_bfloat162*>(dst + i * O + o) = v;
    }
  }
}

// Experts e0 .. e0 + n − 1 of w (bf16 [O, I] each, O and I even) transposed into wt [≥ n, I, O]; the
// returned list views wt's first n matrices.
std::vector<Tensor> transpose_experts(Tensor& wt, const std::vector<Tensor>& w, int64_t e0, int64_t n) {
  const int64_t O = w[0].size(0), I = w[0].size(1);
  std::vector<int64_t> ptrs;
  for (int64_t e = e0; e < e0 + n; ++e)
    ptrs.push_back(int64_t(reinterpret_cast<uintptr_t>(w[size_t(e)].raw())));
  const Tensor table = upload_i64(ptrs);
  transpose_many_kernel<<<dim3(unsigned((I + 63) / 64), unsigned((O + 63) / 64), unsigned(n)), dim3(32, 8)>>>(
      static_cast<bf16*>(wt.raw()), reinterpret_cast<const bf16* const*>(table.raw()), O, I);
  DSEEK_CUDA_LAUNCH_CHECK("grouped expert weights (transpose)");
  std::vector<Tensor> views;
  for (int64_t e = 0; e < n; ++e) views.push_back(wt.slice(e, 1).view({I, O}));
  return views;
}

bool bf16_plain(const std::vector<Tensor>& w) {
  for (const Tensor& t : w)
    if (t.dtype() != DType::BF16 || t.block_scale() || t.size(0) % 2 != 0 || t.size(1) % 2 != 0) return false;
  return !w.empty();
}

// Experts per chunk of transposed weights: at most scratch_bytes for `mats` matrices of [O, I] each.
int64_t chunk_of(int64_t E, int64_t O, int64_t I, int mats, int64_t scratch_bytes) {
  return std::clamp<int64_t>(scratch_bytes / std::max<int64_t>(int64_t(mats) * I * O * 2, 1), 1, E);
}

// The experts in chunks of at most `chunk` (their weights transposed into a scratch per chunk, which the
// stream orders after the chunk before's products): fn(e0, n, offs) for each chunk with rows, offs its
// experts' absolute row ranges [n + 1]. Stops (false) when fn finds the operands unsuited.
template <typename Fn>
bool for_expert_chunks(const MoePlan& p, int64_t E, int64_t chunk, Fn&& fn) {
  for (int64_t e0 = 0; e0 < E; e0 += chunk) {
    const int64_t n = std::min(chunk, E - e0);
    if (p.offsets[size_t(e0 + n)] == p.offsets[size_t(e0)]) continue;  // no rows in these experts
    if (!fn(e0, n, std::vector<int64_t>(p.offsets.begin() + e0, p.offsets.begin() + e0 + n + 1)))
      return false;
  }
  return true;
}

}  // namespace

bool grouped_linear_dgrad(Tensor dx, const Tensor& dy, const std::vector<Tensor>& w, const MoePlan& p,
                          int64_t scratch_bytes) {
  const int64_t E = int64_t(w.size()), M = dy.size(0), O = dy.size(1), I = dx.size(1);
  if (E == 0 || M == 0) return E != 0;
  if (!bf16_plain(w)) return false;
  // The transposed weights go through a scratch of at most scratch_bytes (at least one expert).
  const int64_t chunk = chunk_of(E, O, I, 1, scratch_bytes);
  Tensor wt = Tensor::empty({chunk, I, O}, DType::BF16, Device::CUDA);  // wt: [chunk, I, O], w[e]ᵀ
  return for_expert_chunks(p, E, chunk, [&](int64_t e0, int64_t n, const std::vector<int64_t>& offs) {
    const std::vector<Tensor> wts = transpose_experts(wt, w, e0, n);
    if (!grouped_gemm_applies(dx, dy, wts)) return false;
    grouped_gemm(dx, dy, wts, offs, 1);
    return true;
  });
}

bool grouped_pair_dgrad(Tensor dx, const Tensor& dya, const Tensor& dyb, const std::vector<Tensor>& wa,
                        const std::vector<Tensor>& wb, const MoePlan& p, int64_t scratch_bytes) {
  const int64_t E = int64_t(wa.size()), M = dya.size(0), O = dya.size(1), I = dx.size(1);
  if (!bf16_plain(wa) || !bf16_plain(wb) || int64_t(wb.size()) != E || dyb.dtype() != dya.dtype())
    return false;
  if (M == 0) return true;
  const int64_t chunk = chunk_of(E, O, I, 2, scratch_bytes);
  Tensor wta = Tensor::empty({chunk, I, O}, DType::BF16, Device::CUDA),  // wta, wtb: [chunk, I, O]
      wtb = Tensor::empty({chunk, I, O}, DType::BF16, Device::CUDA);
  return for_expert_chunks(p, E, chunk, [&](int64_t e0, int64_t n, const std::vector<int64_t>& offs) {
    const std::vector<Tensor> ta = transpose_experts(wta, wa, e0, n), tb = transpose_experts(wtb, wb, e0, n);
    if (!grouped_gemm2_applies(dx, dya, ta, dyb, tb)) return false;
    grouped_gemm2(dx, dya, ta, dyb, tb, offs);  // dx = dya·wa + dyb·wb, one product along 2·O
    return true;
  });
}

bool grouped_swiglu_dgrad(Tensor dg, Tensor du, const Tensor& dy, const std::vector<Tensor>& wd,
                          const Tensor& g, const Tensor& u, const MoePlan& p, int64_t scratch_bytes) {
  const int64_t E = int64_t(wd.size()), M = dy.size(0), D = dy.size(1), F = g.size(1);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dg, &du, &dy, &g, &u})
    if (t->dtype() != DType::BF16 || (reinterpret_cast<uintptr_t>(t->raw()) & 15) != 0) return false;
  if (!bf16_plain(wd) || D % 8 != 0 || F % 2 != 0) return false;
  if (M == 0) return true;
  const int64_t chunk = chunk_of(E, D, F, 1, scratch_bytes);
  Tensor wt = Tensor::empty({chunk, F, D}, DType::BF16, Device::CUDA);  // wt: [chunk, F, D], wd[e]ᵀ
  return for_expert_chunks(p, E, chunk, [&](int64_t e0, int64_t n, const std::vector<int64_t>& offs) {
    grouped_swiglu_bwd(dg, du, dy, transpose_experts(wt, wd, e0, n), g, u, offs);
    return true;
  });
}

bool grouped_swiglu_fwd(Tensor h, Tensor g, Tensor u, const Tensor& x, const std::vector<Tensor>& wg,
                        const std::vector<Tensor>& wu, const MoePlan& p) {
  if (!grouped_swiglu_applies(x, wg, wu) || (h.dtype() != DType::BF16 && h.dtype() != DType::F32))
    return false;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&g, &u})
    if (t->defined() && (t->dtype() != DType::BF16 || (reinterpret_cast<uintptr_t>(t->raw()) & 3) != 0))
      return false;
  if (x.size(0) == 0) return true;
  grouped_swiglu(h, g, u, x, wg, wu, p.offsets);
  return true;
}

void moe_permute(Tensor xp, const Tensor& x, const MoePlan& p) {
  const int64_t M = p.tokens * p.top_k, D = x.size(1);
  if (M == 0) return;
  Tensor keep;
  const int64_t* slot = plan_slots(p, keep);
  if (x.dtype() == DType::F32 && xp.dtype() == DType::BF16 && rows_by_8(D, {x.raw(), xp.raw()})) {
    permute_vec_kernel<float, bf16>
        <<<unsigned((M + 7) / 8), 256>>>(static_cast<bf16*>(xp.raw()), x.data<float>(), slot, M, p.top_k, D);
    DSEEK_CUDA_LAUNCH_CHECK("moe_permute");
    return;
  }
  with_act(x.dtype(), "moe_permute", [&](auto t) {
    with_act(xp.dtype(), "moe_permute", [&](auto to) {  // xp bf16 under f32 x: the experts' operand
      using T = decltype(t);
      using TO = decltype(to);
      permute_kernel<<<int(M), 128>>>(static_cast<TO*>(xp.raw()), static_cast<const T*>(x.raw()), slot,
                                      p.top_k, D);
    });
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
  Tensor keep;
  const int64_t* row = plan_rows(p, keep);
  if (out.dtype() == DType::F32 && yp.dtype() == DType::BF16 && rows_by_8(D, {out.raw(), yp.raw()})) {
    unpermute_vec_kernel<float, bf16><<<unsigned((N + 7) / 8), 256>>>(
        out.data<float>(), static_cast<const bf16*>(yp.raw()), topk_w.data<float>(), row, N, p.top_k, D);
    DSEEK_CUDA_LAUNCH_CHECK("moe_unpermute");
    return;
  }
  with_act(out.dtype(), "moe_unpermute", [&](auto t) {
    with_act(yp.dtype(), "moe_unpermute", [&](auto ty) {  // yp bf16 under f32 out: the experts' bf16 output
      using T = decltype(t);
      using TY = decltype(ty);
      unpermute_kernel<<<int(N), 128>>>(static_cast<T*>(out.raw()), static_cast<const TY*>(yp.raw()),
                                        static_cast<const T*>(topk_w.raw()), row, p.top_k, D);
    });
  });
  DSEEK_CUDA_LAUNCH_CHECK("moe_unpermute");
}

}  // namespace dseek::ops::cuda
