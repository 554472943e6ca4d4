// cuda_ops_test.cpp — every CUDA op against its CPU twin on random inputs at several shapes, in the
// style of llama.cpp's test-backend-ops (issue: CUDA backend part 1): f32 paths within ‖Δ‖/‖ref‖ ≤ 1e-5,
// bf16 within 1e-2. Outputs are poisoned with NaN before each call, so an element left unwritten fails.
// Label "cuda": runs on the GPU machine (scripts/gpu-check), not in CI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>

#include "core/device.h"
#include "cuda_test_util.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/flash_attention.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/router.h"
#include "ops/sample.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dseek {
namespace {

using cudatest::down;
using cudatest::expect_close;
using cudatest::poisoned;
using cudatest::tol;

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(cuda_device_count(), 0) << "no CUDA device (these tests run on the GPU machine)";
  }
};

std::mt19937 rng(1);

Tensor randn(const Shape& s, double std = 1.0) {
  std::normal_distribution<float> nd(0, float(std));
  Tensor t = Tensor::empty(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}
// The CPU tensor rounded to dt (so both sides see the same inputs) and its device copy.
struct Pair {
  Tensor cpu, gpu;
};
Pair upload(const Tensor& t, DType dt) {
  Tensor r = t.to(dt).to(DType::F32);
  return {r, t.to(dt).to(Device::CUDA)};
}

const DType kTypes[] = {DType::F32, DType::BF16};

TEST_F(Cuda, Linear) {
  for (auto [N, I, O] : {std::tuple{1, 64, 32}, {7, 192, 576}, {33, 1024, 1536}, {130, 256, 129}})
    for (DType dt : kTypes) {
      Pair x = upload(randn({N, I}), dt), w = upload(randn({O, I}, 0.05), dt);
      Tensor ref = Tensor::empty({N, O}, DType::F32), out = poisoned({N, O}, dt);
      ops::linear(ref, x.cpu, w.cpu);
      ops::linear(out, x.gpu, w.gpu);
      expect_close("linear", out, ref, dt);
      // x · W with W [I, O]
      Pair wn = upload(randn({I, O}, 0.05), dt);
      ops::matmul_nn(ref, x.cpu, wn.cpu);
      Tensor out2 = poisoned({N, O}, dt);
      ops::matmul_nn(out2, x.gpu, wn.gpu);
      expect_close("matmul_nn", out2, ref, dt);
    }
  // fp16 products (the flash kernel's keys/values): f16 x, W and out, f32 accumulation.
  for (auto [N, I, O] : {std::tuple{300, 256, 2048}, {9, 64, 40}}) {
    Pair x = upload(randn({N, I}), DType::F16), w = upload(randn({O, I}, 0.05), DType::F16);
    Tensor ref = Tensor::empty({N, O}, DType::F32), out = poisoned({N, O}, DType::F16);
    ops::linear(ref, x.cpu, w.cpu);
    ops::linear(out, x.gpu, w.gpu);
    expect_close("linear f16", out, ref, DType::BF16);  // f16 output rounding: the 16-bit bound
  }
  EXPECT_THROW(
      ops::linear(poisoned({2, 4}, DType::F32), poisoned({2, 8}, DType::F16), poisoned({4, 8}, DType::F16)),
      Error);
}

TEST_F(Cuda, LinearF32ActivationsBf16Weights) {
  // Decode sizes go through the GEMV kernel (f32 activations kept); larger through cuBLASLt (bf16 operands).
  for (auto [N, I, O] : {std::tuple{1, 1024, 129}, {3, 7168, 64}, {8, 96, 100}, {5, 30, 7}, {33, 256, 64}}) {
    Tensor x = randn({N, I});
    Pair w = upload(randn({O, I}, 0.05), DType::BF16);
    Tensor ref = Tensor::empty({N, O}, DType::F32), out = poisoned({N, O}, DType::F32);
    ops::linear(ref, x, w.cpu);
    ops::linear(out, x.to(Device::CUDA), w.gpu);
    expect_close("linear f32 x bf16", out, ref, N <= 8 ? DType::F32 : DType::BF16);
  }
}

TEST_F(Cuda, LinearFp8BlockScaledWeights) {
  // fp8 weights with [32, 32] and [128, 128] blocks, partial edge blocks, row slices starting inside a
  // block; against the CPU product with the dequantized weights (f32: exact dequantization).
  for (auto [N, I, O, B] : {std::tuple{1, 96, 40, 32},
                            {5, 1024, 200, 128},
                            {8, 60, 33, 32},
                            {40, 256, 130, 128},
                            {17, 48, 96, 32}}) {
    Tensor wf = randn({O, I}, 0.05);
    Tensor q = wf.to(DType::F8E4M3);  // codes
    Tensor scale = Tensor::empty({(O + B - 1) / B, (I + B - 1) / B}, DType::F32);
    for (int64_t i = 0; i < scale.numel(); ++i) scale.data<float>()[i] = 0.5f + 0.25f * float(i % 5);
    Tensor wq = q.with_block_scale(scale, B, B);
    Tensor wd = wq.dequantize(DType::F32);
    Tensor wg = wq.to(Device::CUDA);
    ASSERT_EQ(wg.dtype(), DType::F8E4M3);
    Tensor x = randn({N, I});
    Tensor ref = Tensor::empty({N, O}, DType::F32), out = poisoned({N, O}, DType::F32);
    ops::linear(ref, x, wd);
    ops::linear(out, x.to(Device::CUDA), wg);
    expect_close("linear fp8", out, ref, DType::F32);
    {  // bf16 activations in and out (the flash path's kv_b_proj product)
      Pair xb = upload(x, DType::BF16);
      Tensor refb = Tensor::empty({N, O}, DType::F32), outb = poisoned({N, O}, DType::BF16);
      ops::linear(refb, xb.cpu, wd);
      ops::linear(outb, xb.gpu, wg);
      expect_close("linear fp8 bf16 activations", outb, refb, DType::BF16);
    }
    // A row slice starting inside a block (as W_UK[h] of kv_b_proj), used as x · W.
    const int64_t r0 = 3, rows = std::min<int64_t>(O - r0, 20);
    Tensor xs = randn({N, rows});
    Tensor ref2 = Tensor::empty({N, I}, DType::F32), out2 = poisoned({N, I}, DType::F32);
    ops::matmul_nn(ref2, xs, wd.slice(r0, rows));
    ops::matmul_nn(out2, xs.to(Device::CUDA), wg.slice(r0, rows));
    expect_close("matmul_nn fp8 slice", out2, ref2, DType::F32);
    Tensor ref3 = Tensor::empty({N, rows}, DType::F32), out3 = poisoned({N, rows}, DType::F32);
    ops::linear(ref3, x, wd.slice(r0, rows));
    ops::linear(out3, x.to(Device::CUDA), wg.slice(r0, rows));
    expect_close("linear fp8 slice", out3, ref3, DType::F32);
  }
}

TEST_F(Cuda, RmsNormRopeSwigluAxpyCopy) {
  for (int64_t N : {1, 9, 300})
    for (DType dt : kTypes) {
      const int64_t D = 192;
      Pair x = upload(randn({N, D}), dt);
      Tensor w = randn({D});
      Tensor ref = Tensor::empty({N, D}, DType::F32), rr = Tensor::empty({N}, DType::F32);
      ops::rmsnorm_fwd(ref, rr, x.cpu, w, 1e-6);
      Tensor out = poisoned({N, D}, dt), r = poisoned({N}, dt);
      ops::rmsnorm_fwd(out, r, x.gpu, w.to(Device::CUDA), 1e-6);
      expect_close("rmsnorm", out, ref, dt);
      expect_close("rmsnorm rstd", r, rr, dt);
      // RoPE on columns [8, 40) of [N, 3, 48] at positions 5N+…
      Pair q = upload(randn({N, 3, 48}), dt);
      Tensor pos = Tensor::empty({N}, DType::I64), inv = Tensor::empty({16}, DType::F32);
      for (int64_t i = 0; i < N; ++i) pos.data<int64_t>()[i] = 7 * i + 3;
      for (int i = 0; i < 16; ++i) inv.data<float>()[i] = std::pow(10000.0f, -i / 16.0f);
      Tensor qc = q.cpu.clone();
      ops::rope_fwd(qc, pos, inv, 8, 1.2);
      ops::rope_fwd(q.gpu, pos.to(Device::CUDA), inv.to(Device::CUDA), 8, 1.2);
      expect_close("rope", q.gpu, qc, dt);
      // SwiGLU and axpy
      Pair g = upload(randn({N, D}, 2), dt), u = upload(randn({N, D}), dt);
      Tensor sref = Tensor::empty({N, D}, DType::F32), so = poisoned({N, D}, dt);
      ops::swiglu_fwd(sref, g.cpu, u.cpu);
      ops::swiglu_fwd(so, g.gpu, u.gpu);
      expect_close("swiglu", so, sref, dt);
      if (dt == DType::F32) {  // f32 in, the next product's bf16 operand out
        Tensor sb = poisoned({N, D}, DType::BF16);
        ops::swiglu_fwd(sb, g.gpu, u.gpu);
        expect_close("swiglu (bf16 out)", sb, sref, DType::BF16);
      }
      Tensor a = g.cpu.clone(), ag = g.gpu.clone();
      ops::axpy_(a, u.cpu, -0.7);
      ops::axpy_(ag, u.gpu, -0.7);
      expect_close("axpy", ag, a, dt);
      // copy_cols
      Tensor dst = randn({N, 50}), dref = dst.clone();
      Tensor dgpu = dst.to(dt).to(Device::CUDA);
      dref = dref.to(dt).to(DType::F32);
      ops::copy_cols(dref, 10, x.cpu, 100, 30);
      ops::copy_cols(dgpu, 10, x.gpu, 100, 30);
      expect_close("copy_cols", dgpu, dref, dt);
    }
}

TEST_F(Cuda, Embedding) {
  const int64_t V = 500, D = 96, N = 37;
  Tensor ids = Tensor::empty({N}, DType::I64);
  for (int64_t i = 0; i < N; ++i) ids.data<int64_t>()[i] = int64_t(rng() % V);
  for (DType tdt : kTypes)
    for (DType dt : kTypes) {
      Pair table = upload(randn({V, D}), tdt);
      Tensor ref = Tensor::empty({N, D}, DType::F32), out = poisoned({N, D}, dt);
      ops::embedding_fwd(ref, ids, table.cpu);
      ops::embedding_fwd(out, ids.to(Device::CUDA), table.gpu);
      expect_close("embedding", out, ref, dt);
      Tensor from_host = poisoned({N, D}, dt);  // ids left on the host beside the GPU table
      ops::embedding_fwd(from_host, ids, table.gpu);
      EXPECT_EQ(test::diff(down(from_host), down(out)).max_abs, 0.0) << "embedding from host ids";
    }
  Tensor bad = ids.clone();
  bad.data<int64_t>()[3] = V;
  Tensor out = poisoned({N, D}, DType::F32);
  EXPECT_THROW(ops::embedding_fwd(out, bad.to(Device::CUDA), randn({V, D}).to(Device::CUDA)), Error);
  EXPECT_THROW(ops::embedding_fwd(out, bad, randn({V, D}).to(Device::CUDA)), Error);
}

TEST_F(Cuda, Router) {
  struct Case {
    ScoringFunc sf;
    TopkMethod m;
    int64_t E, G, TG, K;
    bool norm, bias;
  };
  for (const Case& c :
       {Case{ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 256, 8, 4, 8, true, true},
        Case{ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 64, 8, 4, 6, true, true},
        Case{ScoringFunc::Softmax, TopkMethod::Greedy, 64, 1, 1, 6, false, false},
        Case{ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, 160, 8, 3, 6, false, false},
        Case{ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 320, 8, 4, 8, true, true}}) {  // thread per token
    const int64_t N = 77;
    ops::RouterParams p{.scoring = c.sf,
                        .method = c.m,
                        .n_group = c.G,
                        .topk_group = c.TG,
                        .top_k = c.K,
                        .norm_topk_prob = c.norm,
                        .routed_scaling_factor = 2.5};
    Tensor logits = randn({N, c.E}, 2.0), bias = c.bias ? randn({c.E}, 0.1) : Tensor();
    Tensor idx = Tensor::empty({N, c.K}, DType::I32), w = Tensor::empty({N, c.K}, DType::F32),
           sc = Tensor::empty({N, c.E}, DType::F32);
    ops::router_fwd(idx, w, sc, logits, bias, p);
    Tensor gi = Tensor::empty({N, c.K}, DType::I32, Device::CUDA), gw = poisoned({N, c.K}, DType::F32),
           gs = poisoned({N, c.E}, DType::F32);
    ops::router_fwd(gi, gw, gs, logits.to(Device::CUDA), c.bias ? bias.to(Device::CUDA) : Tensor(), p);
    Tensor hi = gi.to(Device::CPU);
    for (int64_t i = 0; i < N * c.K; ++i)
      ASSERT_EQ(hi.data<int32_t>()[i], idx.data<int32_t>()[i]) << "router choice " << i << " E=" << c.E;
    expect_close("router weights", gw, w, DType::F32);
    expect_close("router scores", gs, sc, DType::F32);
  }
  // The load-balancing bias update on the device: the CPU's bits, over / under / at the mean load.
  for (const int64_t E : {int64_t(8), int64_t(300)}) {
    std::vector<int64_t> load(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) load[size_t(e)] = int64_t(rng() % 7) * 3;
    load[0] = 0;
    Tensor b = randn({E}, 0.3), gb = b.to(Device::CUDA);
    for (int rep = 0; rep < 3; ++rep) {
      ops::router_bias_update(b, load, 1e-3);
      ops::router_bias_update(gb, load, 1e-3);
    }
    EXPECT_EQ(test::diff(gb.to(Device::CPU), b).max_abs, 0.0) << "router_bias_update E=" << E;
  }
}

TEST_F(Cuda, Attention) {
  for (DType dt : kTypes) {
    // naive: T queries at q_pos0 over S keys
    for (auto [T, S0, H, Dq, Dv] : {std::tuple{5, 0, 4, 24, 16}, {17, 9, 16, 96, 64}, {64, 0, 2, 192, 128}}) {
      const int64_t S = S0 + T;
      Pair q = upload(randn({T, H, Dq}), dt), k = upload(randn({S, H, Dq}), dt),
           v = upload(randn({S, H, Dv}), dt);
      Tensor ref = Tensor::empty({T, H, Dv}, DType::F32), pr = Tensor::empty({H, T, S}, DType::F32);
      ops::attention_fwd(ref, pr, q.cpu, k.cpu, v.cpu, 0.3, S0);
      Tensor out = poisoned({T, H, Dv}, dt), pg = poisoned({H, T, S}, DType::F32);
      ops::attention_fwd(out, pg, q.gpu, k.gpu, v.gpu, 0.3, S0);
      expect_close("attention", out, ref, dt);
      expect_close("attention probs", pg, pr, dt);
    }
    // varlen
    const std::vector<int64_t> cu = {0, 6, 6, 40, 41};
    const int64_t N = cu.back(), H = 3, Dq = 40, Dv = 24;
    Pair q = upload(randn({N, H, Dq}), dt), k = upload(randn({N, H, Dq}), dt),
         v = upload(randn({N, H, Dv}), dt);
    const int64_t P = ops::varlen_probs_size(cu, H);
    Tensor ref = Tensor::empty({N, H, Dv}, DType::F32), pr = Tensor::empty({P}, DType::F32);
    ops::attention_fwd_varlen(ref, pr, q.cpu, k.cpu, v.cpu, cu, 0.25);
    Tensor out = poisoned({N, H, Dv}, dt), pg = poisoned({P}, DType::F32);
    ops::attention_fwd_varlen(out, pg, q.gpu, k.gpu, v.gpu, cu, 0.25);
    expect_close("attention varlen", out, ref, dt);
    expect_close("attention varlen probs", pg, pr, dt);
    // absorbed MLA against latent rows
    for (auto [T, S0, Hh, C, R] :
         {std::tuple{1, 30, 16, 256, 32}, {4, 0, 4, 32, 8}, {3, 100, 128, 512, 64}}) {
      const int64_t W = C + R, S = S0 + T;
      Pair qa = upload(randn({T, Hh, W}), dt), rows = upload(randn({S + 5, W}), dt);
      Tensor aref = Tensor::empty({T, Hh, C}, DType::F32), ao = poisoned({T, Hh, C}, dt);
      ops::mla_absorbed_fwd(aref, qa.cpu, rows.cpu, 0.1, S0);
      ops::mla_absorbed_fwd(ao, qa.gpu, rows.gpu, 0.1, S0);
      expect_close("mla absorbed", ao, aref, dt);
    }
  }
}

// The flash prefill kernel (tensor cores, bf16 operands) and its exact fallback against the CPU: several
// sequences, some continuing a cached prefix (more keys than queries), at the instantiated head dims
// (fixtures, bench-1b, DeepSeek-V3) and one that is not (the fallback).
TEST_F(Cuda, MlaFlashPrefill) {
  const std::vector<std::pair<int64_t, int64_t>> lens = {{1, 1},   {69, 69}, {130, 200},
                                                         {64, 64}, {3, 300}, {0, 5}};
  std::vector<int64_t> cu_q{0}, cu_k{0};
  for (auto [lq, lk] : lens) {
    cu_q.push_back(cu_q.back() + lq);
    cu_k.push_back(cu_k.back() + lk);
  }
  const int64_t Nq = cu_q.back(), Nk = cu_k.back();
  for (auto [H, dn, R, dv] : {std::tuple{4, 16, 8, 16}, {16, 64, 32, 64}, {3, 128, 64, 128}, {2, 24, 8, 16}})
    for (DType dt : kTypes)
      for (int mode = 0; mode < 4;
           ++mode) {  // 0: exact; 1: fp16 operands; 2: and f16 kv/kpe; 3: and bf16 out
        if (mode == 3 && dt != DType::F32) continue;
        const bool fp16_ops = mode > 0;
        const double scale = 1.0 / std::sqrt(double(dn + R));
        const DType kdt = mode >= 2 ? DType::F16 : dt;
        Pair q = upload(randn({Nq, H, dn + R}), dt), kv = upload(randn({Nk, H, dn + dv}), kdt),
             kpe = upload(randn({Nk, R}), kdt);
        Tensor ref = Tensor::empty({Nq, H, dv}, DType::F32),
               out = poisoned({Nq, H, dv}, mode == 3 ? DType::BF16 : dt);
        ops::mla_flash_fwd(ref, q.cpu, kv.cpu, kpe.cpu, cu_q, cu_k, scale, fp16_ops);
        ops::mla_flash_fwd(out, q.gpu, kv.gpu, kpe.gpu, cu_q, cu_k, scale, fp16_ops);
        const std::string what = "mla_flash H=" + std::to_string(H) + " dn=" + std::to_string(dn) + " mode " +
                                 std::to_string(mode);
        // fp16 operands (8× finer than bf16): held to 2e-3 in f32 activations
        test::Diff dd = test::diff(down(out), ref);
        EXPECT_FALSE(dd.nan) << what;
        EXPECT_LE(dd.rel, dt == DType::BF16 || mode == 3 ? 1e-2 : (fp16_ops ? 2e-3 : 1e-5))
            << what << ": " << test::str(dd);
      }
}

// The training attention (flash-style forward with the log-sum-exp kept, and the two-pass backward)
// against its exact CPU twin at bf16-rounded inputs: several whole sequences (lengths off the 64-row
// tiles, an empty one) at every instantiated head dims; the backward takes the CPU forward's o and lse on
// both sides, so each pass is checked on its own.
TEST_F(Cuda, MlaFlashTraining) {
  std::vector<int64_t> cu{0};
  for (int64_t L : {1, 69, 200, 64, 0, 300, 130}) cu.push_back(cu.back() + L);
  const int64_t N = cu.back();
  for (auto [H, dn, R, dv] : {std::tuple{4, 16, 8, 16}, {16, 64, 32, 64}, {3, 128, 64, 128}}) {
    const std::string what = "mla_flash_train H=" + std::to_string(H) + " dn=" + std::to_string(dn);
    const double scale = 1.0 / std::sqrt(double(dn + R));
    Pair q = upload(randn({N, H, dn + R}), DType::BF16), kv = upload(randn({N, H, dn + dv}), DType::BF16),
         kpe = upload(randn({N, R}), DType::BF16);
    Tensor out_ref = Tensor::empty({N, H, dv}, DType::F32), lse_ref = Tensor::empty({H, N}, DType::F32);
    ops::mla_flash_train_fwd(out_ref, lse_ref, q.cpu, kv.cpu, kpe.cpu, cu, scale);
    for (DType odt : kTypes) {
      Tensor out = poisoned({N, H, dv}, odt), lse = poisoned({H, N}, DType::F32);
      ops::mla_flash_train_fwd(out, lse, q.gpu, kv.gpu, kpe.gpu, cu, scale);
      expect_close(what + " out", out, out_ref, DType::BF16);
      const test::Diff dl = test::diff(down(lse), lse_ref);  // from f32 scores of exact bf16 products
      EXPECT_FALSE(dl.nan) << what;
      EXPECT_LE(dl.rel, 1e-5) << what << " lse: " << test::str(dl);
    }
    const Tensor d_o = randn({N, H, dv});
    Tensor dq_ref = Tensor::empty({N, H, dn + R}, DType::F32),
           dkv_ref = Tensor::empty({N, H, dn + dv}, DType::F32), dpe_ref = Tensor::empty({N, R}, DType::F32);
    ops::mla_flash_bwd(dq_ref, dkv_ref, dpe_ref, d_o, out_ref, lse_ref, q.cpu, kv.cpu, kpe.cpu, cu, scale);
    Tensor dq = poisoned(dq_ref.shape(), DType::F32), dkv = poisoned(dkv_ref.shape(), DType::F32),
           dpe = poisoned(dpe_ref.shape(), DType::F32);
    ops::mla_flash_bwd(dq, dkv, dpe, d_o.to(Device::CUDA), out_ref.to(Device::CUDA), lse_ref.to(Device::CUDA),
                       q.gpu, kv.gpu, kpe.gpu, cu, scale);
    expect_close(what + " dq", dq, dq_ref, DType::BF16);
    expect_close(what + " dkv", dkv, dkv_ref, DType::BF16);
    expect_close(what + " dkpe", dpe, dpe_ref, DType::BF16);
    // The same inputs twice give the same bits (no atomics).
    Tensor dq2 = poisoned(dq_ref.shape(), DType::F32), dkv2 = poisoned(dkv_ref.shape(), DType::F32),
           dpe2 = poisoned(dpe_ref.shape(), DType::F32);
    ops::mla_flash_bwd(dq2, dkv2, dpe2, d_o.to(Device::CUDA), out_ref.to(Device::CUDA),
                       lse_ref.to(Device::CUDA), q.gpu, kv.gpu, kpe.gpu, cu, scale);
    EXPECT_EQ(test::diff(down(dq2), down(dq)).max_abs, 0.0) << what;
    EXPECT_EQ(test::diff(down(dkv2), down(dkv)).max_abs, 0.0) << what;
    EXPECT_EQ(test::diff(down(dpe2), down(dpe)).max_abs, 0.0) << what;
    // dkv written in bf16 (kv_b's operand): the f32 result rounded once, the rest unchanged
    Tensor dq3 = poisoned(dq_ref.shape(), DType::F32), dkv3 = poisoned(dkv_ref.shape(), DType::BF16),
           dpe3 = poisoned(dpe_ref.shape(), DType::F32);
    ops::mla_flash_bwd(dq3, dkv3, dpe3, d_o.to(Device::CUDA), out_ref.to(Device::CUDA),
                       lse_ref.to(Device::CUDA), q.gpu, kv.gpu, kpe.gpu, cu, scale);
    EXPECT_EQ(test::diff(down(dkv3), down(dkv.to(DType::BF16))).max_abs, 0.0) << what << " (bf16 dkv)";
    EXPECT_EQ(test::diff(down(dq3), down(dq)).max_abs, 0.0) << what << " (bf16 dkv)";
  }
}

// The routing plan built on the GPU equals the host's (offsets, slot and row arrays: the same stable
// order), at sizes across several 1024-slot chunks, with experts left empty; an id out of range is an error.
TEST_F(Cuda, MoePlanOnTheDeviceEqualsTheHostPlan) {
  for (auto [N, K, E] : {std::tuple{1, 1, 4}, {37, 6, 64}, {3000, 6, 64}, {700, 8, 256}, {5, 2, 16}}) {
    Tensor idx = Tensor::empty({N, K}, DType::I32);
    std::uniform_int_distribution<int> pick(0, E / 2 - 1 > 0 ? E / 2 - 1 : 0);  // half the experts unused
    for (int64_t i = 0; i < N * K; ++i) idx.data<int32_t>()[i] = pick(rng) * 2;
    const ops::MoePlan h = ops::MoePlan::build(idx, E),
                       d = ops::MoePlan::build_on_device(idx.to(Device::CUDA), E);
    const std::string what = "N=" + std::to_string(N) + " K=" + std::to_string(K) + " E=" + std::to_string(E);
    EXPECT_EQ(d.offsets, h.offsets) << what;
    const Tensor ds = d.d_slot.to(Device::CPU), dr = d.d_row.to(Device::CPU);
    EXPECT_TRUE(std::equal(h.slot.begin(), h.slot.end(), ds.data<int64_t>())) << what << ": slot";
    EXPECT_TRUE(std::equal(h.row.begin(), h.row.end(), dr.data<int64_t>())) << what << ": row";
  }
  Tensor bad = Tensor::empty({3, 2}, DType::I32);
  for (int i = 0; i < 6; ++i) bad.data<int32_t>()[i] = i == 4 ? 9 : i;
  EXPECT_THROW(ops::MoePlan::build_on_device(bad.to(Device::CUDA), 8), Error);
}

TEST_F(Cuda, MoePermuteGroupedUnpermute) {
  const int64_t N = 50, K = 6, E = 64, D = 128, F = 64;
  Tensor idx = Tensor::empty({N, K}, DType::I32);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int> all(E);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + K);
    for (int64_t k = 0; k < K; ++k) idx.data<int32_t>()[n * K + k] = all[size_t(k)];
  }
  const ops::MoePlan plan = ops::MoePlan::build(idx, E);
  for (DType dt : kTypes) {
    Pair x = upload(randn({N, D}), dt), gw = upload(randn({N, K}), dt);
    std::vector<Tensor> wc, wg;
    for (int64_t e = 0; e < E; ++e) {
      Pair w = upload(randn({F, D}, 0.1), dt);
      wc.push_back(w.cpu);
      wg.push_back(w.gpu);
    }
    Tensor xp = Tensor::empty({N * K, D}, DType::F32), yp = Tensor::empty({N * K, F}, DType::F32),
           out = Tensor::empty({N, F}, DType::F32);
    ops::moe_permute(xp, x.cpu, plan);
    ops::grouped_linear(yp, xp, wc, plan);
    ops::moe_unpermute(out, yp, gw.cpu, plan);
    Tensor gxp = poisoned({N * K, D}, dt), gyp = poisoned({N * K, F}, dt), gout = poisoned({N, F}, dt);
    ops::moe_permute(gxp, x.gpu, plan);
    expect_close("moe_permute", gxp, xp, dt);
    if (dt == DType::F32) {  // f32 rows permuted straight into bf16
      Tensor bxp = poisoned({N * K, D}, DType::BF16);
      ops::moe_permute(bxp, x.gpu, plan);
      EXPECT_EQ(test::diff(down(bxp), down(gxp.to(DType::BF16))).max_abs, 0.0) << "moe_permute (bf16 out)";
    }
    ops::grouped_linear(gyp, gxp, wg, plan);
    expect_close("grouped_linear", gyp, yp, dt);
    ops::moe_unpermute(gout, gyp, gw.gpu, plan);
    expect_close("moe_unpermute", gout, out, dt);
    if (dt == DType::F32) {  // the experts' output in bf16 under f32 activations
      Tensor bout = poisoned({N, F}, DType::F32), rout = Tensor::empty({N, F}, DType::F32);
      ops::moe_unpermute(rout, yp.to(DType::BF16).to(DType::F32), gw.cpu, plan);
      ops::moe_unpermute(bout, gyp.to(DType::BF16), gw.gpu, plan);
      expect_close("moe_unpermute (bf16 yp)", bout, rout, DType::F32);
    }
  }
}

