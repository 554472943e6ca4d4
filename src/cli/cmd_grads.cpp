// cmd_grads.cpp — `dseek grads MODEL_DIR --input-ids IN.safetensors --out OUT.safetensors
// [--mtp-lambda X] [--balance-alpha A] [--dtype f32|f64]`: the training loss (mean next-token
// cross-entropy of logits[:, :-1] against input_ids[:, 1:], plus MTP and balance terms when asked) as F32
// `loss` [1] and every parameter's gradient as `grad.<HF name>` (F32).
#include <cstdio>

#include "cli/commands.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace dseek::cli {

Runner add_grads(CLI::App& app) {
  struct Opts {
    std::string dir, in, out, dtype = "f32";
    double mtp_lambda = 0, balance_alpha = 0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("MODEL_DIR", o->dir, "Model directory")->required();
  app.add_option("--input-ids", o->in, "safetensors file holding input_ids (I64 [B, T])")->required();
  app.add_option("--out", o->out, "safetensors file to write loss and grad.<name> to")->required();
  app.add_option("--mtp-lambda", o->mtp_lambda, "Weight λ of the MTP losses (loss = main + λ/D Σ MTP_k)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--balance-alpha", o->balance_alpha, "Weight α of the sequence-wise balance loss")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", o->dtype, "Compute precision: f32 or f64")->capture_default_str();
  return [o]() {
    DSEEK_CHECK(o->dtype == "f32" || o->dtype == "f64", "--dtype: \"", o->dtype, "\" is not f32 or f64");
    auto f = io::SafetensorsFile::open(o->in);
    DSEEK_CHECK(f->find("input_ids"), o->in, ": no tensor named \"input_ids\"");
    Tensor ids = f->get("input_ids");
    DSEEK_CHECK(ids.ndim() == 2 && ids.size(1) >= 2, o->in, ": input_ids must be [B, T] with T ≥ 2, got ",
                ids.str());
    DSEEK_CHECK(ids.dtype() == DType::I64 || ids.dtype() == DType::I32, o->in, ": input_ids must be I64");
    ids = ids.to(DType::I64).clone();
    ModelConfig cfg = ModelConfig::load(o->dir);
    const int64_t* p = ids.data<int64_t>();
    for (int64_t i = 0; i < ids.numel(); ++i)
      DSEEK_CHECK(p[i] >= 0 && p[i] < cfg.vocab_size, o->in, ": input_ids holds token ", p[i],
                  " outside the vocabulary (", cfg.vocab_size, ")");
    Model m = Model::load(o->dir, {.dtype = o->dtype == "f64" ? DType::F64 : DType::F32, .load_mtp = true});
    DSEEK_CHECK(o->mtp_lambda == 0 || m.w.has_mtp, o->dir, ": --mtp-lambda needs MTP weights (model.layers.",
                cfg.num_hidden_layers, ".*), which this checkpoint lacks");
    const int64_t B = ids.size(0), T = ids.size(1);
    Tensor targets = Tensor::empty({B, T}, DType::I64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) targets.data<int64_t>()[b * T + t] = t + 1 < T ? p[b * T + t + 1] : -1;
    Weights g = zero_grads(m.w, m.cfg, m.act_dtype());
    TrainResult r = m.forward_backward(
        ids, targets, {.mtp_lambda = o->mtp_lambda, .balance_alpha = o->balance_alpha, .recompute = false},
        &g);
    std::vector<io::NamedTensor> out;
    Tensor loss = Tensor::empty({1}, DType::F32);
    loss.data<float>()[0] = float(r.loss);
    out.push_back({"loss", loss});
    for (auto& ref : param_table(g, m.cfg, g.has_mtp))
      if (ref.tensor->defined()) out.push_back({"grad." + ref.name, ref.tensor->to(DType::F32)});
    io::write_safetensors(o->out, out);
    std::printf("loss %.6f (main %.6f", r.loss, r.main_loss);
    for (size_t k = 0; k < r.mtp_losses.size(); ++k) std::printf(", mtp%zu %.6f", k + 1, r.mtp_losses[k]);
    std::printf(")\n");
    return 0;
  };
}

}  // namespace dseek::cli
