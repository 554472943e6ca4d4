// linear.cu — matrix products through cuBLASLt (DESIGN.md "CUDA backend"): bf16 × bf16, f16 × f16 or f32 ×
// f32 operands, f32 accumulation (no TF32 on the f32 path, so it matches the CPU to ~1e-6), row-major tensors
// mapped onto cuBLASLt's column-major view. A mixed f32-activation × bf16-weight product casts the activation
// to bf16 first.
#include <map>
#include <mutex>
#include <tuple>

#include "core/device.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/fp8.h"
#include "ops/cuda/gemv.h"

namespace dseek::ops::cuda {

namespace {

// One cached product shape: its descriptors and the algorithm the heuristic chose (descriptor creation and
// the heuristic cost more host time than a small product takes on the GPU).
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = size_t(32) << 20;
  std::mutex mu;
  // (transposes, dtypes, m, n, k, lda, ldb, ldc, beta ≠ 0)
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>;
  std::map<Key, Plan> plans;
  std::map<Key, cublasLtMatmulAlgo_t> bucket_algos;  // by shape rounded up (lt_matmul)
  Lt() {
    DSEEK_CUBLAS_CHECK(cublasLtCreate(&handle), "cublasLtCreate");
    DSEEK_CUDA_CHECK(cudaMalloc(&workspace, workspace_bytes), "cuBLASLt workspace");
  }
};
Lt& lt() {
  static Lt* l = new Lt();
  return *l;
}

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F16:
      return CUDA_R_16F;
    default:
      fail("cuBLASLt: unsupported dtype ", dtype_name(d));
  }
}

// Cached exact-shape plans at most (expert products add one per row count they meet).
constexpr size_t kMaxPlans = 8192;

void destroy(Plan& p) {
  cublasLtMatrixLayoutDestroy(p.la);
  cublasLtMatrixLayoutDestroy(p.lb);
  cublasLtMatrixLayoutDestroy(p.lc);
  cublasLtMatmulDescDestroy(p.op);
}

// The heuristic's first algorithm for these descriptors within the workspace (`what`, m, n, k name the
// product in the error when there is none).
cublasLtMatmulAlgo_t best_algo(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                               cublasLtMatrixLayout_t lc, const char* what, int64_t m, int64_t n, int64_t k) {
  Lt& L = lt();
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &L.workspace_bytes,
                                       sizeof L.workspace_bytes);
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  DSEEK_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(L.handle, op, la, lb, lc, lc, pref, 1, &res, &found),
                     what);
  cublasLtMatmulPreferenceDestroy(pref);
  DSEEK_CHECK(found > 0, what, ": cuBLASLt found no algorithm for ", m, "x", n, "x", k);
  return res.algo;
}

// The descriptors of a product (no algorithm yet): C[m, n] = op(A) · op(B) as lt_matmul describes them.
Plan describe(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
              int64_t ldc, DType ab, DType c_type) {
  Plan p;
  DSEEK_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "linear: desc");
  cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  DSEEK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, cuda_type(ab), trans_a ? k : m, trans_a ? m : k, lda),
                     "layout A");
  DSEEK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, cuda_type(ab), trans_b ? n : k, trans_b ? k : n, ldb),
                     "layout B");
  DSEEK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, cuda_type(c_type), m, n, ldc), "layout C");
  return p;
}

// D = C = alpha · op(A) · op(B) + beta · C with a cached plan, on the calling thread's stream.
void run_plan(const Plan& plan, float alpha, const void* A, const void* B, float beta, void* C,
              const char* what) {
  Lt& L = lt();
  DSEEK_CUBLAS_CHECK(cublasLtMatmul(L.handle, plan.op, &alpha, A, plan.la, B, plan.lb, &beta, C, plan.lc, C,
                                    plan.lc, &plan.algo, L.workspace, L.workspace_bytes, cudaStreamPerThread),
                     what);
}

