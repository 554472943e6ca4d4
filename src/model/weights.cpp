// weights.cpp — the HF-name table, checkpoint loading with fp8 block dequantization, random
// initialisation and parameter counts (spec/model.md §2.7, §5.2, §6.3, §6.4).
#include "model/weights.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "core/parallel.h"
#include "core/rng.h"

namespace dseek {

namespace {

void mla_refs(std::vector<ParamRef>& out, MlaWeights& a, const ModelConfig& c, const std::string& p,
              bool mtp) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(), C = c.kv_lora_rank,
                R = c.qk_rope_head_dim, dv = c.v_head_dim, dn = c.qk_nope_head_dim;
  auto add = [&](const char* n, Tensor& t, Shape s, ParamKind k) {
    out.push_back({p + n, &t, std::move(s), k, false, mtp});
  };
  if (c.q_lora_rank > 0) {
    add("self_attn.q_a_proj.weight", a.q_a_proj, {c.q_lora_rank, D}, ParamKind::Matrix);
    add("self_attn.q_a_layernorm.weight", a.q_a_layernorm, {c.q_lora_rank}, ParamKind::Norm);
    add("self_attn.q_b_proj.weight", a.q_b_proj, {H * dq, c.q_lora_rank}, ParamKind::Matrix);
  } else {
    add("self_attn.q_proj.weight", a.q_proj, {H * dq, D}, ParamKind::Matrix);
  }
  add("self_attn.kv_a_proj_with_mqa.weight", a.kv_a_proj_with_mqa, {C + R, D}, ParamKind::Matrix);
  add("self_attn.kv_a_layernorm.weight", a.kv_a_layernorm, {C}, ParamKind::Norm);
  add("self_attn.kv_b_proj.weight", a.kv_b_proj, {H * (dn + dv), C}, ParamKind::Matrix);
  add("self_attn.o_proj.weight", a.o_proj, {D, H * dv}, ParamKind::Matrix);
}

void mlp_refs(std::vector<ParamRef>& out, MlpWeights& m, int64_t D, int64_t F, const std::string& p,
              bool mtp) {
  out.push_back({p + "gate_proj.weight", &m.gate_proj, {F, D}, ParamKind::Matrix, false, mtp});
  out.push_back({p + "up_proj.weight", &m.up_proj, {F, D}, ParamKind::Matrix, false, mtp});
  out.push_back({p + "down_proj.weight", &m.down_proj, {D, F}, ParamKind::Matrix, false, mtp});
}

void layer_refs(std::vector<ParamRef>& out, LayerWeights& l, const ModelConfig& c, int64_t idx, bool mtp) {
  const std::string p = "model.layers." + std::to_string(idx) + ".";
  const int64_t D = c.hidden_size;
  out.push_back({p + "input_layernorm.weight", &l.input_layernorm, {D}, ParamKind::Norm, false, mtp});
  mla_refs(out, l.attn, c, p, mtp);
  out.push_back(
      {p + "post_attention_layernorm.weight", &l.post_attention_layernorm, {D}, ParamKind::Norm, false, mtp});
  if (!l.is_moe) {
    mlp_refs(out, l.mlp, D, c.intermediate_size, p + "mlp.", mtp);
    return;
  }
  const int64_t E = c.n_routed_experts;
  out.push_back({p + "mlp.gate.weight", &l.moe.gate, {E, D}, ParamKind::Router, false, mtp});
  if (c.has_bias_correction())
    out.push_back({p + "mlp.gate.e_score_correction_bias",
                   &l.moe.e_score_correction_bias,
                   {E},
                   ParamKind::Bias,
                   false,
                   mtp});
  for (int64_t e = 0; e < E; ++e)
    mlp_refs(out, l.moe.experts[size_t(e)], D, c.moe_intermediate_size,
             p + "mlp.experts." + std::to_string(e) + ".", mtp);
  if (c.n_shared_experts > 0)
    mlp_refs(out, l.moe.shared, D, c.n_shared_experts * c.moe_intermediate_size, p + "mlp.shared_experts.",
             mtp);
}

DType dtype_for(ParamKind k, DType matrix_dtype) {
  if (matrix_dtype == DType::F64) return DType::F64;
  return (k == ParamKind::Matrix || k == ParamKind::Embedding) ? matrix_dtype : DType::F32;
}

// W[r, c] = fp8(W[r, c]) · scale[r / br, c / bc], rounded once to `dt` (spec §6.4).
Tensor dequantize_fp8(const Tensor& q, const Tensor& scale, int64_t br, int64_t bc, DType dt) {
  const int64_t R = q.size(0), C = q.size(1);
  const int64_t SC = scale.size(1);
  const uint8_t* qp = static_cast<const uint8_t*>(q.raw());
  const float* sp = scale.data<float>();
  Tensor out = Tensor::empty(q.shape(), dt);
  parallel_for(R, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(C));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < C; ++c)
        row[size_t(c)] = f8e4m3_to_f32(qp[r * C + c]) * sp[(r / br) * SC + c / bc];
      convert(static_cast<uint8_t*>(out.raw()) + size_t(r * C) * dtype_size(dt), dt, row.data(), DType::F32,
              size_t(C));
    }
  });
  return out;
}

}  // namespace