// A plan of one slot per token whose experts own the given numbers of rows, in order (the grouped kernels
// read only the offsets).
ops::MoePlan plan_of_rows(const std::vector<int64_t>& rows) {
  ops::MoePlan plan;
  plan.experts = int64_t(rows.size());
  plan.top_k = 1;
  plan.offsets = {0};
  for (int64_t n : rows) plan.offsets.push_back(plan.offsets.back() + n);
  plan.tokens = plan.offsets.back();
  return plan;
}

// The one-launch grouped expert kernel at model sizes: experts with 0, a few (GEMV path), and many rows
// (partial 128-row tiles), an inner dim that is not a multiple of 32, an output width that is not a
// multiple of 128; f32 activations over bf16 weights (the model's case: cast once to bf16) and bf16 in/out.
TEST_F(Cuda, GroupedLinearLargeExperts) {
  const std::vector<int64_t> rows = {0, 1, 7, 9, 130, 300, 1000, 64, 0, 257, 8, 513};
  const int64_t E = int64_t(rows.size()), I = 1064, O = 520;
  const ops::MoePlan plan = plan_of_rows(rows);
  const int64_t M = plan.tokens;
  for (DType dt : kTypes) {
    Pair x = upload(randn({M, I}), dt);
    std::vector<Tensor> wc, wg;
    for (int64_t e = 0; e < E; ++e) {
      Pair w = upload(randn({O, I}, 0.05), DType::BF16);
      wc.push_back(w.cpu);
      wg.push_back(w.gpu);
    }
    Tensor ref = Tensor::empty({M, O}, DType::F32), out = poisoned({M, O}, dt);
    ops::grouped_linear(ref, x.cpu, wc, plan);
    ops::grouped_linear(out, x.gpu, wg, plan);
    expect_close("grouped_linear (large experts)", out, ref, DType::BF16);
  }
}