// C[m, n] (col-major, ld m) = op(A) · op(B): A is [k, m] when trans_a else [m, k]; B is [n, k] when
// trans_b else [k, n] (col-major shapes, leading dims given).
void lt_matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda,
               const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c_type, float beta) {
  Lt& L = lt();
  const Lt::Key key{
      int(trans_a) * 2 + int(trans_b), int(ab) * 16 + int(c_type), m, n, k, lda, ldb, ldc, int(beta != 0.0f)};
  const Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> g(L.mu);
    auto it = L.plans.find(key);
    if (it != L.plans.end()) plan = &it->second;
  }
  if (!plan) {
    // A new shape: its descriptors, and the algorithm of its bucket (dimensions rounded up to a multiple of
    // kBucket) when cuBLASLt accepts it for this exact shape, else a fresh heuristic. Expert products see
    // a new row count nearly every call (the tokens each expert gets), and the heuristic costs more host
    // time (~100 µs) than such a product takes on the GPU.
    constexpr int64_t kBucket = 128;
    auto up = [](int64_t v) { return (v + kBucket - 1) / kBucket * kBucket; };
    const Lt::Key bkey{std::get<0>(key), std::get<1>(key), up(m),   up(n),           up(k),
                       up(lda),          up(ldb),          up(ldc), std::get<8>(key)};
    Plan p = describe(trans_a, trans_b, m, n, k, lda, ldb, ldc, ab, c_type);
    bool have = false;
    {
      std::lock_guard<std::mutex> g(L.mu);
      auto it = L.bucket_algos.find(bkey);
      if (it != L.bucket_algos.end()) {
        p.algo = it->second;
        have = true;
      }
    }
    if (have) {
      cublasLtMatmulHeuristicResult_t check{};
      have = cublasLtMatmulAlgoCheck(L.handle, p.op, p.la, p.lb, p.lc, p.lc, &p.algo, &check) ==
                 CUBLAS_STATUS_SUCCESS &&
             check.workspaceSize <= L.workspace_bytes;
    }
    if (!have) {
      p.algo = best_algo(p.op, p.la, p.lb, p.lc, "linear", m, n, k);
      DSEEK_CUDA_LAUNCH_CHECK("cublasLt plan (heuristic)");  // its own row in DSEEK_CUDA_PROFILE's table
      std::lock_guard<std::mutex> g(L.mu);
      L.bucket_algos.emplace(bkey, p.algo);
    }
    std::lock_guard<std::mutex> g(L.mu);
    if (L.plans.size() >= kMaxPlans) {  // a long run meets every row count: start the cache over
      for (auto& [k, old] : L.plans) destroy(old);
      L.plans.clear();
    }
    plan = &L.plans.emplace(key, p).first->second;  // std::map nodes stay put
  }
  run_plan(*plan, 1.0f, A, B, beta, C, "linear: cublasLtMatmul");
  DSEEK_CUDA_LAUNCH_CHECK("cublasLt matmul");
}

// Strided batched products with f32 or bf16 operands and f32 C (the training attention's per-head products):
// one cached plan per shape, batch and strides. C (col-major [m, n], ld ldc, batch stride sc) = alpha · op(A)
// · op(B), A/B as in lt_matmul with batch strides sa/sb.
void lt_matmul_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* A,
                       int64_t lda, int64_t sa, const void* B, int64_t ldb, int64_t sb, float* C, int64_t ldc,
                       int64_t sc, int64_t batch, float alpha, DType ab) {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t>;
  static std::mutex mu;
  static std::map<Key, Plan> plans;
  const Key key{int(trans_a) * 2 + int(trans_b) + 4 * int(ab), m, n, k, lda, ldb, ldc, sa, sb, sc, batch};
  const Plan* plan = nullptr;
  {
    std::lock_guard<std::mutex> g(mu);
    auto it = plans.find(key);
    if (it != plans.end()) plan = &it->second;
  }
  if (!plan) {
    Plan p = describe(trans_a, trans_b, m, n, k, lda, ldb, ldc, ab, DType::F32);
    const int32_t count = int32_t(batch);
    for (auto [layout, stride] : {std::pair{p.la, sa}, std::pair{p.lb, sb}, std::pair{p.lc, sc}}) {
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                       sizeof stride);
    }
    p.algo = best_algo(p.op, p.la, p.lb, p.lc, "batched matmul", m, n, k);
    std::lock_guard<std::mutex> g(mu);
    plan = &plans.emplace(key, p).first->second;
  }
  run_plan(*plan, alpha, A, B, 0.0f, C, "batched matmul: cublasLtMatmul");
  DSEEK_CUDA_LAUNCH_CHECK("cublasLt batched matmul");
}

}  // namespace

