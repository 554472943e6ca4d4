// sample.cu — next-token sampling on the GPU (ops/sample.h; spec/serving.md sampling), one thread block
// per logits row, the CPU rule exactly: the top-k candidates (at most 1024 gathered) are found by a radix
// select on order-preserving keys of the logits (4 passes of 8-bit digits), ties at the cut taken in id
// order, sorted in shared memory (bitonic, logit descending, id ascending), their f64 weights
// exp((l − max) / T), the mass of the rest of the top-k summed by the block, then one thread walks the
// sorted candidates for top-p and the inverse CDF at u. Rows whose choice lies past the gathered
// candidates are flagged for the host (ops/sample.h).
#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

constexpr int kThreads = 1024, kCand = int(kDeviceSampleCandidates);

// Larger float → larger key (NaN excluded beforehand).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ double block_sum_f64(double v, double* part) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) part[w] = v;
  __syncthreads();
  double r = 0;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) r += part[i];  // the same order in every thread
  return r;
}

struct Cut {
  uint32_t key;  // the rank-th largest key
  int ties;      // how many of the elements with that key are in the top `rank` (the lowest ids)
};

// The key of the rank-th largest logit (1 ≤ rank ≤ V) by radix select.
__device__ Cut select_kth(const float* l, int64_t V, int64_t rank, unsigned* hist, Cut* out) {
  uint32_t prefix = 0, mask = 0;
  int64_t want = rank;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const uint32_t key = order_key(l[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t w = want;
      for (int d = 255; d >= 0; --d) {
        if (w <= int64_t(hist[d])) {
          out->key = prefix | (uint32_t(d) << shift);
          out->ties = int(w);
          break;
        }
        w -= hist[d];
      }
    }
    __syncthreads();
    prefix = out->key;
    want = out->ties;
    mask |= 255u << shift;
    __syncthreads();
  }
  return {prefix, int(want)};
}