// The training forms of the grouped kernel at model-like sizes (experts with 0, 1, 9, 130, 300 and 513 rows:
// partial 128-row tiles; F = 104 not a multiple of the 64-feature pair tile; D = 200 not a multiple of the
// 64-wide K step), each against the CPU's composition of the separate ops at the same bf16 operands:
// SwiGLU's forward writing h, g and u in one launch; the down projection's backward with SwiGLU's backward
// as its epilogue (dh never written) and the down matrices' gradients; the gate and up products' input
// gradient as one product along 2F.
TEST_F(Cuda, GroupedSwigluTrainingForms) {
  const std::vector<int64_t> rows = {0, 1, 9, 130, 300, 0, 513, 64};
  const int64_t E = int64_t(rows.size()), D = 200, F = 104;
  const ops::MoePlan plan = plan_of_rows(rows);
  const int64_t M = plan.tokens;
  std::vector<Tensor> cg, cu, cd, gg, gu,
      gd;  // gate, up [F, D] and down [D, F] per expert: CPU f32, GPU bf16
  for (int64_t e = 0; e < E; ++e) {
    Pair a = upload(randn({F, D}, 0.07), DType::BF16), b = upload(randn({F, D}, 0.07), DType::BF16),
         c = upload(randn({D, F}, 0.1), DType::BF16);
    cg.push_back(a.cpu);
    gg.push_back(a.gpu);
    cu.push_back(b.cpu);
    gu.push_back(b.gpu);
    cd.push_back(c.cpu);
    gd.push_back(c.gpu);
  }
  const Pair x = upload(randn({M, D}), DType::BF16);
  // forward: h (bf16 and f32), g and u
  Tensor rg = Tensor::empty({M, F}, DType::F32), ru = Tensor::empty({M, F}, DType::F32),
         rh = Tensor::empty({M, F}, DType::F32);
  ops::grouped_swiglu(rh, rg, ru, x.cpu, cg, cu, plan);
  Tensor hg = poisoned({M, F}, DType::BF16), g = poisoned({M, F}, DType::BF16),
         u = poisoned({M, F}, DType::BF16), hf = poisoned({M, F}, DType::F32);
  ops::grouped_swiglu(hg, g, u, x.gpu, gg, gu, plan);
  ops::grouped_swiglu(hf, Tensor(), Tensor(), x.gpu, gg, gu, plan);
  expect_close("grouped_swiglu h (bf16)", hg, rh, DType::BF16);
  expect_close("grouped_swiglu h (f32 out)", hf, rh, DType::BF16);
  expect_close("grouped_swiglu g", g, rg, DType::BF16);
  expect_close("grouped_swiglu u", u, ru, DType::BF16);
  // backward through the down projection, at the GPU's own (bf16) g, u and h
  const Pair dy = upload(randn({M, D}), DType::BF16);
  std::vector<Tensor> cdw, gdw;
  for (int64_t e = 0; e < E; ++e) {
    cdw.push_back(randn({D, F}, 0.1));
    gdw.push_back(cdw.back().to(Device::CUDA));
  }
  Tensor rdg = Tensor::empty({M, F}, DType::F32), rdu = Tensor::empty({M, F}, DType::F32);
  ops::grouped_down_swiglu_bwd(rdg, rdu, cdw, dy.cpu, down(hg), cd, down(g), down(u), plan);
  Tensor dg = poisoned({M, F}, DType::BF16), du = poisoned({M, F}, DType::BF16);
  ops::grouped_down_swiglu_bwd(dg, du, gdw, dy.gpu, hg, gd, g, u, plan);
  expect_close("grouped_down_swiglu_bwd dg", dg, rdg, DType::BF16);
  expect_close("grouped_down_swiglu_bwd du", du, rdu, DType::BF16);
  for (int64_t e = 0; e < E; ++e)
    expect_close("grouped_down_swiglu_bwd dw_down[" + std::to_string(e) + "]", gdw[size_t(e)], cdw[size_t(e)],
                 DType::BF16);
  // the gate and up input gradients as one product along 2F (weights transposed in chunks of 3 experts too)
  Tensor rdx = Tensor::empty({M, D}, DType::F32), gdx = poisoned({M, D}, DType::F32);
  ops::grouped_linear_pair_bwd(rdx, {}, {}, down(dg), down(du), x.cpu, cg, cu, plan);
  ops::grouped_linear_pair_bwd(gdx, {}, {}, dg, du, x.gpu, gg, gu, plan);
  expect_close("grouped_linear_pair_bwd dx (one product along 2F)", gdx, rdx, DType::BF16);
  Tensor chunked = poisoned({M, D}, DType::F32);
  ASSERT_TRUE(ops::cuda::grouped_pair_dgrad(chunked, dg, du, gg, gu, plan, 3 * 2 * D * F * 2));
  EXPECT_EQ(test::diff(down(chunked), down(gdx)).max_abs, 0.0) << "grouped_pair_dgrad in chunks of experts";
}

