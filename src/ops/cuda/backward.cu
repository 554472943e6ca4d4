// backward.cu — the first CUDA backward and optimizer ops of GPU training (issue 6; spec/model.md §2.1
// RMSNorm and SwiGLU, the training issue's AdamW): RMSNorm backward (dx per row, dw by a column-parallel
// sum over rows in row order — no atomics, the same bits every run), SwiGLU backward, AdamW with f32 or
// bf16 moments (the CPU's operations in the CPU's order, rounded the same way: bit-equal to the CPU), and
// the f64 sum of squares for global-norm clipping (per-block partial sums added in a fixed order).
// f32 activations; each op's CPU version in ops/cpu is the reference.
#include <cmath>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops::cuda {

namespace {

// dx[n] = r·(w ⊙ dy[n]) − (Σ_j dy_j w_j x_j / D)·r³·x[n], r = rstd[n]; a block per row. ADD: dx[n] += that
// (the value rounded to f32 first, as a separate add would see it), and op (when not null) = the sum in bf16.
template <bool ADD>
__global__ void rmsnorm_bwd_dx_kernel(float* dx, bf16* op, const float* dy, const float* x, const float* w,
                                      const float* rstd, int64_t D) {
  const int64_t n = blockIdx.x;
  const float* xr = x + n * D;
  const float* gr = dy + n * D;
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) dot += w[i] * gr[i] * xr[i];
  dot = block_sum(dot);
  const float r = rstd[n], c = dot / float(D) * r * r * r;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = r * (w[i] * gr[i]) - c * xr[i];
    if constexpr (ADD) {
      const float s = __fadd_rn(dx[n * D + i], v);
      dx[n * D + i] = s;
      if (op) op[n * D + i] = __float2bfloat16_rn(s);
    } else {
      dx[n * D + i] = v;
    }
  }
}

// dw[i] += Σ_n dy[n, i]·x[n, i]·rstd[n] in two deterministic passes: part[c, i] sums the rows of chunk c
// (kDwRows rows, in order; a thread per column, coalesced across the warp; blockIdx.y = c), then
// rmsnorm_bwd_dw_sum_kernel adds the chunks in order. One pass of a thread per column over all N rows
// keeps only D/128 blocks busy (8 SMs at D = 1024) and took 3.5 ms at N = 16384.
constexpr int64_t kDwRows = 128;
__global__ void rmsnorm_bwd_dw_part_kernel(float* part, const float* dy, const float* x, const float* rstd,
                                           int64_t N, int64_t D) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, c = blockIdx.y;
  if (i >= D) return;
  const int64_t n1 = (c + 1) * kDwRows < N ? (c + 1) * kDwRows : N;
  float s = 0.0f;
  for (int64_t n = c * kDwRows; n < n1; ++n) s += dy[n * D + i] * x[n * D + i] * rstd[n];
  part[c * D + i] = s;
}
__global__ void rmsnorm_bwd_dw_sum_kernel(float* dw, const float* part, int64_t chunks, int64_t D) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= D) return;
  float s = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) s += part[c * D + i];
  dw[i] += s;
}

// dg = d·u·σ·(1 + g·(1 − σ)), du = d·g·σ (the CPU's formula).
template <typename TI, typename TO>
__global__ void swiglu_bwd_kernel(TO* dg, TO* du, const float* dout, const TI* g, const TI* u, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gv = ld(g[i]), d = dout[i], sg = 1.0f / (1.0f + expf(-gv));
    dg[i] = st<TO>(d * ld(u[i]) * sg * (1.0f + gv * (1.0f - sg)));
    du[i] = st<TO>(d * (gv * sg));
  }
}