Weights Weights::skeleton(const ModelConfig& c) {
  Weights w;
  w.layers.resize(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto& L = w.layers[size_t(l)];
    L.is_moe = c.is_moe_layer(l);
    if (L.is_moe) L.moe.experts.resize(size_t(c.n_routed_experts));
  }
  w.mtp.resize(size_t(c.num_nextn_predict_layers));
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    auto& L = w.mtp[size_t(k)].layer;
    L.is_moe = c.is_moe_layer(c.num_hidden_layers + k);
    if (L.is_moe) L.moe.experts.resize(size_t(c.n_routed_experts));
  }
  return w;
}

std::vector<ParamRef> param_table(Weights& w, const ModelConfig& c, bool with_mtp) {
  std::vector<ParamRef> out;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  out.push_back({"model.embed_tokens.weight", &w.embed_tokens, {V, D}, ParamKind::Embedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) layer_refs(out, w.layers[size_t(l)], c, l, false);
  out.push_back({"model.norm.weight", &w.norm, {D}, ParamKind::Norm});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", &w.lm_head, {V, D}, ParamKind::Embedding});
  if (!with_mtp) return out;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    auto& m = w.mtp[size_t(k)];
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers + k) + ".";
    out.push_back({p + "embed_tokens.weight", &m.embed_tokens, {V, D}, ParamKind::Embedding, true, true});
    out.push_back({p + "enorm.weight", &m.enorm, {D}, ParamKind::Norm, false, true});
    out.push_back({p + "hnorm.weight", &m.hnorm, {D}, ParamKind::Norm, false, true});
    out.push_back({p + "eh_proj.weight", &m.eh_proj, {D, 2 * D}, ParamKind::Matrix, false, true});
    layer_refs(out, m.layer, c, c.num_hidden_layers + k, true);
    out.push_back({p + "shared_head.norm.weight", &m.shared_head_norm, {D}, ParamKind::Norm, false, true});
    out.push_back(
        {p + "shared_head.head.weight", &m.shared_head_head, {V, D}, ParamKind::Embedding, true, true});
  }
  return out;
}

DType default_weight_dtype(const ModelConfig& c) {
  return (c.torch_dtype == "bfloat16" && !c.quant.fp8) ? DType::BF16 : DType::F32;
}