// The prefill's routed experts with the plan built on the device (moe_experts_grouped) against the CPU op:
// model sizes, a width that is not a multiple of the 64-feature pair tile, experts with no rows and one
// with most rows (many 128-row tiles); the same bits on a second run (rows within an expert land in an
// order the atomics pick, which must not change the result).
TEST_F(Cuda, MoeExpertsGroupedDevicePlan) {
  struct Shape5 {
    int64_t N, K, E, D, F;
    bool skewed;
  };
  for (const Shape5 c : {Shape5{300, 2, 16, 264, 136, false}, Shape5{2000, 6, 64, 1024, 512, false},
                         Shape5{700, 6, 32, 128, 64, true}}) {
    Tensor idx = Tensor::empty({c.N, c.K}, DType::I32);
    for (int64_t n = 0; n < c.N; ++n) {
      std::vector<int> all(size_t(c.E - 2));  // the last two experts get no rows
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      if (c.skewed && n % 10 != 0) std::iter_swap(all.begin(), std::find(all.begin(), all.end(), 3));
      std::sort(all.begin(), all.begin() + c.K);  // K distinct experts (expert 3 among them when skewed)
      for (int64_t k = 0; k < c.K; ++k) idx.data<int32_t>()[n * c.K + k] = all[size_t(k)];
    }
    Tensor x = randn({c.N, c.D}), w = randn({c.N, c.K});
    std::vector<Tensor> gc, uc, dc, gg, ug, dg;
    for (int64_t e = 0; e < c.E; ++e) {
      Pair a = upload(randn({c.F, c.D}, 0.05), DType::BF16), b = upload(randn({c.F, c.D}, 0.05), DType::BF16),
           d = upload(randn({c.D, c.F}, 0.05), DType::BF16);
      gc.push_back(a.cpu);
      uc.push_back(b.cpu);
      dc.push_back(d.cpu);
      gg.push_back(a.gpu);
      ug.push_back(b.gpu);
      dg.push_back(d.gpu);
    }
    Pair sa = upload(randn({c.F, c.D}, 0.05), DType::BF16), sb = upload(randn({c.F, c.D}, 0.05), DType::BF16),
         sd = upload(randn({c.D, c.F}, 0.05), DType::BF16);
    const ops::SharedExpert shc{sa.cpu, sb.cpu, sd.cpu}, shg{sa.gpu, sb.gpu, sd.gpu};
    const Tensor xg = x.to(Device::CUDA), ig = idx.to(Device::CUDA), wg = w.to(Device::CUDA);
    for (bool with_shared : {false, true}) {  // the shared expert folded in as one more expert of every token
      const ops::SharedExpert none;
      Tensor ref = Tensor::empty({c.N, c.D}, DType::F32);
      ops::moe_experts_grouped(ref, x, idx, w, gc, uc, dc, with_shared ? shc : none);
      ASSERT_TRUE(ops::moe_experts_grouped_applies(xg, gg, ug, dg, with_shared ? shg : none));
      Tensor out = poisoned({c.N, c.D}, DType::F32), again = poisoned({c.N, c.D}, DType::F32);
      ops::moe_experts_grouped(out, xg, ig, wg, gg, ug, dg, with_shared ? shg : none);
      ops::moe_experts_grouped(again, xg, ig, wg, gg, ug, dg, with_shared ? shg : none);
      expect_close("moe_experts_grouped N=" + std::to_string(c.N) + (with_shared ? " + shared" : ""), out,
                   ref, DType::BF16);
      const Tensor a = down(out), b = down(again);
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * sizeof(float)), 0) << "runs differ";
    }
  }
}

