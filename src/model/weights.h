// weights.h — the model's parameters as typed structs with DeepSeek's HF names (DESIGN.md model/;
// spec/model.md §2.2, §4.1, §5.2, §6.3). The same struct types hold gradients. The one HF-name ↔
// field table is param_table(); loading, saving, initialisation and counting all walk it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace dseek {

struct MlaWeights {
  Tensor q_a_proj;            // [q_lora_rank, D]        (q_lora_rank > 0)
  Tensor q_a_layernorm;       // [q_lora_rank]
  Tensor q_b_proj;            // [H·(dn+dr), q_lora_rank]
  Tensor q_proj;              // [H·(dn+dr), D]          (q_lora_rank == 0)
  Tensor kv_a_proj_with_mqa;  // [C + R, D]: rows 0..C-1 the latent, C..C+R-1 the shared rope key
  Tensor kv_a_layernorm;      // [C]
  Tensor kv_b_proj;           // [H·(dn+dv), C]: per head dn rows of W_UK then dv rows of W_UV
  Tensor o_proj;              // [D, H·dv]
};

struct MlpWeights {
  Tensor gate_proj, up_proj;  // [F, D]
  Tensor down_proj;           // [D, F]
};

struct MoeWeights {
  Tensor gate;                      // [E, D] router (kept f32)
  Tensor e_score_correction_bias;   // [E] f32, selection only (V3)
  std::vector<MlpWeights> experts;  // E routed experts of width moe_intermediate_size
  MlpWeights shared;                // one MLP of width n_shared_experts · moe_intermediate_size
};

struct LayerWeights {
  bool is_moe = false;
  Tensor input_layernorm, post_attention_layernorm;  // [D]
  MlaWeights attn;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

// Multi-token prediction module k, stored as model.layers.{num_hidden_layers + k}.* (spec §5.2).
struct MtpWeights {
  Tensor enorm, hnorm;      // [D]
  Tensor eh_proj;           // [D, 2D]: columns 0..D-1 take enorm(emb), D..2D-1 take hnorm(h)
  Tensor shared_head_norm;  // [D]
  Tensor shared_head_head;  // [V, D] optional (DeepSeek stores a copy of lm_head)
  Tensor embed_tokens;      // [V, D] optional (a copy of the main embedding)
  LayerWeights layer;
};

struct Weights {
  Tensor embed_tokens;  // [V, D]
  Tensor norm;          // [D]
  Tensor lm_head;       // [V, D]
  std::vector<LayerWeights> layers;
  std::vector<MtpWeights> mtp;
  bool has_mtp = false;  // MTP tensors present (loaded or initialised)
  // When defined, every tensor above is a view into this one buffer (zero_grads), so that zero_grads_()
  // clears them all at once (one memset on the GPU instead of one launch per tensor).
  Tensor storage;

  // Empty tensors laid out for `cfg` (layer vector sizes, MoE flags).
  static Weights skeleton(const ModelConfig& cfg);
};

enum class ParamKind {
  Matrix,     // a projection [out, in]: normal init, compute dtype, may be fp8 in a checkpoint
  Embedding,  // embed_tokens / lm_head rows: normal init, compute dtype
  Norm,       // RMSNorm weight: ones, f32
  Router,     // MoE gate [E, D]: normal init, f32
  Bias,       // e_score_correction_bias: zeros, f32, updated by load balancing, not by gradients
};

struct ParamRef {
  std::string name;  // HF name
  Tensor* tensor;
  Shape shape;
  ParamKind kind;
  bool optional = false;  // may be absent from a checkpoint (MTP copies of the embedding / head)
  bool mtp = false;       // belongs to an MTP module
};

// Every parameter of `w` for `cfg`, in checkpoint order; MTP modules included when `with_mtp`.
std::vector<ParamRef> param_table(Weights& w, const ModelConfig& cfg, bool with_mtp);

struct LoadOptions {
  DType dtype = DType::F32;  // dtype of matrices and embeddings in memory: f32 or bf16 (f64: every
                             // parameter in f64, for gradient checks)
  bool load_mtp = true;      // load MTP modules when the checkpoint has them
  bool writable = false;     // own every tensor (training); else matching dtypes stay read-only file views
  bool keep_fp8 = false;     // fp8 checkpoint matrices stay fp8 with their block scales (for the GPU)
};

// The dtype a checkpoint's torch_dtype suggests for compute (bf16 stays bf16, otherwise f32).
DType default_weight_dtype(const ModelConfig& cfg);

// Loads from a model directory (single file or sharded). fp8 tensors with `weight_scale_inv` are
// dequantized block-wise (spec §6.4). Shapes are checked; a missing tensor is an error naming it.
Weights load_weights(const io::TensorSource& src, const ModelConfig& cfg, const LoadOptions& opt);

// Random weights as DeepSeek/HF initialise them: normal(0, initializer_range) for matrices, embeddings
// and the router, ones for norms, zeros for the correction bias. Deterministic in (seed, name).
Weights init_weights(const ModelConfig& cfg, DType dtype, uint64_t seed, bool with_mtp);

// Zero gradients shaped like `w` (every parameter it holds except the correction bias), of dtype `dt`,
// on `dev`.
Weights zero_grads(Weights& w, const ModelConfig& cfg, DType dt, Device dev = Device::CPU);

// Sets every gradient of `g` (from zero_grads) back to zero: one memset of its buffer on the GPU, pieces of
// it in parallel on the CPU.
void zero_grads_(Weights& g);

// Named tensors for writing (HF names), each converted to `dtype` where its kind allows (norms,
// router and bias stay f32 unless dtype is f32 anyway).
std::vector<io::NamedTensor> named_tensors(Weights& w, const ModelConfig& cfg, DType dtype);

struct ParamCounts {
  int64_t total = 0;   // main model (layers 0..L-1, embeddings, head)
  int64_t mtp = 0;     // MTP modules (unique parameters)
  int64_t active = 0;  // per token, excluding the embedding, including the LM head
};
ParamCounts count_params(const ModelConfig& cfg);
// Model FLOPs per trained token of sequences of seq_len (for MFU): 6 per active matmul parameter (forward
// 2, backward 4) plus the causal attention's two products, 6 · H · (qk_head_dim + v_head_dim) · T / 2 per
// layer; MTP left out.
double train_flops_per_token(const ModelConfig& cfg, int64_t seq_len);

}  // namespace dseek