namespace {
// Row-major C [M, N] (unit column stride) is column-major Cᵀ [N, M] with ld sCr: Cᵀ = Bᵀ · Aᵀ, where Bᵀ is
// B's storage as is when B is row-major (sc = 1), or B transposed when B is column-major (sr = 1), and the
// same for Aᵀ. S: StridedF32 or StridedBf16, ab its dtype.
template <typename S>
void strided_batched(float* C, int64_t sCb, int64_t sCr, S A, S B, int64_t M, int64_t N, int64_t K,
                     int64_t batch, float alpha, DType ab, const char* op) {
  if (M == 0 || N == 0 || batch == 0) return;
  DSEEK_CHECK((B.sc == 1 || B.sr == 1) && (A.sc == 1 || A.sr == 1), op, ": an operand with no unit stride");
  const bool tb = B.sc != 1, ta = A.sc != 1;  // cuBLAS operand 1 is B's, operand 2 is A's
  lt_matmul_batched(tb, ta, N, M, K, B.p, tb ? B.sc : B.sr, B.sb, A.p, ta ? A.sc : A.sr, A.sb, C, sCr, sCb,
                    batch, alpha, ab);
}
}  // namespace

void matmul_strided_batched(float* C, int64_t sCb, int64_t sCr, StridedF32 A, StridedF32 B, int64_t M,
                            int64_t N, int64_t K, int64_t batch, float alpha) {
  strided_batched(C, sCb, sCr, A, B, M, N, K, batch, alpha, DType::F32, "matmul_strided_batched");
}

void matmul_strided_batched_bf16(float* C, int64_t sCb, int64_t sCr, StridedBf16 A, StridedBf16 B, int64_t M,
                                 int64_t N, int64_t K, int64_t batch, float alpha) {
  strided_batched(C, sCb, sCr, A, B, M, N, K, batch, alpha, DType::BF16, "matmul_strided_batched_bf16");
}

namespace {

// Products with a block-scaled fp8 weight: the GEMV for decode sizes, else the weight dequantized to f32 in
// row chunks (bounded scratch) and an f32 product.
void linear_fp8(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  Tensor xf = x.to(DType::F32);
  Tensor of = out.dtype() == DType::F32 ? out : Tensor::empty(out.shape(), DType::F32, Device::CUDA);
  if (N <= 8) {
    gemv_fp8(of, xf, w);
  } else {
    const int64_t chunk =
        std::max<int64_t>(1, (int64_t(64) << 20) / std::max<int64_t>(I, 1));  // ≤ 256 MB f32
    for (int64_t r0 = 0; r0 < O; r0 += chunk) {
      const int64_t n = std::min(chunk, O - r0);
      Tensor wf = dequantize_rows(w, r0, n);  // [n, I] f32
      // of[:, r0:r0+n] (ld O) = x · wfᵀ
      lt_matmul(true, false, n, N, I, wf.raw(), I, xf.raw(), I, static_cast<float*>(of.raw()) + r0, O,
                DType::F32, DType::F32, 0.0f);
    }
  }
  if (of.raw() != out.raw()) out.copy_from(of);
}

}  // namespace