Weights load_weights(const io::TensorSource& src, const ModelConfig& c, const LoadOptions& opt) {
  DSEEK_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16 || opt.dtype == DType::F64,
              "weights can be held as f32, bf16 or f64, not ", dtype_name(opt.dtype));
  Weights w = Weights::skeleton(c);
  const std::string mtp_probe = "model.layers." + std::to_string(c.num_hidden_layers) + ".eh_proj.weight";
  w.has_mtp = opt.load_mtp && c.num_nextn_predict_layers > 0 && src.has(mtp_probe);
  auto refs = param_table(w, c, w.has_mtp);
  std::set<std::string> used;
  for (auto& r : refs) {
    if (r.optional) {  // MTP copies of the embedding and LM head: the model shares the main ones
      used.insert(r.name);
      continue;
    }
    if (!src.has(r.name))
      fail(src.dir(), ": checkpoint has no tensor \"", r.name, "\" (required by config.json)");
    used.insert(r.name);
    const io::TensorInfo& info = src.info(r.name);
    if (info.shape != r.shape)
      fail(src.dir(), ": tensor \"", r.name, "\" has shape ", shape_str(info.shape), ", config.json implies ",
           shape_str(r.shape));
    const DType want = dtype_for(r.kind, opt.dtype);
    Tensor t = src.get(r.name);
    if (info.dtype == DType::F8E4M3) {
      DSEEK_CHECK(r.shape.size() == 2, src.dir(), ": tensor \"", r.name, "\" is fp8 but not a matrix");
      std::string sname = r.name.substr(0, r.name.size() - std::string("weight").size()) + "weight_scale_inv";
      if (!src.has(sname)) fail(src.dir(), ": fp8 tensor \"", r.name, "\" has no \"", sname, "\"");
      used.insert(sname);
      const io::TensorInfo& si = src.info(sname);
      const int64_t br = c.quant.block_rows, bc = c.quant.block_cols;
      const Shape sshape = {(r.shape[0] + br - 1) / br, (r.shape[1] + bc - 1) / bc};
      if (si.dtype != DType::F32 || si.shape != sshape)
        fail(src.dir(), ": \"", sname, "\" is ", dtype_name(si.dtype), shape_str(si.shape), ", expected F32",
             shape_str(sshape), " for weight_block_size [", br, ", ", bc, "]");
      *r.tensor = opt.keep_fp8 ? t.with_block_scale(src.get(sname), br, bc)
                               : dequantize_fp8(t, src.get(sname), br, bc, want);
    } else {
      DSEEK_CHECK(dtype_is_float(info.dtype), src.dir(), ": tensor \"", r.name, "\" has non-float dtype ",
                  dtype_name(info.dtype));
      *r.tensor = t.to(want);  // zero-copy view of the mapping when the dtype already matches
      if (opt.writable && r.tensor->storage() == t.storage()) *r.tensor = r.tensor->clone();
    }
  }
  size_t unused = 0;
  std::string example;
  const std::string mtp_prefix = "model.layers." + std::to_string(c.num_hidden_layers) + ".";
  for (const auto& n : src.names()) {
    if (used.count(n)) continue;
    if (!opt.load_mtp && n.rfind(mtp_prefix, 0) == 0) continue;  // MTP modules left out on purpose
    if (++unused == 1) example = n;
  }
  if (unused)
    std::fprintf(stderr, "dseek: note: %zu checkpoint tensor(s) not used by this config (e.g. %s)\n", unused,
                 example.c_str());
  return w;
}

Weights init_weights(const ModelConfig& c, DType dtype, uint64_t seed, bool with_mtp) {
  DSEEK_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F64,
              "init: dtype must be f32 or bf16");
  Weights w = Weights::skeleton(c);
  w.has_mtp = with_mtp && c.num_nextn_predict_layers > 0;
  for (auto& r : param_table(w, c, w.has_mtp)) {
    if (r.optional) continue;  // MTP copies of the embedding and head: the model shares the main ones
    const DType dt = dtype_for(r.kind, dtype);
    Tensor t = Tensor::empty(r.shape, dt);
    if (r.kind == ParamKind::Norm) {
      t.fill(1.0);
    } else if (r.kind == ParamKind::Bias) {
      t.fill(0.0);
    } else {
      const Philox ph(seed, hash_str(r.name));
      const double std = c.initializer_range;
      const size_t es = dtype_size(dt);
      parallel_for(t.numel(), 1 << 16, [&](int64_t b, int64_t e) {
        float buf[256];
        for (int64_t i0 = b; i0 < e; i0 += 256) {
          const int64_t m = std::min<int64_t>(256, e - i0);
          for (int64_t i = 0; i < m; ++i) {
            const int64_t g = i0 + i;
            buf[i] = float(std * ph.normal2(uint64_t(g) / 2)[size_t(g % 2)]);
          }
          convert(static_cast<uint8_t*>(t.raw()) + size_t(i0) * es, dt, buf, DType::F32, size_t(m));
        }
      });
    }
    *r.tensor = t;
  }
  return w;
}