// The CPU's AdamW step of one element, operation by operation with IEEE round-to-nearest and no
// contraction to FMA: from the loaded w0, g0, m0, v0 the new moments (rounded to M, in registers: the four
// pointers may alias as far as the compiler knows, so nothing is read back from memory) and the new w.
struct AdamWConsts {
  float b1, b2, gs, eps, step_size, bc2_sqrt, decay;
};
template <typename M>
__device__ __forceinline__ float adamw_math(float w0, float g0, float m0, float v0, const AdamWConsts& k,
                                            M& ms, M& vs) {
  const float gi = __fmul_rn(g0, k.gs);
  ms = st<M>(__fadd_rn(__fmul_rn(k.b1, m0), __fmul_rn(__fsub_rn(1.0f, k.b1), gi)));
  vs = st<M>(__fadd_rn(__fmul_rn(k.b2, v0), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, k.b2), gi), gi)));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(ld(vs)), k.bc2_sqrt), k.eps);
  return __fsub_rn(__fmul_rn(w0, k.decay), __fdiv_rn(__fmul_rn(k.step_size, ld(ms)), denom));
}
// Element i in place; returns the new w.
template <typename M>
__device__ __forceinline__ float adamw_elem(float* w, const float* g, M* m, M* v, int64_t i, float b1,
                                            float b2, float gs, float eps, float step_size, float bc2_sqrt,
                                            float decay) {
  M ms, vs;
  const float wn = adamw_math(w[i], g[i], ld(m[i]), ld(v[i]),
                              AdamWConsts{b1, b2, gs, eps, step_size, bc2_sqrt, decay}, ms, vs);
  m[i] = ms;
  v[i] = vs;
  w[i] = wn;
  return wn;
}

// Four consecutive elements of an f32 or bf16 array (16 / 8 bytes, aligned) as floats, and back.
template <typename M>
__device__ __forceinline__ float4 load4(const M* p) {
  if constexpr (std::is_same_v<M, float>) {
    return *reinterpret_cast<const float4*>(p);
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x)),
                 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
}
template <typename M>
__device__ __forceinline__ void store4(M* p, const M (&x)[4]) {
  if constexpr (std::is_same_v<M, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  } else {
    uint2 u;
    __nv_bfloat162 a, b;
    a.x = x[0];
    a.y = x[1];
    b.x = x[2];
    b.y = x[3];
    u.x = *reinterpret_cast<const uint32_t*>(&a);
    u.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
  }
}

template <typename M>
__global__ void adamw_kernel(float* w, const float* g, M* m, M* v, int64_t n, float b1, float b2, float gs,
                             float eps, float step_size, float bc2_sqrt, float decay) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    adamw_elem(w, g, m, v, i, b1, b2, gs, eps, step_size, bc2_sqrt, decay);
}

// The multi-tensor forms: block c takes elements [begin[c], begin[c] + kChunk) of tensor tensor[c] (the
// chunks of every tensor in order), so thousands of small tensors cost one launch.
constexpr int64_t kChunk = int64_t(1) << 18;