// Sampling on the device against the CPU rule (ops::sample_row) with the same uniforms, on rows of a real
// vocabulary's size: peaked rows (a language model's), flat rows, rows full of ties (ids decide), top-k
// below and above the 1024 gathered candidates, top-p; a row the device cannot decide is flagged, never
// wrong; a NaN row is flagged.
TEST_F(Cuda, SampleRowsEqualsTheCpuRule) {
  const int64_t B = 24, V = 129280;
  Tensor logits = Tensor::empty({B, V}, DType::F32);
  std::normal_distribution<float> nd(0, 1);
  for (int64_t b = 0; b < B; ++b) {
    float* r = logits.data<float>() + b * V;
    for (int64_t i = 0; i < V; ++i) {
      const float z = nd(rng);
      r[i] = b % 3 == 0 ? z : b % 3 == 1 ? 0.3f * z : std::round(2.0f * z) * 0.5f;  // peaked, flat, ties
    }
    if (b % 3 == 0)
      for (int j = 0; j < 20; ++j) r[(b * 7919 + j * 104729) % V] = 14.0f - 0.5f * float(j);  // likely tokens
  }
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  Tensor u = Tensor::empty({B}, DType::F64);
  for (int64_t b = 0; b < B; ++b) u.data<double>()[b] = ud(rng);
  const Tensor lg = logits.to(Device::CUDA), ug = u.to(Device::CUDA);
  int decided = 0, flagged = 0;
  for (const ops::SampleParams p :
       {ops::SampleParams{1.0, 0, 1.0}, ops::SampleParams{0.7, 50, 0.9}, ops::SampleParams{1.3, 2000, 0.95},
        ops::SampleParams{1.0, 1, 1.0}, ops::SampleParams{0.8, 1024, 1.0}, ops::SampleParams{1.0, 0, 0.5}}) {
    Tensor ids = Tensor::empty({B}, DType::I64, Device::CUDA),
           fb = Tensor::empty({B}, DType::I32, Device::CUDA);
    ops::sample_rows(ids, fb, lg, ug, p);
    const Tensor hi = ids.to(Device::CPU), hf = fb.to(Device::CPU);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t want = ops::sample_row(logits.data<float>() + b * V, V, p, u.data<double>()[b]);
      if (hf.data<int32_t>()[b] != 0) {
        ++flagged;
        EXPECT_TRUE(p.top_k == 0 || p.top_k > ops::kDeviceSampleCandidates)
            << "flagged with top_k " << p.top_k;
        continue;
      }
      ++decided;
      EXPECT_EQ(hi.data<int64_t>()[b], want)
          << "row " << b << " T " << p.temperature << " top_k " << p.top_k << " top_p " << p.top_p;
    }
  }
  EXPECT_GE(decided, 3 * B) << flagged << " rows flagged";  // every row of the three top_k ≤ 1024 sets
  // A peaked row (93 % of its mass in 20 tokens) with every token allowed is decided on the device at
  // u = 0.5; a row holding a NaN is flagged (the host's sample_row then names the NaN).
  Tensor nanrow = logits.slice(0, 2).clone();
  nanrow.data<float>()[V + 5] = NAN;
  Tensor half = Tensor::empty({2}, DType::F64);
  half.data<double>()[0] = half.data<double>()[1] = 0.5;
  Tensor ids = Tensor::empty({2}, DType::I64, Device::CUDA),
         fb = Tensor::empty({2}, DType::I32, Device::CUDA);
  ops::sample_rows(ids, fb, nanrow.to(Device::CUDA), half.to(Device::CUDA), ops::SampleParams{});
  const Tensor hf = fb.to(Device::CPU), hi = ids.to(Device::CPU);
  EXPECT_EQ(hf.data<int32_t>()[0], 0);
  EXPECT_EQ(hi.data<int64_t>()[0], ops::sample_row(logits.data<float>(), V, {}, 0.5));
  EXPECT_EQ(hf.data<int32_t>()[1], 1);
  EXPECT_THROW(ops::sample_row(nanrow.data<float>() + V, V, {}, 0.5), Error);
}

