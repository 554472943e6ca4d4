// cmd_logits.cpp — `dseek logits MODEL_DIR --input-ids IN.safetensors --out OUT.safetensors`: reads
// I64 `input_ids` [B, T], writes F32 `logits` [B, T, V].
#include <cstdio>

#include "cli/commands.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace dseek::cli {

Runner add_logits(CLI::App& app) {
  struct Opts {
    std::string dir, in, out, dtype, device = "cpu";
  };
  auto o = std::make_shared<Opts>();
  app.add_option("MODEL_DIR", o->dir, "Model directory")->required();
  app.add_option("--input-ids", o->in, "safetensors file holding input_ids (I64 [B, T])")->required();
  app.add_option("--out", o->out, "safetensors file to write logits (F32 [B, T, V]) to")->required();
  app.add_option("--dtype", o->dtype,
                 "Weights in memory: f32 or bf16 (default: the checkpoint's; bf16 on cuda)");
  app.add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  return [o]() {
    auto f = io::SafetensorsFile::open(o->in);
    DSEEK_CHECK(f->find("input_ids"), o->in, ": no tensor named \"input_ids\"");
    Tensor ids = f->get("input_ids");
    DSEEK_CHECK(ids.ndim() == 2, o->in, ": input_ids must be [B, T], got ", ids.str());
    DSEEK_CHECK(ids.dtype() == DType::I64 || ids.dtype() == DType::I32, o->in,
                ": input_ids must be I64, got ", dtype_name(ids.dtype()));
    ids = ids.to(DType::I64);
    ModelConfig cfg = ModelConfig::load(o->dir);
    Model m = load_model(o->dir, o->dtype, o->device);
    const int64_t* p = ids.data<int64_t>();
    for (int64_t i = 0; i < ids.numel(); ++i)
      DSEEK_CHECK(p[i] >= 0 && p[i] < cfg.vocab_size, o->in, ": input_ids holds token ", p[i],
                  " outside the vocabulary (", cfg.vocab_size, ")");
    Tensor logits = m.forward(ids);
    io::write_safetensors(o->out, {{"logits", logits}});
    return 0;
  };
}

}  // namespace dseek::cli