// copy[t] (may be null): tensor t's bf16 copy, rewritten with the updated value (the compute copy of
// bf16 training, in the same pass instead of a second read of the masters). vec: every pointer is aligned
// for four elements at a time (16-byte f32, 8-byte bf16 accesses: more bytes in flight per thread); a
// chunk's first element is a multiple of kChunk, so only its tail is left to the element loop.
template <typename M>
__global__ void adamw_many_kernel(float* const* w, const float* const* g, M* const* m, M* const* v,
                                  bf16* const* copy, const float* decay, const int64_t* len,
                                  const int32_t* tensor, const int64_t* begin, float b1, float b2, float gs,
                                  float eps, float step_size, float bc2_sqrt, bool vec) {
  const int32_t t = tensor[blockIdx.x];
  const int64_t b = begin[blockIdx.x], e = min(b + kChunk, len[t]);
  // the tensor's pointers once, before any store could (as far as the compiler knows) change the tables
  float* wt = w[t];
  const float* gt = g[t];
  M* mt = m[t];
  M* vt = v[t];
  bf16* c = copy[t];
  const AdamWConsts k{b1, b2, gs, eps, step_size, bc2_sqrt, decay[t]};
  int64_t tail = b;
  if (vec) {
    const int64_t n4 = (e - b) / 4;
    for (int64_t j = threadIdx.x; j < n4; j += blockDim.x) {
      const int64_t i = b + 4 * j;
      const float4 w4 = *reinterpret_cast<const float4*>(wt + i),
                   g4 = *reinterpret_cast<const float4*>(gt + i), m4 = load4(mt + i), v4 = load4(vt + i);
      M ms[4], vs[4];
      float wn[4];
      wn[0] = adamw_math(w4.x, g4.x, m4.x, v4.x, k, ms[0], vs[0]);
      wn[1] = adamw_math(w4.y, g4.y, m4.y, v4.y, k, ms[1], vs[1]);
      wn[2] = adamw_math(w4.z, g4.z, m4.z, v4.z, k, ms[2], vs[2]);
      wn[3] = adamw_math(w4.w, g4.w, m4.w, v4.w, k, ms[3], vs[3]);
      store4(mt + i, ms);
      store4(vt + i, vs);
      *reinterpret_cast<float4*>(wt + i) = make_float4(wn[0], wn[1], wn[2], wn[3]);
      if (c != nullptr) {
        const bf16 cb[4] = {__float2bfloat16_rn(wn[0]), __float2bfloat16_rn(wn[1]),
                            __float2bfloat16_rn(wn[2]), __float2bfloat16_rn(wn[3])};
        store4(c + i, cb);
      }
    }
    tail = b + 4 * n4;
  }
  for (int64_t i = tail + threadIdx.x; i < e; i += blockDim.x) {
    M ms, vs;
    const float wn = adamw_math(wt[i], gt[i], ld(mt[i]), ld(vt[i]), k, ms, vs);
    mt[i] = ms;
    vt[i] = vs;
    wt[i] = wn;
    if (c != nullptr) c[i] = __float2bfloat16_rn(wn);
  }
}

constexpr int kSumBlocks = 1024, kSumThreads = 256;

// part[blockIdx.x] = the block's kSumThreads values acc summed by a fixed tree (the same order in both
// sum-of-squares kernels below).
__device__ void store_tree_sum(double* part, double acc) {
  __shared__ double s[kSumThreads];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kSumThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = s[0];
}

// part[b] = Σ x² over block b's grid-stride share, f64.
__global__ void sum_squares_kernel(double* part, const float* x, int64_t n) {
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    acc += double(x[i]) * double(x[i]);
  store_tree_sum(part, acc);
}

// part[c] = Σ x² over chunk c, f64.
__global__ void sum_squares_many_kernel(double* part, const float* const* x, const int64_t* len,
                                        const int32_t* tensor, const int64_t* begin) {
  const int32_t t = tensor[blockIdx.x];
  const int64_t b = begin[blockIdx.x], e = min(b + kChunk, len[t]);
  double acc = 0;
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) acc += double(x[t][i]) * double(x[t][i]);
  store_tree_sum(part, acc);
}

// dst[t][i] = bf16(src[t][i]) over chunk c (cast_many).
__global__ void cast_many_kernel(bf16* const* dst, const float* const* src, const int64_t* len,
                                 const int32_t* tensor, const int64_t* begin) {
  const int32_t t = tensor[blockIdx.x];
  const int64_t b = begin[blockIdx.x], e = min(b + kChunk, len[t]);
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) dst[t][i] = __float2bfloat16_rn(src[t][i]);
}