Weights zero_grads(Weights& w, const ModelConfig& c, DType dt, Device dev) {
  Weights g = Weights::skeleton(c);
  g.has_mtp = w.has_mtp;
  auto wr = param_table(w, c, w.has_mtp);
  auto gr = param_table(g, c, g.has_mtp);
  // One buffer, each gradient at an offset rounded up to 64 elements (256-byte aligned for f32).
  constexpr int64_t kAlign = 64;
  auto rounded = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  int64_t total = 0;
  for (size_t i = 0; i < wr.size(); ++i)
    if (wr[i].tensor->defined() && wr[i].kind != ParamKind::Bias) total += rounded(shape_numel(wr[i].shape));
  g.storage = Tensor::zeros({std::max<int64_t>(total, 1)}, dt, dev);
  int64_t off = 0;
  for (size_t i = 0; i < wr.size(); ++i) {
    if (!wr[i].tensor->defined() || wr[i].kind == ParamKind::Bias) continue;
    const int64_t n = shape_numel(wr[i].shape);
    *gr[i].tensor = g.storage.slice(off, n).view(wr[i].shape);  // a view of the shared buffer
    off += rounded(n);
  }
  return g;
}

void zero_grads_(Weights& g) {
  DSEEK_CHECK(g.storage.defined(), "zero_grads_: gradients made by zero_grads");
  if (g.storage.device() != Device::CPU) return g.storage.fill(0);
  // the CPU clears the buffer in pieces of 1 MB, in parallel
  auto* p = static_cast<unsigned char*>(g.storage.raw());
  const int64_t n = int64_t(g.storage.nbytes()), piece = int64_t(1) << 20;
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < n; a += piece) std::memset(p + a, 0, size_t(std::min(piece, n - a)));
}

std::vector<io::NamedTensor> named_tensors(Weights& w, const ModelConfig& c, DType dtype) {
  std::vector<io::NamedTensor> out;
  for (auto& r : param_table(w, c, w.has_mtp)) {
    if (!r.tensor->defined()) continue;
    const DType dt = r.kind == ParamKind::Bias ? DType::F32 : dtype;
    out.push_back({r.name, r.tensor->to(Device::CPU).to(dt)});
  }
  return out;
}

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  return 6.0 * double(count_params(c).active) +
         6.0 * double(c.num_hidden_layers) * double(c.num_attention_heads) *
             double(c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * double(seq_len) / 2.0;
}

ParamCounts count_params(const ModelConfig& c) {
  Weights w = Weights::skeleton(c);
  ParamCounts pc;
  for (auto& r : param_table(w, c, c.num_nextn_predict_layers > 0)) {
    const int64_t n = shape_numel(r.shape);
    if (r.mtp) {
      if (!r.optional) pc.mtp += n;
      continue;
    }
    pc.total += n;
    if (r.name == "model.embed_tokens.weight") continue;
    // Routed experts count only for the num_experts_per_tok a token visits.
    if (r.name.find(".mlp.experts.") != std::string::npos) {
      pc.active += n * c.num_experts_per_tok / c.n_routed_experts;
      continue;
    }
    pc.active += n;
  }
  if (c.tie_word_embeddings) pc.active += c.vocab_size * c.hidden_size;
  return pc;
}

}  // namespace dseek
