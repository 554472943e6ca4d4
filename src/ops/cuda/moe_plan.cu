// moe_plan.cu — the MoE routing plan built on the GPU (ops/moe.h MoePlan::build_on_device; spec/model.md
// §4.3): the order of the host's MoePlan::build (experts in order, within an expert the slots in order), so
// training steps stay bit-reproducible, in three passes over chunks of 1024 slots:
//   1. count: per chunk, how many of its slots each expert got (shared-memory counters; counts only, so
//      the atomics' order does not matter);
//   2. scan (one block, a thread per expert): the experts' offsets and, per chunk and expert, the first
//      permuted row that chunk's slots of that expert take;
//   3. place: per chunk, each slot's rank among the chunk's earlier slots of its expert (warp match masks,
//      then the warps' counts in order) gives its row: row[s] and slot[row].
// Only the E + 1 offsets (and a flag for an expert id out of range) travel to the host, which the grouped
// kernels need for their tile tables.
#include <vector>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kSlots = 1024;      // slots per chunk: one per thread, 32 warps
constexpr int kMaxExperts = 256;  // the place pass keeps [32 warps][E] counters in shared memory

__global__ void __launch_bounds__(kSlots)
    plan_count_kernel(int* __restrict__ counts, unsigned long long* __restrict__ bad,
                      const int32_t* __restrict__ idx, int64_t M, int E) {
  extern __shared__ int c[];  // [E]
  for (int e = threadIdx.x; e < E; e += blockDim.x) c[e] = 0;
  __syncthreads();
  const int64_t s = int64_t(blockIdx.x) * kSlots + threadIdx.x;
  if (s < M) {
    const int e = idx[s];
    if (e >= 0 && e < E) {
      atomicAdd(&c[e], 1);
    } else {
      atomicExch(bad, 1ull);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[int64_t(blockIdx.x) * E + e] = c[e];
}

// One block of ≥ E threads. offsets [E + 1]; base [chunks, E]: offsets[e] + Σ over earlier chunks.
__global__ void plan_scan_kernel(int64_t* __restrict__ base, int64_t* __restrict__ offsets,
                                 const int* __restrict__ counts, int chunks, int E) {
  __shared__ int64_t start[kMaxExperts + 1];
  const int e = threadIdx.x;
  int64_t total = 0;
  if (e < E)
    for (int c = 0; c < chunks; ++c) total += counts[int64_t(c) * E + e];
  if (e < E) start[e + 1] = total;
  __syncthreads();
  if (e == 0) {  // exclusive prefix over the experts, in order
    start[0] = 0;
    for (int i = 1; i <= E; ++i) start[i] += start[i - 1];
  }
  __syncthreads();
  if (e <= E) offsets[e] = start[e];
  if (e < E) {
    int64_t run = start[e];
    for (int c = 0; c < chunks; ++c) {
      base[int64_t(c) * E + e] = run;
      run += counts[int64_t(c) * E + e];
    }
  }
}

__global__ void __launch_bounds__(kSlots)
    plan_place_kernel(int64_t* __restrict__ slot, int64_t* __restrict__ row, const int32_t* __restrict__ idx,
                      const int64_t* __restrict__ base, int64_t M, int E) {
  extern __shared__ int wc[];  // [32 warps][E]: each warp's count per expert, then the exclusive prefix
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < 32 * E; i += blockDim.x) wc[i] = 0;
  __syncthreads();
  const int64_t s = int64_t(blockIdx.x) * kSlots + threadIdx.x;
  const int e = s < M ? idx[s] : -1;  // ids were checked by the count pass (a bad one aborts the plan)
  const bool valid = e >= 0 && e < E;
  const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1);  // lanes with this lane's expert
  const int rank = __popc(same & ((1u << lane) - 1u));                  // earlier lanes among them
  if (valid && rank == 0) wc[warp * E + e] = __popc(same);
  __syncthreads();
  for (int x = threadIdx.x; x < E; x += blockDim.x) {  // the warps in order, per expert
    int run = 0;
    for (int w = 0; w < 32; ++w) {
      const int n = wc[w * E + x];
      wc[w * E + x] = run;
      run += n;
    }
  }
  __syncthreads();
  if (valid) {
    const int64_t r = base[int64_t(blockIdx.x) * E + e] + wc[warp * E + e] + rank;
    row[s] = r;
    slot[r] = s;
  }
}

}  // namespace

void moe_plan_build(MoePlan& p, const Tensor& topk_idx) {
  const int64_t M = p.tokens * p.top_k;
  const int E = int(p.experts);
  DSEEK_CHECK(E <= kMaxExperts, "moe_plan_build: at most ", kMaxExperts, " experts on the device, not ", E);
  p.d_slot = Tensor::empty({std::max<int64_t>(M, 1)}, DType::I64, Device::CUDA);
  p.d_row = Tensor::empty({std::max<int64_t>(M, 1)}, DType::I64, Device::CUDA);
  if (M == 0) {
    p.offsets.assign(size_t(E) + 1, 0);
    return;
  }
  const int chunks = int((M + kSlots - 1) / kSlots);
  Tensor counts = Tensor::empty({int64_t(chunks) * E}, DType::I32, Device::CUDA);  // counts: [chunks, E]
  Tensor base = Tensor::empty({int64_t(chunks) * E}, DType::I64, Device::CUDA);    // base: [chunks, E]
  Tensor out = Tensor::zeros({int64_t(E) + 2}, DType::I64, Device::CUDA);  // out: offsets [E + 1], bad flag
  auto* off = out.data<int64_t>();
  const auto* ids = topk_idx.data<int32_t>();
  plan_count_kernel<<<unsigned(chunks), kSlots, size_t(E) * sizeof(int)>>>(
      counts.data<int32_t>(), reinterpret_cast<unsigned long long*>(off + E + 1), ids, M, E);
  DSEEK_CUDA_LAUNCH_CHECK("moe_plan_build (count)");
  plan_scan_kernel<<<1, unsigned((E + 32) / 32 * 32)>>>(base.data<int64_t>(), off, counts.data<int32_t>(),
                                                        chunks, E);
  DSEEK_CUDA_LAUNCH_CHECK("moe_plan_build (scan)");
  plan_place_kernel<<<unsigned(chunks), kSlots, size_t(32) * E * sizeof(int)>>>(
      p.d_slot.data<int64_t>(), p.d_row.data<int64_t>(), ids, base.data<int64_t>(), M, E);
  DSEEK_CUDA_LAUNCH_CHECK("moe_plan_build (place)");
  std::vector<int64_t> host(size_t(E) + 2);
  copy_bytes(host.data(), Device::CPU, off, Device::CUDA, host.size() * sizeof(int64_t));
  DSEEK_CHECK(host[size_t(E) + 1] == 0, "MoePlan::build_on_device: an expert id outside 0 ..< ", E);
  p.offsets.assign(host.begin(), host.begin() + E + 1);
}

const int64_t* plan_slots(const MoePlan& p, Tensor& keep) {
  if (p.d_slot.defined()) return p.d_slot.data<int64_t>();
  keep = upload_i64(p.slot);
  return keep.data<int64_t>();
}

const int64_t* plan_rows(const MoePlan& p, Tensor& keep) {
  if (p.d_row.defined()) return p.d_row.data<int64_t>();
  keep = upload_i64(p.row);
  return keep.data<int64_t>();
}

}  // namespace dseek::ops::cuda