// The id of the n-th element (1-based, in id order) whose key is `key`; with `cand`, also writes the
// first n of them to cand[at ..] as sort entries.
__device__ int64_t nth_tie(const float* l, int64_t V, uint32_t key, int n, uint64_t* cand, int at, int* wsum,
                           int64_t* last) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = int(blockDim.x >> 5);
  int taken = 0;
  if (threadIdx.x == 0) *last = -1;
  for (int64_t base = 0; base < V && taken < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool eq = i < V && order_key(l[i]) == key;
    const unsigned bal = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) wsum[w] = __popc(bal);
    __syncthreads();
    int before = 0, total = 0;
    for (int j = 0; j < nw; ++j) {
      before += j < w ? wsum[j] : 0;
      total += wsum[j];
    }
    const int pos = taken + before + __popc(bal & ((1u << lane) - 1u));
    if (eq && pos < n) {
      if (cand) cand[at + pos] = (uint64_t(key) << 32) | (0xffffffffu - uint32_t(i));
      if (pos == n - 1) *last = i;
    }
    taken += total;
    __syncthreads();
  }
  __syncthreads();
  return *last;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(int64_t* ids, int32_t* fallback, const float* logits, const double* uu, int64_t V, double T,
                  int64_t top_k, double top_p) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t cand[kCand];  // (key << 32) | (~id): descending order = logit desc, then id asc
  __shared__ double prob[kCand];
  __shared__ double part[32];
  __shared__ int wsum[32];
  __shared__ int n_gt;
  __shared__ Cut cut_s;
  __shared__ int64_t last_s;
  const int64_t b = blockIdx.x;
  const float* l = logits + b * V;
  const int tid = threadIdx.x;
  float m = -INFINITY;
  int nan = 0;
  for (int64_t i = tid; i < V; i += kThreads) {
    const float v = l[i];
    if (v != v)
      nan = 1;
    else
      m = fmaxf(m, v);
  }
  m = block_max(m);
  if (__syncthreads_or(nan)) {
    if (tid == 0) {
      ids[b] = -1;
      fallback[b] = 1;
    }
    return;
  }
  const int64_t k = (top_k > 0 && top_k < V) ? top_k : V;
  const int C = int(k < kCand ? k : kCand);
  // The candidates: every key above the C-th largest, then the lowest-id ties at it.
  const Cut cc = select_kth(l, V, C, hist, &cut_s);
  if (tid == 0) n_gt = 0;
  __syncthreads();
  for (int64_t i = tid; i < V; i += kThreads) {
    const uint32_t key = order_key(l[i]);
    if (key > cc.key) cand[atomicAdd(&n_gt, 1)] = (uint64_t(key) << 32) | (0xffffffffu - uint32_t(i));
  }
  __syncthreads();
  const int64_t tie_c = nth_tie(l, V, cc.key, cc.ties, cand, C - cc.ties, wsum, &last_s);
  int P = 1;
  while (P < C) P <<= 1;
  for (int i = C + tid; i < P; i += kThreads) cand[i] = 0;  // padding sorts last
  __syncthreads();
  for (int kk = 2; kk <= P; kk <<= 1)
    for (int j = kk >> 1; j > 0; j >>= 1) {
      for (int i = tid; i < P; i += kThreads) {
        const int ixj = i ^ j;
        if (ixj > i) {
          const uint64_t x = cand[i], y = cand[ixj];
          if (((i & kk) == 0) ? x < y : x > y) {
            cand[i] = y;
            cand[ixj] = x;
          }
        }
      }
      __syncthreads();
    }
  for (int i = tid; i < C; i += kThreads) {
    const uint32_t id = 0xffffffffu - uint32_t(cand[i]);
    prob[i] = exp((double(l[id]) - double(m)) / T);
  }
  // The weight of the top-k past the gathered candidates (none when k ≤ 1024).
  double tail = 0;
  if (k > C) {
    Cut ck{0xffffffffu, 0};
    int64_t tie_k = -1;
    if (k < V) {
      ck = select_kth(l, V, k, hist, &cut_s);
      tie_k = nth_tie(l, V, ck.key, ck.ties, nullptr, 0, wsum, &last_s);
    }
    double t = 0;
    for (int64_t i = tid; i < V; i += kThreads) {
      const uint32_t key = order_key(l[i]);
      const bool in_c = key > cc.key || (key == cc.key && i <= tie_c);
      const bool in_k = k == V || key > ck.key || (key == ck.key && i <= tie_k);
      if (in_k && !in_c) t += exp((double(l[i]) - double(m)) / T);
    }
    tail = block_sum_f64(t, part);
  }
  __syncthreads();
  if (tid != 0) return;
  double sum = 0;
  for (int i = 0; i < C; ++i) sum += prob[i];
  sum += tail;
  int64_t keep = k;  // how many candidates the choice may take
  if (top_p < 1.0) {
    double cum = 0;
    bool reached = false;
    for (int i = 0; i < C && !reached; ++i) {
      cum += prob[i] / sum;
      if (cum >= top_p) {
        keep = i + 1;
        reached = true;
      }
    }
    if (!reached && C < k) {  // the nucleus reaches past the gathered candidates
      ids[b] = -1;
      fallback[b] = 1;
      return;
    }
  }
  double mass = 0;
  if (keep <= C) {
    for (int i = 0; i < keep; ++i) mass += prob[i];
  } else {
    mass = sum;
  }
  double t = uu[b] * mass;
  const int walk = int(keep < C ? keep : C);
  for (int i = 0; i < walk; ++i) {
    t -= prob[i];
    if (t <= 0) {
      ids[b] = int64_t(0xffffffffu - uint32_t(cand[i]));
      fallback[b] = 0;
      return;
    }
  }
  if (keep <= C) {
    ids[b] = int64_t(0xffffffffu - uint32_t(cand[keep - 1]));
    fallback[b] = 0;
  } else {
    ids[b] = -1;
    fallback[b] = 1;
  }
}

}  // namespace

void sample_rows(Tensor ids, Tensor fallback, const Tensor& logits, const Tensor& u, const SampleParams& p) {
  const int64_t B = logits.size(0), V = logits.size(1);
  DSEEK_CHECK(V < (int64_t(1) << 32) - 1, "sample_rows: ", V, " logits per row (at most 2^32 − 2)");
  sample_kernel<<<unsigned(B), kThreads>>>(ids.data<int64_t>(), fallback.data<int32_t>(),
                                           logits.data<float>(), u.data<double>(), V, p.temperature, p.top_k,
                                           p.top_p);
  DSEEK_CUDA_LAUNCH_CHECK("sample_rows");
}

}  // namespace dseek::ops::cuda