void linear(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  if (N == 0 || O == 0) return;
  if (w.block_scale()) return linear_fp8(out, x, w);
  if (gemv_applies(out, x, w)) return gemv_bf16(out, x, w);  // decoding: bandwidth-bound, f32 activations
  Tensor xa = x.dtype() == w.dtype() ? x : x.to(w.dtype());
  Tensor o = out.dtype() == w.dtype() || out.dtype() == DType::F32
                 ? out
                 : Tensor::empty(out.shape(), DType::F32, Device::CUDA);
  // out[N, O] row-major = col-major [O, N] = W_cm[I, O]ᵀ · x_cm[I, N]
  lt_matmul(true, false, O, N, I, w.raw(), I, xa.raw(), I, o.raw(), O, w.dtype(), o.dtype(), 0.0f);
  if (o.raw() != out.raw()) out.copy_from(o);
}

void matmul_nn(Tensor out, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(1);
  if (N == 0 || O == 0) return;
  if (w.block_scale()) {  // x · W for an fp8 W [I, O] (the absorbed W_UK slice): dequantize it whole
    Tensor wf = dequantize_rows(w, 0, I), xf = x.to(DType::F32);
    Tensor of = out.dtype() == DType::F32 ? out : Tensor::empty(out.shape(), DType::F32, Device::CUDA);
    lt_matmul(false, false, O, N, I, wf.raw(), O, xf.raw(), I, of.raw(), O, DType::F32, DType::F32, 0.0f);
    if (of.raw() != out.raw()) out.copy_from(of);
    return;
  }
  Tensor xa = x.dtype() == w.dtype() ? x : x.to(w.dtype());
  Tensor o = out.dtype() == w.dtype() || out.dtype() == DType::F32
                 ? out
                 : Tensor::empty(out.shape(), DType::F32, Device::CUDA);
  // out[N, O] = x[N, I] · W[I, O]: col-major [O, N] = W_cm[O, I] · x_cm[I, N]
  lt_matmul(false, false, O, N, I, w.raw(), O, xa.raw(), I, o.raw(), O, w.dtype(), o.dtype(), 0.0f);
  if (o.raw() != out.raw()) out.copy_from(o);
}

// The backward of linear (training, issue 6): dx[N, I] = dy[N, O] · W[O, I] (written) and dw[O, I] +=
// dy[N, O]ᵀ · x[N, I] (accumulated in f32: cuBLASLt's beta = 1). An f32 W takes f32 products; a bf16 W
// takes dy and x rounded to bf16 (f32 accumulation), as mixed-precision training does.
void linear_bwd(Tensor dx, Tensor dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.size(0), I = x.size(1), O = w.size(0);
  // x and dy: each f32, or already in the bf16 weights' dtype (an operand cast once, or kept from the
  // forward)
  DSEEK_CHECK(
      !w.block_scale() && (w.dtype() == DType::F32 || w.dtype() == DType::BF16) &&
          (x.dtype() == DType::F32 || x.dtype() == w.dtype()) &&
          (dy.dtype() == DType::F32 || dy.dtype() == w.dtype()) &&
          (!dx.defined() || dx.dtype() == DType::F32) && (!dw.defined() || dw.dtype() == DType::F32),
      "linear_bwd (CUDA): f32 (or the weights' dtype) x and dy with f32 or bf16 weights, f32 dx and dw; not ",
      dtype_name(x.dtype()), " / ", dtype_name(w.dtype()));
  if (N == 0) return;
  const DType op = w.dtype();
  const Tensor dyo = dy.dtype() == op ? dy : dy.to(op);
  if (dx.defined()) {
    // dx row-major [N, I] = col-major [I, N] = W_cm[I, O] · dy_cm[O, N]
    lt_matmul(false, false, I, N, O, w.raw(), I, dyo.raw(), O, dx.raw(), I, op, DType::F32, 0.0f);
  }
  if (dw.defined()) {
    // dw row-major [O, I] = col-major [I, O] = x_cm[I, N] · dy_cm[O, N]ᵀ, added to dw
    const Tensor xo = x.dtype() == op ? x : x.to(op);
    lt_matmul(false, true, I, O, N, xo.raw(), I, dyo.raw(), O, dw.raw(), I, op, DType::F32, 1.0f);
  }
}

}  // namespace dseek::ops::cuda