// Training ops (issue 6, f32 activations) against their CPU twins: linear's backward through cuBLASLt (dx
// written, dw accumulated; f32 weights at the f32 bound, bf16 weights — dy and x rounded to bf16 — at the
// 16-bit bound), RMSNorm, SwiGLU and RoPE backward, AdamW bit for bit with f32 and bf16 moments over three
// steps, the f64 sum of squares, and the LM head fused with cross-entropy.
// The backward ops of train_bwd.cu (and the grouped products' backward through linear_bwd) against their
// CPU twins, f32: MoE un-permutation / permutation, grouped products (one and two matrices), the router
// (sigmoid and softmax, normalized or not), the balance loss (value and gradient), the embedding (repeated
// ids) and the attention from saved probabilities (one sequence with a cache offset, and varlen).
TEST_F(Cuda, TrainingBackwardOpsMatchTheCpu) {
  const auto gpu = [](const Tensor& t) { return t.defined() ? t.to(Device::CUDA) : Tensor(); };
  {  // MoE: N tokens, K of E experts each (distinct per token), D wide, F hidden.
    const int64_t N = 37, K = 3, E = 8, D = 48, F = 24, M = N * K;
    std::vector<int32_t> ids;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<int32_t> all(static_cast<size_t>(E));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      std::sort(all.begin(), all.begin() + K);
      ids.insert(ids.end(), all.begin(), all.begin() + K);
    }
    Tensor idx = Tensor::empty({N, K}, DType::I32);
    std::copy(ids.begin(), ids.end(), idx.data<int32_t>());
    const ops::MoePlan plan = ops::MoePlan::build(idx, E);
    Tensor dout = randn({N, D}), yp = randn({M, D}), tw = randn({N, K}), dxp = randn({M, D});
    Tensor dyp = Tensor::empty({M, D}, DType::F32), dtw = Tensor::empty({N, K}, DType::F32),
           dx = Tensor::empty({N, D}, DType::F32);
    ops::moe_unpermute_bwd(dyp, dtw, dout, yp, tw, plan);
    ops::moe_permute_bwd(dx, dxp, plan);
    Tensor gdyp = poisoned({M, D}, DType::F32), gdtw = poisoned({N, K}, DType::F32),
           gdx = poisoned({N, D}, DType::F32);
    ops::moe_unpermute_bwd(gdyp, gdtw, gpu(dout), gpu(yp), gpu(tw), plan);
    ops::moe_permute_bwd(gdx, gpu(dxp), plan);
    expect_close("moe_unpermute_bwd dyp", gdyp, dyp, DType::F32);
    {  // the fused form: dx += Σ_k (dxa + dxb)[row], the same bits as the CPU's composition
      const Tensor dxb = randn({M, D}), dx0 = randn({N, D});
      Tensor cdx = dx0.clone(), gdx2 = gpu(dx0);
      ops::moe_permute_bwd_add(cdx, dxp, dxb, plan);
      ops::moe_permute_bwd_add(gdx2, gpu(dxp), gpu(dxb), plan);
      EXPECT_EQ(test::diff(down(gdx2), cdx).max_abs, 0.0) << "moe_permute_bwd_add";
      EXPECT_GT(test::diff(cdx, dx0).max_abs, 0.0) << "moe_permute_bwd_add added nothing";
    }
    {  // dyp in bf16 (the down projection's operand), the weights' gradient still f32
      Tensor bdyp = poisoned({M, D}, DType::BF16), bdtw = poisoned({N, K}, DType::F32);
      ops::moe_unpermute_bwd(bdyp, bdtw, gpu(dout), gpu(yp), gpu(tw), plan);
      EXPECT_EQ(test::diff(down(bdyp), down(gdyp.to(DType::BF16))).max_abs, 0.0)
          << "moe_unpermute_bwd bf16 dyp";
      expect_close("moe_unpermute_bwd dtopk_w (bf16 dyp)", bdtw, dtw, DType::F32);
      // and yp kept in bf16: dtopk_w against the CPU at the rounded yp
      Tensor rdyp = Tensor::empty({M, D}, DType::F32), rdtw = Tensor::empty({N, K}, DType::F32);
      ops::moe_unpermute_bwd(rdyp, rdtw, dout, yp.to(DType::BF16).to(DType::F32), tw, plan);
      Tensor cdyp = poisoned({M, D}, DType::BF16), cdtw = poisoned({N, K}, DType::F32);
      ops::moe_unpermute_bwd(cdyp, cdtw, gpu(dout), gpu(yp).to(DType::BF16), gpu(tw), plan);
      expect_close("moe_unpermute_bwd dtopk_w (bf16 yp)", cdtw, rdtw, DType::F32);
      expect_close("moe_unpermute_bwd dyp (bf16 yp)", cdyp, rdyp, DType::BF16);
    }
    expect_close("moe_unpermute_bwd dtopk_w", gdtw, dtw, DType::F32);
    expect_close("moe_permute_bwd", gdx, dx, DType::F32);
    // Grouped products' backward: dx written, dw[e] accumulated.
    std::vector<Tensor> wa, wb, dwa, dwb, gwa, gwb, gdwa, gdwb;
    for (int64_t e = 0; e < E; ++e) {
      wa.push_back(randn({F, D}, 0.1));
      wb.push_back(randn({F, D}, 0.1));
      dwa.push_back(randn({F, D}, 0.1));
      dwb.push_back(randn({F, D}, 0.1));
      gwa.push_back(gpu(wa.back()));
      gwb.push_back(gpu(wb.back()));
      gdwa.push_back(gpu(dwa.back()));
      gdwb.push_back(gpu(dwb.back()));
    }
    Tensor xp = randn({M, D}), dya = randn({M, F}), dyb = randn({M, F});
    Tensor gx = Tensor::empty({M, D}, DType::F32), ggx = poisoned({M, D}, DType::F32);
    ops::grouped_linear_pair_bwd(gx, dwa, dwb, dya, dyb, xp, wa, wb, plan);
    ops::grouped_linear_pair_bwd(ggx, gdwa, gdwb, gpu(dya), gpu(dyb), gpu(xp), gwa, gwb, plan);
    expect_close("grouped_linear_pair_bwd dx", ggx, gx, DType::F32);
    for (int64_t e = 0; e < E; ++e) {
      expect_close("grouped_linear_pair_bwd dwa[" + std::to_string(e) + "]", gdwa[size_t(e)], dwa[size_t(e)],
                   DType::F32);
      expect_close("grouped_linear_pair_bwd dwb[" + std::to_string(e) + "]", gdwb[size_t(e)], dwb[size_t(e)],
                   DType::F32);
    }
    Tensor hx = Tensor::empty({M, F}, DType::F32), ghx = poisoned({M, F}, DType::F32);
    std::vector<Tensor> wd, dwd, gwd, gdwd;
    for (int64_t e = 0; e < E; ++e) {
      wd.push_back(randn({D, F}, 0.1));
      dwd.push_back(randn({D, F}, 0.1));
      gwd.push_back(gpu(wd.back()));
      gdwd.push_back(gpu(dwd.back()));
    }
    Tensor hin = randn({M, F}), dyd = randn({M, D});
    ops::grouped_linear_bwd(hx, dwd, dyd, hin, wd, plan);
    ops::grouped_linear_bwd(ghx, gdwd, gpu(dyd), gpu(hin), gwd, plan);
    expect_close("grouped_linear_bwd dx", ghx, hx, DType::F32);
    for (int64_t e = 0; e < E; ++e)
      expect_close("grouped_linear_bwd dw[" + std::to_string(e) + "]", gdwd[size_t(e)], dwd[size_t(e)],
                   DType::F32);
    // bf16 expert weights (bf16 training): dx through the transposed weights and the grouped kernel, dw
    // per expert with bf16 operands, against the CPU's f32 backward with the same (rounded) weights.
    std::vector<Tensor> wr, bw, dwr, gdwr;
    for (int64_t e = 0; e < E; ++e) {
      bw.push_back(gpu(wd[size_t(e)]).to(DType::BF16));
      wr.push_back(bw.back().to(Device::CPU).to(DType::F32));
      dwr.push_back(randn({D, F}, 0.1));
      gdwr.push_back(gpu(dwr.back()));
    }
    Tensor rx = Tensor::empty({M, F}, DType::F32), grx = poisoned({M, F}, DType::F32);
    ops::grouped_linear_bwd(rx, dwr, dyd, hin, wr, plan);
    ops::grouped_linear_bwd(grx, gdwr, gpu(dyd), gpu(hin), bw, plan);
    expect_close("grouped_linear_bwd dx (bf16 experts)", grx, rx, DType::BF16);
    {  // the same dx with the transposed weights through a scratch of 3 experts (chunks 3, 3, 2): the same
       // bits
      Tensor chunked = poisoned({M, F}, DType::F32);
      ASSERT_TRUE(
          ops::cuda::grouped_linear_dgrad(chunked, gpu(dyd).to(DType::BF16), bw, plan, 3 * D * F * 2));
      EXPECT_EQ(test::diff(chunked.to(Device::CPU), grx.to(Device::CPU)).max_abs, 0.0)
          << "grouped_linear_dgrad in chunks of experts";
    }
    for (int64_t e = 0; e < E; ++e)
      expect_close("grouped_linear_bwd dw[" + std::to_string(e) + "] (bf16 experts)", gdwr[size_t(e)],
                   dwr[size_t(e)], DType::BF16);
    std::vector<Tensor> bwa, bwb, rwa, rwb;
    for (int64_t e = 0; e < E; ++e) {
      bwa.push_back(gwa[size_t(e)].to(DType::BF16));
      bwb.push_back(gwb[size_t(e)].to(DType::BF16));
      rwa.push_back(bwa.back().to(Device::CPU).to(DType::F32));
      rwb.push_back(bwb.back().to(Device::CPU).to(DType::F32));
    }
    Tensor px = Tensor::empty({M, D}, DType::F32), gpx = poisoned({M, D}, DType::F32);
    ops::grouped_linear_pair_bwd(px, {}, {}, dya, dyb, xp, rwa, rwb, plan);
    ops::grouped_linear_pair_bwd(gpx, {}, {}, gpu(dya), gpu(dyb), gpu(xp), bwa, bwb, plan);
    expect_close("grouped_linear_pair_bwd dx (bf16 experts)", gpx, px, DType::BF16);
    {  // x and dy already the bf16 operands (kept from the forward), f32 dx and dw
      std::vector<Tensor> dwa2, dwb2, gdwa2, gdwb2;
      for (int64_t e = 0; e < E; ++e) {
        dwa2.push_back(randn({F, D}, 0.1));
        dwb2.push_back(randn({F, D}, 0.1));
        gdwa2.push_back(gpu(dwa2.back()));
        gdwb2.push_back(gpu(dwb2.back()));
      }
      const Tensor bx = gpu(xp).to(DType::BF16), bya = gpu(dya).to(DType::BF16),
                   byb = gpu(dyb).to(DType::BF16);
      Tensor qx = Tensor::empty({M, D}, DType::F32), gqx = poisoned({M, D}, DType::F32);
      ops::grouped_linear_pair_bwd(qx, dwa2, dwb2, down(bya), down(byb), down(bx), rwa, rwb, plan);
      ops::grouped_linear_pair_bwd(gqx, gdwa2, gdwb2, bya, byb, bx, bwa, bwb, plan);
      expect_close("grouped_linear_pair_bwd dx (bf16 operands)", gqx, qx, DType::BF16);
      for (int64_t e = 0; e < E; ++e) {
        expect_close("grouped_linear_pair_bwd dwa (bf16 operands)", gdwa2[size_t(e)], dwa2[size_t(e)],
                     DType::BF16);
        expect_close("grouped_linear_pair_bwd dwb (bf16 operands)", gdwb2[size_t(e)], dwb2[size_t(e)],
                     DType::BF16);
      }
    }
  }
  // Router backward and the balance loss, from the forward's choice and scores.
  for (ScoringFunc sf : {ScoringFunc::Sigmoid, ScoringFunc::Softmax})
    for (bool norm : {true, false}) {
      const int64_t L = 40, B = 3, N = L * B, E = 64, K = 6;
      const ops::RouterParams p{.scoring = sf,
                                .method = TopkMethod::NoauxTc,
                                .n_group = 8,
                                .topk_group = 4,
                                .top_k = K,
                                .norm_topk_prob = norm,
                                .routed_scaling_factor = 2.5};
      Tensor logits = randn({N, E}), bias = randn({E}, 0.1), idx = Tensor::empty({N, K}, DType::I32),
             w = Tensor::empty({N, K}, DType::F32), sc = Tensor::empty({N, E}, DType::F32);
      ops::router_fwd(idx, w, sc, logits, bias, p);
      Tensor dw = randn({N, K}), dl = Tensor::empty({N, E}, DType::F32), gdl = poisoned({N, E}, DType::F32);
      ops::router_bwd(dl, dw, idx, sc, p);
      ops::router_bwd(gdl, gpu(dw), gpu(idx), gpu(sc), p);
      const std::string tag =
          std::string(sf == ScoringFunc::Sigmoid ? " sigmoid" : " softmax") + (norm ? " norm" : "");
      expect_close("router_bwd" + tag, gdl, dl, DType::F32);
      const double loss = ops::router_balance_loss(dl, sc, idx, L, 1e-2, p);
      const double gloss = ops::router_balance_loss(gdl, gpu(sc), gpu(idx), L, 1e-2, p);
      EXPECT_NEAR(gloss, loss, 1e-9 * std::max(1.0, std::abs(loss))) << "router_balance_loss" << tag;
      EXPECT_GT(loss, 0.0);
      expect_close("router_balance_loss dlogits" + tag, gdl, dl, DType::F32);
    }
  {  // Embedding: repeated ids accumulate in token order.
    const int64_t V = 50, D = 300, N = 200;
    Tensor ids = Tensor::empty({N}, DType::I64);
    for (int64_t n = 0; n < N; ++n) ids.data<int64_t>()[n] = int64_t(rng() % 7) * 7 % V;
    Tensor dt = randn({V, D}, 0.1), dout = randn({N, D});
    Tensor gdt = gpu(dt);
    ops::embedding_bwd(dt, ids, dout);
    ops::embedding_bwd(gdt, gpu(ids), gpu(dout));
    expect_close("embedding_bwd", gdt, dt, DType::F32);
    EXPECT_EQ(test::diff(gdt.to(Device::CPU), dt).max_abs, 0.0) << "embedding_bwd is the CPU's sum order";
    // ids left on the host: the same sums (added once more onto the updated tables)
    ops::embedding_bwd(dt, ids, dout);
    ops::embedding_bwd(gdt, ids, gpu(dout));
    EXPECT_EQ(test::diff(gdt.to(Device::CPU), dt).max_abs, 0.0) << "embedding_bwd from host ids";
  }
  {  // Attention backward from saved probabilities: one sequence after 5 cached rows.
    const int64_t T = 19, P0 = 5, S = 30, H = 3, Dq = 20, Dv = 12;
    Tensor q = randn({T, H, Dq}), k = randn({S, H, Dq}), v = randn({S, H, Dv}), dout = randn({T, H, Dv});
    Tensor out = Tensor::empty({T, H, Dv}, DType::F32), probs = Tensor::empty({H, T, S}, DType::F32);
    probs.fill(0.0);
    ops::attention_fwd(out, probs, q, k, v, 0.3, P0);
    Tensor dq = Tensor::empty({T, H, Dq}, DType::F32), dk = Tensor::empty({S, H, Dq}, DType::F32),
           dv = Tensor::empty({S, H, Dv}, DType::F32);
    ops::attention_bwd(dq, dk, dv, dout, q, k, v, probs, 0.3, P0);
    Tensor gdq = poisoned(dq.shape(), DType::F32), gdk = poisoned(dk.shape(), DType::F32),
           gdv = poisoned(dv.shape(), DType::F32);
    ops::attention_bwd(gdq, gdk, gdv, gpu(dout), gpu(q), gpu(k), gpu(v), gpu(probs), 0.3, P0);
    expect_close("attention_bwd dq", gdq, dq, DType::F32);
    expect_close("attention_bwd dk", gdk, dk, DType::F32);
    expect_close("attention_bwd dv", gdv, dv, DType::F32);
  }
  // Varlen attention backward (odd lengths with an empty sequence, and tensor-core-sized sequences) from
  // the CPU's saved probabilities in f32; then bf16 training's form — probabilities kept in bf16, every
  // product with bf16 operands — against the CPU's f32 forward and backward.
  for (const auto& [cu, H, Dq, Dv] :
       {std::tuple{std::vector<int64_t>{0, 7, 7, 40, 41}, int64_t(3), int64_t(20), int64_t(12)},
        std::tuple{std::vector<int64_t>{0, 128, 256}, int64_t(4), int64_t(96), int64_t(64)}}) {
    const int64_t Nr = cu.back();
    Tensor q = randn({Nr, H, Dq}), k = randn({Nr, H, Dq}), v = randn({Nr, H, Dv}), d = randn({Nr, H, Dv});
    Tensor o = Tensor::empty({Nr, H, Dv}, DType::F32),
           p = Tensor::empty({ops::varlen_probs_size(cu, H)}, DType::F32);
    ops::attention_fwd_varlen(o, p, q, k, v, cu, 0.2);
    Tensor dq = Tensor::empty({Nr, H, Dq}, DType::F32), dk = Tensor::empty({Nr, H, Dq}, DType::F32),
           dv = Tensor::empty({Nr, H, Dv}, DType::F32);
    ops::attention_bwd_varlen(dq, dk, dv, d, q, k, v, p, cu, 0.2);
    {
      Tensor fdq = poisoned(dq.shape(), DType::F32), fdk = poisoned(dk.shape(), DType::F32),
             fdv = poisoned(dv.shape(), DType::F32);
      ops::attention_bwd_varlen(fdq, fdk, fdv, gpu(d), gpu(q), gpu(k), gpu(v), gpu(p), cu, 0.2);
      expect_close("attention_bwd_varlen dq", fdq, dq, DType::F32);
      expect_close("attention_bwd_varlen dk", fdk, dk, DType::F32);
      expect_close("attention_bwd_varlen dv", fdv, dv, DType::F32);
    }
    Tensor go = poisoned(o.shape(), DType::F32), gp = Tensor::empty({p.numel()}, DType::BF16, Device::CUDA);
    ops::attention_fwd_varlen(go, gp, gpu(q), gpu(k), gpu(v), cu, 0.2);
    const std::string tag = " (bf16 probs, " + std::to_string(Nr) + " rows)";
    expect_close("attention_fwd_varlen out" + tag, go, o, DType::BF16);
    expect_close("attention_fwd_varlen probs" + tag, gp.to(Device::CPU).to(DType::F32), p, DType::BF16);
    Tensor gdq = poisoned(dq.shape(), DType::F32), gdk = poisoned(dk.shape(), DType::F32),
           gdv = poisoned(dv.shape(), DType::F32);
    ops::attention_bwd_varlen(gdq, gdk, gdv, gpu(d), gpu(q), gpu(k), gpu(v), gp, cu, 0.2);
    expect_close("attention_bwd_varlen dq" + tag, gdq, dq, DType::BF16);
    expect_close("attention_bwd_varlen dk" + tag, gdk, dk, DType::BF16);
    expect_close("attention_bwd_varlen dv" + tag, gdv, dv, DType::BF16);
  }
}