// The chunk table of tensors of these lengths, on the device: tensor index and first element per chunk.
struct Chunks {
  Tensor tensor, begin, len;  // [C] I32, [C] I64, [T] I64
  int64_t count = 0;
  std::vector<int32_t> host_tensor;
};
Chunks make_chunks(const std::vector<int64_t>& lens) {
  Chunks c;
  std::vector<int64_t> begin;
  for (size_t t = 0; t < lens.size(); ++t)
    for (int64_t b = 0; b < lens[t]; b += kChunk) {
      c.host_tensor.push_back(int32_t(t));
      begin.push_back(b);
    }
  c.count = int64_t(begin.size());
  const int64_t C = std::max<int64_t>(c.count, 1), T = std::max<int64_t>(int64_t(lens.size()), 1);
  c.tensor = Tensor::empty({C}, DType::I32, Device::CUDA);
  c.begin = Tensor::empty({C}, DType::I64, Device::CUDA);
  c.len = Tensor::empty({T}, DType::I64, Device::CUDA);
  if (c.count) {
    copy_bytes(c.tensor.raw(), Device::CUDA, c.host_tensor.data(), Device::CPU,
               begin.size() * sizeof(int32_t));
    copy_bytes(c.begin.raw(), Device::CUDA, begin.data(), Device::CPU, begin.size() * sizeof(int64_t));
  }
  if (!lens.empty())
    copy_bytes(c.len.raw(), Device::CUDA, lens.data(), Device::CPU, lens.size() * sizeof(int64_t));
  return c;
}
// A device array of the tensors' data pointers.
template <typename P>
Tensor pointer_table(const std::vector<P>& ps) {
  Tensor t = Tensor::empty({std::max<int64_t>(int64_t(ps.size()), 1)}, DType::I64, Device::CUDA);
  if (!ps.empty()) copy_bytes(t.raw(), Device::CUDA, ps.data(), Device::CPU, ps.size() * sizeof(P));
  return t;
}

}  // namespace

void rmsnorm_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                 const Tensor& rstd) {
  const int64_t N = x.size(0), D = x.size(1);
  DSEEK_CHECK(x.dtype() == DType::F32 && w.dtype() == DType::F32,
              "rmsnorm_bwd (CUDA): f32 activations and weights, not ", dtype_name(x.dtype()), " / ",
              dtype_name(w.dtype()));
  if (N == 0) return;
  if (dx.defined()) {
    rmsnorm_bwd_dx_kernel<false><<<unsigned(N), 256>>>(
        dx.data<float>(), nullptr, dy.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(), D);
    DSEEK_CUDA_LAUNCH_CHECK("rmsnorm_bwd (dx)");
  }
  if (dw.defined()) {
    const int64_t chunks = (N + kDwRows - 1) / kDwRows;
    Tensor part = Tensor::empty({chunks, D}, DType::F32, Device::CUDA);  // part: [chunks, D]
    rmsnorm_bwd_dw_part_kernel<<<dim3(unsigned((D + 127) / 128), unsigned(chunks)), 128>>>(
        part.data<float>(), dy.data<float>(), x.data<float>(), rstd.data<float>(), N, D);
    DSEEK_CUDA_LAUNCH_CHECK("rmsnorm_bwd (dw part)");
    rmsnorm_bwd_dw_sum_kernel<<<unsigned((D + 127) / 128), 128>>>(dw.data<float>(), part.data<float>(),
                                                                  chunks, D);
    DSEEK_CUDA_LAUNCH_CHECK("rmsnorm_bwd (dw)");
  }
}

void rmsnorm_bwd_add(Tensor dh, Tensor dh_op, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                     const Tensor& rstd) {
  const int64_t N = x.size(0), D = x.size(1);
  if (N == 0) return;
  rmsnorm_bwd_dx_kernel<true>
      <<<unsigned(N), 256>>>(dh.data<float>(), dh_op.defined() ? static_cast<bf16*>(dh_op.raw()) : nullptr,
                             dy.data<float>(), x.data<float>(), w.data<float>(), rstd.data<float>(), D);
  DSEEK_CUDA_LAUNCH_CHECK("rmsnorm_bwd_add (dx)");
  if (dw.defined()) rmsnorm_bwd(Tensor(), dw, dy, x, w, rstd);
}

