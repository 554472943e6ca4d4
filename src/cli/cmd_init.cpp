// cmd_init.cpp — `dseek init --config CONFIG.json --out DIR [--dtype f32|bf16] [--seed S]`: a randomly
// initialised model directory that dseek and transformers load (DESIGN.md "Formats").
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "io/atomic_file.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/weights.h"

namespace dseek::cli {

namespace fs = std::filesystem;

Runner add_init(CLI::App& app) {
  struct Opts {
    std::string config, out, dtype = "bf16";
    uint64_t seed = 0;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--config", o->config, "config.json to build the model from")->required();
  app.add_option("--out", o->out, "Directory to create")->required();
  app.add_option("--dtype", o->dtype, "Weight dtype: f32 or bf16")->capture_default_str();
  app.add_option("--seed", o->seed, "Random seed")->capture_default_str();
  app.add_flag("--force", o->force, "Overwrite a model already in --out");
  return [o]() {
    const DType dt = parse_weight_dtype(o->dtype, "--dtype");
    ModelConfig c = ModelConfig::load(o->config);
    DSEEK_CHECK(!c.quant.fp8, o->config, ": init writes bf16/f32 weights; remove quantization_config");
    fs::path out(o->out);
    const bool existed = fs::exists(out);
    if (existed) {
      DSEEK_CHECK(fs::is_directory(out), o->out, ": exists and is not a directory");
      const bool has_model = fs::exists(out / "config.json") || fs::exists(out / "model.safetensors") ||
                             fs::exists(out / "model.safetensors.index.json");
      DSEEK_CHECK(!has_model || o->force, o->out, ": already holds a model (use --force to overwrite)");
    }
    Weights w = init_weights(c, dt, o->seed, /*with_mtp=*/true);
    c.torch_dtype = dt == DType::BF16 ? "bfloat16" : "float32";
    nlohmann::json cj = c.to_json();
    cj.erase("quantization_config");
    auto tensors = named_tensors(w, c, dt);
    // A new directory is built under a temporary name and renamed into place whole.
    fs::path target = existed ? out : fs::path(io::temp_sibling(o->out));
    fs::create_directories(target);
    try {
      io::write_model_weights(target.string(), tensors);
      io::atomic_write_text((target / "config.json").string(), cj.dump(2) + "\n");
      if (!existed) {
        fs::rename(target, out);
        io::fsync_dir(out.parent_path().string());
      }
    } catch (...) {
      if (!existed) fs::remove_all(target);
      throw;
    }
    ParamCounts pc = count_params(c);
    std::printf("wrote %s: %lld parameters (+%lld MTP), %s, seed %llu\n", o->out.c_str(), (long long)pc.total,
                (long long)pc.mtp, dtype_name(dt), (unsigned long long)o->seed);
    return 0;
  };
}

}  // namespace dseek::cli