// The multi-tensor optimizer ops (one launch for many tensors) against the one-tensor ops on the GPU:
// AdamW bit for bit (f32 and bf16 moments, per-tensor weight decay), the sums of squares within 1e-12;
// sizes across the chunk edge (2^18) and empty-ish tensors.
TEST_F(Cuda, MultiTensorOptimizerOpsMatchOneTensorOps) {
  for (DType mt : {DType::F32, DType::BF16}) {
    const std::vector<int64_t> sizes{1, 300, (int64_t(1) << 18) + 5, 1000, int64_t(1) << 19};
    std::vector<Tensor> w1, w2, g, m1, m2, v1, v2;
    std::vector<double> decay;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const Tensor w = randn({sizes[i]}), gg = randn({sizes[i]}, 0.01), m = randn({sizes[i]}, 0.001).to(mt),
                   v = randn({sizes[i]}, 0.001);
      Tensor va = v.to(DType::F32);
      for (int64_t k = 0; k < va.numel(); ++k) va.data<float>()[k] = std::abs(va.data<float>()[k]);
      w1.push_back(w.to(Device::CUDA));
      w2.push_back(w.to(Device::CUDA));
      g.push_back(gg.to(Device::CUDA));
      m1.push_back(m.to(Device::CUDA));
      m2.push_back(m.to(Device::CUDA));
      v1.push_back(va.to(mt).to(Device::CUDA));
      v2.push_back(va.to(mt).to(Device::CUDA));
      decay.push_back(i % 2 ? 0.1 : 0.0);
    }
    const ops::AdamWParams p{.lr = 1e-3,
                             .beta1 = 0.9,
                             .beta2 = 0.95,
                             .eps = 1e-8,
                             .weight_decay = 0.0,
                             .step = 3,
                             .grad_scale = 0.7};
    std::vector<Tensor*> pw, pm, pv;
    std::vector<const Tensor*> pg;
    for (size_t i = 0; i < sizes.size(); ++i) {
      ops::AdamWParams q = p;
      q.weight_decay = decay[i];
      ops::adamw_step(w1[i], g[i], m1[i], v1[i], q);
      pw.push_back(&w2[i]);
      pm.push_back(&m2[i]);
      pv.push_back(&v2[i]);
      pg.push_back(&g[i]);
    }
    // bf16 copies rewritten in the same pass for every other tensor (the compute copies of bf16 training)
    std::vector<Tensor> copies;
    std::vector<Tensor*> pc;
    for (size_t i = 0; i < sizes.size(); ++i) copies.push_back(poisoned({sizes[i]}, DType::BF16));
    for (size_t i = 0; i < sizes.size(); ++i) pc.push_back(i % 2 ? &copies[i] : nullptr);
    ops::adamw_step_many(pw, pg, pm, pv, decay, p, pc);
    for (size_t i = 0; i < sizes.size(); ++i) {
      EXPECT_EQ(test::diff(w2[i].to(Device::CPU), w1[i].to(Device::CPU)).max_abs, 0.0) << "w " << i;
      if (i % 2) {
        EXPECT_EQ(test::diff(down(copies[i]), down(w1[i].to(DType::BF16))).max_abs, 0.0) << "copy " << i;
      }
      EXPECT_EQ(
          test::diff(m2[i].to(Device::CPU).to(DType::F32), m1[i].to(Device::CPU).to(DType::F32)).max_abs, 0.0)
          << "m " << i;
      EXPECT_EQ(
          test::diff(v2[i].to(Device::CPU).to(DType::F32), v1[i].to(Device::CPU).to(DType::F32)).max_abs, 0.0)
          << "v " << i;
    }
    const std::vector<double> many = ops::sum_squares_many(pg);
    ASSERT_EQ(many.size(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      const double one = ops::sum_squares(g[i]);
      EXPECT_NEAR(many[i], one, 1e-12 * one) << "sum_squares " << i;
    }
  }
}