void swiglu_bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  DSEEK_CHECK(dout.dtype() == DType::F32, "swiglu_bwd (CUDA): f32 dout, not ", dtype_name(dout.dtype()));
  const int64_t n = gate.numel();
  if (n == 0) return;
  // gate/up: f32, or the bf16 the experts wrote; dgate/dup: f32, or bf16 operands of the next products
  with_act(gate.dtype(), "swiglu_bwd", [&](auto ti) {
    with_act(dgate.dtype(), "swiglu_bwd", [&](auto to) {
      using TI = decltype(ti);
      using TO = decltype(to);
      swiglu_bwd_kernel<<<blocks_for(n, 256), 256>>>(
          static_cast<TO*>(dgate.raw()), static_cast<TO*>(dup.raw()), dout.data<float>(),
          static_cast<const TI*>(gate.raw()), static_cast<const TI*>(up.raw()), n);
    });
  });
  DSEEK_CUDA_LAUNCH_CHECK("swiglu_bwd");
}

void adamw_step(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWParams& p) {
  const int64_t n = param.numel();
  if (n == 0) return;
  // The scalars as the CPU derives them (f64, then rounded to f32).
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step)), bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  const float step_size = float(p.lr / bc1), bc2_sqrt = float(std::sqrt(bc2));
  const float decay = float(1.0 - p.lr * p.weight_decay);
  const int blocks = blocks_for(n, 256);
  if (m.dtype() == DType::F32) {
    adamw_kernel<float><<<blocks, 256>>>(param.data<float>(), grad.data<float>(), m.data<float>(),
                                         v.data<float>(), n, float(p.beta1), float(p.beta2),
                                         float(p.grad_scale), float(p.eps), step_size, bc2_sqrt, decay);
  } else {
    adamw_kernel<bf16><<<blocks, 256>>>(param.data<float>(), grad.data<float>(), static_cast<bf16*>(m.raw()),
                                        static_cast<bf16*>(v.raw()), n, float(p.beta1), float(p.beta2),
                                        float(p.grad_scale), float(p.eps), step_size, bc2_sqrt, decay);
  }
  DSEEK_CUDA_LAUNCH_CHECK("adamw_step");
}

double sum_squares(const Tensor& t) {
  DSEEK_CHECK(t.dtype() == DType::F32, "sum_squares (CUDA): f32, not ", dtype_name(t.dtype()));
  const int64_t n = t.numel();
  if (n == 0) return 0.0;
  Tensor part = Tensor::empty({kSumBlocks}, DType::F64, Device::CUDA);
  sum_squares_kernel<<<kSumBlocks, kSumThreads>>>(part.data<double>(), t.data<float>(), n);
  DSEEK_CUDA_LAUNCH_CHECK("sum_squares");
  const Tensor h = part.to(Device::CPU);
  double total = 0;
  for (int64_t b = 0; b < kSumBlocks; ++b) total += h.data<double>()[b];  // fixed order
  return total;
}

std::vector<double> sum_squares_many(const std::vector<const Tensor*>& ts) {
  std::vector<int64_t> lens;
  std::vector<const float*> ptrs;
  for (const Tensor* t : ts) {
    lens.push_back(t->numel());
    ptrs.push_back(t->data<float>());
  }
  const Chunks c = make_chunks(lens);
  std::vector<double> out(ts.size(), 0.0);
  if (c.count == 0) return out;
  const Tensor table = pointer_table(ptrs);
  Tensor part = Tensor::empty({c.count}, DType::F64, Device::CUDA);  // part: [C] one sum per chunk
  sum_squares_many_kernel<<<unsigned(c.count), kSumThreads>>>(
      part.data<double>(), reinterpret_cast<const float* const*>(table.raw()), c.len.data<int64_t>(),
      c.tensor.data<int32_t>(), c.begin.data<int64_t>());
  DSEEK_CUDA_LAUNCH_CHECK("sum_squares_many");
  const Tensor h = part.to(Device::CPU);
  for (int64_t k = 0; k < c.count; ++k)
    out[size_t(c.host_tensor[size_t(k)])] += h.data<double>()[k];  // in order
  return out;
}