TEST_F(Cuda, TrainingOpsMatchTheCpu) {
  for (DType wt : {DType::F32, DType::BF16})
    for (auto [N, I, O] : {std::tuple{130, 256, 129}, {7, 64, 40}, {1000, 1024, 512}}) {
      Tensor x = randn({N, I}), dy = randn({N, O}), w = randn({O, I}, 0.05).to(wt).to(DType::F32);
      Tensor dx = Tensor::empty({N, I}, DType::F32), dw = randn({O, I}, 0.1);
      Tensor gdw = dw.to(Device::CUDA), gdx = poisoned({N, I}, DType::F32);
      ops::linear_bwd(dx, dw, dy, x, w);
      ops::linear_bwd(gdx, gdw, dy.to(Device::CUDA), x.to(Device::CUDA), w.to(wt).to(Device::CUDA));
      const DType bound = wt == DType::BF16 ? DType::BF16 : DType::F32;
      expect_close("linear_bwd dx " + std::string(dtype_name(wt)), gdx, dx, bound);
      expect_close("linear_bwd dw " + std::string(dtype_name(wt)), gdw, dw, bound);
      if (wt == DType::BF16) {  // x and dy as bf16 operands (kept from the forward), f32 gradients
        const Tensor bx = x.to(DType::BF16), bdy = dy.to(DType::BF16);
        Tensor rdx = Tensor::empty({N, I}, DType::F32), rdw = randn({O, I}, 0.1);
        Tensor g2 = rdw.to(Device::CUDA), gx2 = poisoned({N, I}, DType::F32);
        ops::linear_bwd(rdx, rdw, bdy.to(DType::F32), bx.to(DType::F32), w);
        ops::linear_bwd(gx2, g2, bdy.to(Device::CUDA), bx.to(Device::CUDA), w.to(wt).to(Device::CUDA));
        expect_close("linear_bwd dx (bf16 operands)", gx2, rdx, DType::BF16);
        expect_close("linear_bwd dw (bf16 operands)", g2, rdw, DType::BF16);
      }
    }
  for (auto [N, D] : {std::pair{77, 1024}, {5, 40}}) {
    Tensor x = randn({N, D}), w = randn({D}), dy = randn({N, D});
    Tensor y = Tensor::empty({N, D}, DType::F32), rstd = Tensor::empty({N}, DType::F32);
    ops::rmsnorm_fwd(y, rstd, x, w, 1e-6);
    Tensor dx = Tensor::empty({N, D}, DType::F32), dw = randn({D}, 0.1);
    Tensor gdx = poisoned({N, D}, DType::F32), gdw = dw.to(Device::CUDA);
    ops::rmsnorm_bwd(dx, dw, dy, x, w, rstd);
    ops::rmsnorm_bwd(gdx, gdw, dy.to(Device::CUDA), x.to(Device::CUDA), w.to(Device::CUDA),
                     rstd.to(Device::CUDA));
    expect_close("rmsnorm_bwd dx", gdx, dx, DType::F32);
    expect_close("rmsnorm_bwd dw", gdw, dw, DType::F32);
    // The residual form: dh += dx, dw accumulated, and dh's bf16 operand — the same bits as the GPU's
    // rmsnorm_bwd followed by add_ and a cast, near the CPU's composition.
    const Tensor dh0 = randn({N, D});
    Tensor rdh = dh0.clone(), rdw = dw.clone();
    ops::rmsnorm_bwd_add(rdh, Tensor(), rdw, dy, x, w, rstd);
    Tensor gdh = dh0.to(Device::CUDA), gop = poisoned({N, D}, DType::BF16), gdw2 = dw.to(Device::CUDA);
    ops::rmsnorm_bwd_add(gdh, gop, gdw2, dy.to(Device::CUDA), x.to(Device::CUDA), w.to(Device::CUDA),
                         rstd.to(Device::CUDA));
    expect_close("rmsnorm_bwd_add dh", gdh, rdh, DType::F32);
    expect_close("rmsnorm_bwd_add dw", gdw2, rdw, DType::F32);
    Tensor two = dh0.to(Device::CUDA), tmp = Tensor::empty({N, D}, DType::F32, Device::CUDA);
    ops::rmsnorm_bwd(tmp, Tensor(), dy.to(Device::CUDA), x.to(Device::CUDA), w.to(Device::CUDA),
                     rstd.to(Device::CUDA));
    ops::add_(two, tmp);
    EXPECT_EQ(test::diff(down(gdh), down(two)).max_abs, 0.0) << "rmsnorm_bwd_add = rmsnorm_bwd + add_";
    EXPECT_EQ(test::diff(down(gop), down(two.to(DType::BF16))).max_abs, 0.0) << "rmsnorm_bwd_add's bf16 dh";
  }
  {
    Tensor g = randn({300, 512}, 2), u = randn({300, 512}), d = randn({300, 512});
    Tensor dg = Tensor::empty({300, 512}, DType::F32), du = Tensor::empty({300, 512}, DType::F32);
    Tensor gdg = poisoned({300, 512}, DType::F32), gdu = poisoned({300, 512}, DType::F32);
    ops::swiglu_bwd(dg, du, d, g, u);
    ops::swiglu_bwd(gdg, gdu, d.to(Device::CUDA), g.to(Device::CUDA), u.to(Device::CUDA));
    expect_close("swiglu_bwd dgate", gdg, dg, DType::F32);
    expect_close("swiglu_bwd dup", gdu, du, DType::F32);
    Tensor bdg = poisoned({300, 512}, DType::BF16), bdu = poisoned({300, 512}, DType::BF16);
    ops::swiglu_bwd(bdg, bdu, d.to(Device::CUDA), g.to(Device::CUDA), u.to(Device::CUDA));
    expect_close("swiglu_bwd dgate (bf16 out)", bdg, dg, DType::BF16);
    expect_close("swiglu_bwd dup (bf16 out)", bdu, du, DType::BF16);
    // gate and up as the experts wrote them (bf16), dout f32: against the CPU at the rounded inputs
    const Tensor gb = g.to(DType::BF16), ub = u.to(DType::BF16);
    Tensor rdg = Tensor::empty({300, 512}, DType::F32), rdu = Tensor::empty({300, 512}, DType::F32);
    ops::swiglu_bwd(rdg, rdu, d, gb.to(DType::F32), ub.to(DType::F32));
    Tensor cdg = poisoned({300, 512}, DType::BF16), cdu = poisoned({300, 512}, DType::BF16);
    ops::swiglu_bwd(cdg, cdu, d.to(Device::CUDA), gb.to(Device::CUDA), ub.to(Device::CUDA));
    expect_close("swiglu_bwd dgate (bf16 in and out)", cdg, rdg, DType::BF16);
    expect_close("swiglu_bwd dup (bf16 in and out)", cdu, rdu, DType::BF16);
  }
  {
    const int64_t N = 33;
    Tensor q = randn({N, 4, 96}), pos = Tensor::empty({N}, DType::I64), inv = Tensor::empty({16}, DType::F32);
    for (int64_t i = 0; i < N; ++i) pos.data<int64_t>()[i] = 11 * i + 2;
    for (int i = 0; i < 16; ++i) inv.data<float>()[i] = std::pow(10000.0f, -i / 16.0f);
    Tensor qg = q.to(Device::CUDA);
    ops::rope_bwd(q, pos, inv, 64, 1.3);
    ops::rope_bwd(qg, pos.to(Device::CUDA), inv.to(Device::CUDA), 64, 1.3);
    expect_close("rope_bwd", qg, q, DType::F32);
  }
  for (DType md : {DType::F32, DType::BF16}) {
    const int64_t n = 100003;
    Tensor w = randn({n}), m = Tensor::zeros({n}, md), v = Tensor::zeros({n}, md);
    Tensor gw = w.to(Device::CUDA), gm = m.to(Device::CUDA), gv = v.to(Device::CUDA);
    for (int64_t step = 1; step <= 3; ++step) {
      const Tensor g = randn({n});
      const ops::AdamWParams p{.lr = 3e-3, .step = step, .grad_scale = 0.8};
      ops::adamw_step(w, g, m, v, p);
      ops::adamw_step(gw, g.to(Device::CUDA), gm, gv, p);
    }
    // The same operations in the same order; the CPU compiler may still fuse a multiply-add (GCC's
    // default contraction), so equal to within a rounding, not bit for bit: ‖Δ‖/‖ref‖ ≤ 1e-6 (f32), and
    // bf16 moments may round one step apart (≤ 1e-3).
    for (auto [name, cpu, gpu] : {std::tuple{"param", &w, &gw}, {"m", &m, &gm}, {"v", &v, &gv}}) {
      test::Diff d = test::diff(down(*gpu), cpu->to(DType::F32));
      const bool moment = std::string(name) != "param";
      EXPECT_LE(d.rel, md == DType::BF16 && moment ? 1e-3 : 1e-6)
          << "adamw " << name << " with " << dtype_name(md) << " moments: " << test::str(d);
    }
  }
  {
    const Tensor t = randn({1000003});
    const double want = ops::sum_squares(t), got = ops::sum_squares(t.to(Device::CUDA));
    EXPECT_NEAR(got, want, 1e-12 * want);
  }
  // The LM head fused with cross-entropy: loss, count, dh (written) and dw (accumulated); a real vocabulary
  // in three chunks of logits (4,300 rows × 129,280: 2,076 + 2,076 + 148), some rows without a target; a
  // vocabulary that is not a multiple of 4 (the rows' element-wise path).
  for (auto [N, D, V] : {std::tuple{70, 64, 1000}, {33, 16, 1001}, {4300, 32, 129280}}) {
    Tensor h = randn({N, D}), w = randn({V, D}, 0.05), tg = Tensor::empty({N}, DType::I64);
    for (int64_t i = 0; i < N; ++i) tg.data<int64_t>()[i] = i % 7 == 3 ? -1 : (i * 7919) % V;
    Tensor dh = Tensor::empty({N, D}, DType::F32), dw = randn({V, D}, 0.01);
    Tensor gdh = poisoned({N, D}, DType::F32), gdw = dw.to(Device::CUDA);
    const auto want = ops::lm_head_cross_entropy(dh, dw, h, w, tg, 0.01);
    const auto got = ops::lm_head_cross_entropy(gdh, gdw, h.to(Device::CUDA), w.to(Device::CUDA),
                                                tg.to(Device::CUDA), 0.01);
    EXPECT_EQ(got.count, want.count);
    EXPECT_NEAR(got.loss_sum, want.loss_sum, 1e-6 * want.loss_sum) << "V " << V;
    expect_close("lm_head_cross_entropy dh V=" + std::to_string(V), gdh, dh, DType::F32);
    expect_close("lm_head_cross_entropy dw V=" + std::to_string(V), gdw, dw, DType::F32);
    // A bf16 head (bf16 training): bf16 products, the gradient rows written in bf16, against the CPU at the
    // same rounded weights; the loss from f32 logits of exact bf16 products.
    const Tensor wb = w.to(DType::BF16);
    Tensor rdh = Tensor::empty({N, D}, DType::F32), rdw = randn({V, D}, 0.01);
    Tensor bdh = poisoned({N, D}, DType::F32), bdw = rdw.to(Device::CUDA);
    const auto want_b =
        ops::lm_head_cross_entropy(rdh, rdw, h.to(DType::BF16).to(DType::F32), wb.to(DType::F32), tg, 0.01);
    const auto got_b = ops::lm_head_cross_entropy(bdh, bdw, h.to(Device::CUDA), wb.to(Device::CUDA),
                                                  tg.to(Device::CUDA), 0.01);
    EXPECT_EQ(got_b.count, want_b.count);
    EXPECT_NEAR(got_b.loss_sum, want_b.loss_sum, 1e-5 * want_b.loss_sum) << "bf16 head, V " << V;
    expect_close("lm_head_cross_entropy dh (bf16 head) V=" + std::to_string(V), bdh, rdh, DType::BF16);
    expect_close("lm_head_cross_entropy dw (bf16 head) V=" + std::to_string(V), bdw, rdw, DType::BF16);
  }
}

TEST_F(Cuda, TensorMovesAndConversions) {
  // Lengths with and without a tail past the 8-element groups of the vectorized casts, and views that
  // start off a 16-byte boundary (the scalar kernel): every cast rounds as the host does.
  for (int64_t n : {1000, 1003, 7, 100001}) {
    for (int64_t off : {0, 1}) {
      Tensor a = randn({n + off}, 3.0);
      for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F8E4M3}) {
        Tensor cpu = a.slice(off, n).to(dt).to(DType::F32);
        Tensor gpu = a.to(Device::CUDA).slice(off, n).to(dt).to(DType::F32).to(Device::CPU);
        EXPECT_EQ(test::diff(gpu, cpu).max_abs, 0.0) << dtype_name(dt) << " n " << n << " offset " << off
                                                     << ": device rounding differs from the host's";
      }
    }
  }
  Tensor z = Tensor::zeros({5, 7}, DType::BF16, Device::CUDA);
  EXPECT_EQ(test::diff(z.to(Device::CPU), Tensor::zeros({5, 7}, DType::F32)).max_abs, 0.0);
  EXPECT_GT(device_bytes_reserved(), 0u);
}

}  // namespace
}  // namespace dseek