void cast_many(const std::vector<Tensor*>& dst, const std::vector<const Tensor*>& src) {
  std::vector<int64_t> lens;
  std::vector<void*> pd;
  std::vector<const float*> ps;
  for (size_t i = 0; i < dst.size(); ++i) {
    lens.push_back(src[i]->numel());
    pd.push_back(dst[i]->raw());
    ps.push_back(src[i]->data<float>());
  }
  const Chunks c = make_chunks(lens);
  if (c.count == 0) return;
  const Tensor td = pointer_table(pd), ts = pointer_table(ps);
  cast_many_kernel<<<unsigned(c.count), 256>>>(
      reinterpret_cast<bf16* const*>(td.raw()), reinterpret_cast<const float* const*>(ts.raw()),
      c.len.data<int64_t>(), c.tensor.data<int32_t>(), c.begin.data<int64_t>());
  DSEEK_CUDA_LAUNCH_CHECK("cast_many");
}

void adamw_step_many(const std::vector<Tensor*>& params, const std::vector<const Tensor*>& grads,
                     const std::vector<Tensor*>& m, const std::vector<Tensor*>& v,
                     const std::vector<double>& decay, const AdamWParams& p,
                     const std::vector<Tensor*>& copies) {
  std::vector<int64_t> lens;
  std::vector<float*> pw;
  std::vector<const float*> pg;
  std::vector<void*> pm, pv, pc;
  std::vector<float> dec;
  for (size_t i = 0; i < params.size(); ++i) {
    lens.push_back(params[i]->numel());
    pw.push_back(params[i]->data<float>());
    pg.push_back(grads[i]->data<float>());
    pm.push_back(m[i]->raw());
    pv.push_back(v[i]->raw());
    pc.push_back(copies.empty() || copies[i] == nullptr ? nullptr : copies[i]->raw());
    dec.push_back(float(1.0 - p.lr * decay[i]));  // as adamw_step derives it
  }
  const Chunks c = make_chunks(lens);
  if (c.count == 0) return;
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step)), bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  const float step_size = float(p.lr / bc1), bc2_sqrt = float(std::sqrt(bc2));
  const Tensor tw = pointer_table(pw), tg = pointer_table(pg), tm = pointer_table(pm), tv = pointer_table(pv),
               tc = pointer_table(pc);
  // Four elements at a time when every pointer allows it (16-byte f32 arrays, 8-byte bf16 ones).
  auto aligned = [](const void* q, uintptr_t a) { return (reinterpret_cast<uintptr_t>(q) & (a - 1)) == 0; };
  const uintptr_t ma = m[0]->dtype() == DType::F32 ? 16 : 8;
  bool vec = true;
  for (size_t i = 0; i < params.size(); ++i)
    vec = vec && aligned(pw[i], 16) && aligned(pg[i], 16) && aligned(pm[i], ma) && aligned(pv[i], ma) &&
          (pc[i] == nullptr || aligned(pc[i], 8));
  Tensor td = Tensor::empty({int64_t(dec.size())}, DType::F32, Device::CUDA);  // td: [T] decay factors
  copy_bytes(td.raw(), Device::CUDA, dec.data(), Device::CPU, dec.size() * sizeof(float));
  auto run = [&](auto mt) {
    using M = decltype(mt);
    adamw_many_kernel<M><<<unsigned(c.count), 256>>>(
        reinterpret_cast<float* const*>(tw.raw()), reinterpret_cast<const float* const*>(tg.raw()),
        reinterpret_cast<M* const*>(tm.raw()), reinterpret_cast<M* const*>(tv.raw()),
        reinterpret_cast<bf16* const*>(tc.raw()), td.data<float>(), c.len.data<int64_t>(),
        c.tensor.data<int32_t>(), c.begin.data<int64_t>(), float(p.beta1), float(p.beta2),
        float(p.grad_scale), float(p.eps), step_size, bc2_sqrt, vec);
  };
  if (m[0]->dtype() == DType::F32) {
    run(float{});
  } else {
    run(bf16{});
  }
  DSEEK_CUDA_LAUNCH_CHECK("adamw_step_many");
}

}  // namespace dseek::ops::cuda
