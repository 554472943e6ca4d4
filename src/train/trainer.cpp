// trainer.cpp — the training loop, checkpoints and resume (see trainer.h; spec/model.md §4.4 for the
// load balancing, §5.1 for MTP; DESIGN.md "Formats" for the checkpoint directory).
#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/device.h"
#include "infer/generate.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "ops/router.h"
#include "train/compute_copy.h"
#include "train/data.h"
#include "train/plot.h"

namespace dseek::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using clk = std::chrono::steady_clock;

json TrainConfig::to_json() const {
  return {{"model", model},
          {"data", data},
          {"tokenizer", tokenizer},
          {"out", out},
          {"seq_len", seq_len},
          {"batch_size", batch_size},
          {"grad_accum", grad_accum},
          {"steps", steps},
          {"schedule", schedule.kind},
          {"lr", schedule.lr},
          {"min_lr", schedule.min_lr},
          {"warmup_steps", schedule.warmup_steps},
          {"decay_fraction", schedule.decay_fraction},
          {"beta1", optim.beta1},
          {"beta2", optim.beta2},
          {"eps", optim.eps},
          {"weight_decay", optim.weight_decay},
          {"clip_norm", optim.clip_norm},
          {"moments", optim.moments == DType::BF16 ? "bf16" : "f32"},
          {"mtp_lambda", mtp_lambda},
          {"balance_alpha", balance_alpha},
          {"bias_update_speed", bias_update_speed},
          {"eval_every", eval_every},
          {"eval_batches", eval_batches},
          {"save_every", save_every},
          {"keep_last", keep_last},
          {"log_every", log_every},
          {"seed", seed},
          {"recompute", recompute},
          {"device", device},
          {"dtype", dtype},
          {"sample_prompt", sample_prompt},
          {"sample_tokens", sample_tokens}};
}

TrainConfig TrainConfig::from_json(const json& j, const std::string& what) {
  DSEEK_CHECK(j.is_object(), what, ": a training config is a JSON object");
  const json defaults = TrainConfig().to_json();
  for (auto& [k, v] : j.items()) {
    DSEEK_CHECK(defaults.contains(k), what, ": unknown training option \"", k, "\"");
    const json& d = defaults[k];
    const bool ok = (d.is_string() && v.is_string()) || (d.is_boolean() && v.is_boolean()) ||
                    (d.is_number_integer() && v.is_number_integer()) ||
                    (d.is_number_float() && v.is_number()) ||
                    (d.is_number_unsigned() && v.is_number_unsigned());
    DSEEK_CHECK(ok, what, ": option \"", k, "\" has the wrong type (", v.dump(), ")");
  }
  json m = defaults;
  m.update(j);
  TrainConfig c;
  c.model = m["model"];
  c.data = m["data"];
  c.tokenizer = m["tokenizer"];
  c.out = m["out"];
  c.seq_len = m["seq_len"];
  c.batch_size = m["batch_size"];
  c.grad_accum = m["grad_accum"];
  c.steps = m["steps"];
  c.schedule.kind = m["schedule"];
  c.schedule.lr = m["lr"];
  c.schedule.min_lr = m["min_lr"];
  c.schedule.warmup_steps = m["warmup_steps"];
  c.schedule.decay_fraction = m["decay_fraction"];
  c.optim.beta1 = m["beta1"];
  c.optim.beta2 = m["beta2"];
  c.optim.eps = m["eps"];
  c.optim.weight_decay = m["weight_decay"];
  c.optim.clip_norm = m["clip_norm"];
  const std::string mom = m["moments"];
  DSEEK_CHECK(mom == "f32" || mom == "bf16", what, ": moments must be f32 or bf16 (got \"", mom, "\")");
  c.optim.moments = mom == "bf16" ? DType::BF16 : DType::F32;
  c.mtp_lambda = m["mtp_lambda"];
  c.balance_alpha = m["balance_alpha"];
  c.bias_update_speed = m["bias_update_speed"];
  c.eval_every = m["eval_every"];
  c.eval_batches = m["eval_batches"];
  c.save_every = m["save_every"];
  c.keep_last = m["keep_last"];
  c.log_every = m["log_every"];
  c.seed = m["seed"];
  c.recompute = m["recompute"];
  c.device = m["device"];
  c.dtype = m["dtype"];
  c.sample_prompt = m["sample_prompt"];
  c.sample_tokens = m["sample_tokens"];
  c.schedule.total_steps = c.steps;
  return c;
}

void TrainConfig::validate() const {
  DSEEK_CHECK(!model.empty(), "training: no model (give --model CONFIG.json, a model directory or a preset)");
  DSEEK_CHECK(!data.empty(), "training: no data (give --data DIR made by `dseek data prepare`)");
  DSEEK_CHECK(seq_len >= 2, "seq_len must be at least 2");
  DSEEK_CHECK(batch_size >= 1 && grad_accum >= 1, "batch_size and grad_accum must be positive");
  DSEEK_CHECK(steps >= 1, "steps must be positive");
  DSEEK_CHECK(eval_every >= 0 && save_every >= 0 && log_every >= 1 && keep_last >= 1 && eval_batches >= 1,
              "eval_every/save_every ≥ 0, log_every/keep_last/eval_batches ≥ 1");
  DSEEK_CHECK(mtp_lambda >= 0 && bias_update_speed >= 0,
              "mtp_lambda and bias_update_speed must not be negative");
  DSEEK_CHECK(device == "cpu" || device == "cuda", "device must be cpu or cuda (got \"", device, "\")");
  DSEEK_CHECK(dtype == "f32" || dtype == "bf16", "dtype must be f32 or bf16 (got \"", dtype, "\")");
  DSEEK_CHECK(dtype == "f32" || device == "cuda",
              "dtype bf16 trains on the GPU (--device cuda); the CPU trains in f32");
  schedule.validate();
  optim.validate();
}

json preset_model_config(const std::string& name, int64_t vocab, int64_t bos, int64_t eos) {
  json base = {{"architectures", {"DeepseekV3ForCausalLM"}},
               {"model_type", "deepseek_v3"},
               {"vocab_size", vocab},
               {"num_key_value_heads", 4},
               {"ep_size", 1},
               {"routed_scaling_factor", 2.5},
               {"topk_method", "noaux_tc"},
               {"scoring_func", "sigmoid"},
               {"norm_topk_prob", true},
               {"moe_layer_freq", 1},
               {"aux_loss_alpha", 0.0001},
               {"seq_aux", true},
               {"hidden_act", "silu"},
               {"initializer_range", 0.02},
               {"rms_norm_eps", 1e-6},
               {"use_cache", true},
               {"bos_token_id", bos},
               {"eos_token_id", eos},
               {"tie_word_embeddings", false},
               {"rope_theta", 10000.0},
               {"rope_scaling", nullptr},
               {"attention_bias", false},
               {"attention_dropout", 0.0},
               {"torch_dtype", "float32"}};
  if (name ==
      "demo") {  // the main job's model: ~4.6 M parameters, MLA + MoE (16 routed, top-2, 1 shared) + MTP
    base.update({{"hidden_size", 192},
                 {"intermediate_size", 512},
                 {"moe_intermediate_size", 128},
                 {"num_hidden_layers", 4},
                 {"num_nextn_predict_layers", 1},
                 {"num_attention_heads", 4},
                 {"n_shared_experts", 1},
                 {"n_routed_experts", 16},
                 {"kv_lora_rank", 64},
                 {"q_lora_rank", 96},
                 {"qk_rope_head_dim", 16},
                 {"v_head_dim", 32},
                 {"qk_nope_head_dim", 32},
                 {"n_group", 4},
                 {"topk_group", 2},
                 {"num_experts_per_tok", 2},
                 {"first_k_dense_replace", 1},
                 {"max_position_embeddings", 1024}});
    return base;
  }
  if (name == "tiny") {  // for tests: a few thousand parameters per layer
    base.update({{"hidden_size", 32},
                 {"intermediate_size", 64},
                 {"moe_intermediate_size", 16},
                 {"num_hidden_layers", 2},
                 {"num_nextn_predict_layers", 1},
                 {"num_attention_heads", 2},
                 {"n_shared_experts", 1},
                 {"n_routed_experts", 8},
                 {"kv_lora_rank", 16},
                 {"q_lora_rank", 24},
                 {"qk_rope_head_dim", 8},
                 {"v_head_dim", 8},
                 {"qk_nope_head_dim", 8},
                 {"n_group", 4},
                 {"topk_group", 2},
                 {"num_experts_per_tok", 2},
                 {"first_k_dense_replace", 1},
                 {"max_position_embeddings", 256}});
    return base;
  }
  fail("unknown model preset \"", name, "\" (demo, tiny) — or give a config.json or a model directory");
}

std::string latest_checkpoint(const std::string& run_dir) {
  if (!fs::is_directory(run_dir)) return "";
  std::string best;
  for (auto& e : fs::directory_iterator(run_dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) != 0 || !e.is_directory()) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;  // written last: the directory is complete
    if (best.empty() || n > fs::path(best).filename().string()) best = e.path().string();
  }
  return best;
}

namespace {

std::string ckpt_name(int64_t step) {
  char b[64];
  std::snprintf(b, sizeof b, "checkpoint-%08lld", (long long)step);
  return b;
}

void copy_tokenizer(const std::string& tok_dir, const fs::path& dst) {
  if (tok_dir.empty()) return;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::path s = fs::path(tok_dir) / f;
    if (fs::exists(s)) io::atomic_write_text((dst / f).string(), io::read_text_file(s.string()));
  }
}

// Writes the whole checkpoint under a temporary name, then renames it into place (replacing an older
// copy of the same step only after the new one is complete).
std::string save_checkpoint(const std::string& run_dir, int64_t step, Model& m, const AdamW& opt,
                            const json& state, const std::string& tok_dir) {
  fs::create_directories(run_dir);
  const fs::path final_dir = fs::path(run_dir) / ckpt_name(step);
  const fs::path tmp = io::temp_sibling((fs::path(run_dir) / ("." + ckpt_name(step))).string());
  fs::create_directories(tmp);
  try {
    ModelConfig c = m.cfg;
    c.torch_dtype = "float32";
    io::write_model_weights(tmp.string(), named_tensors(m.w, m.cfg, DType::F32));
    io::atomic_write_text((tmp / "config.json").string(), c.to_json().dump(2) + "\n");
    copy_tokenizer(tok_dir, tmp);
    opt.save((tmp / "optimizer.safetensors").string());
    io::atomic_write_text((tmp / "trainer_state.json").string(), state.dump(2) + "\n");
    io::fsync_dir(tmp.string());
    if (fs::exists(final_dir)) {
      const fs::path old = io::temp_sibling((fs::path(run_dir) / (".old-" + ckpt_name(step))).string());
      fs::rename(final_dir, old);
      fs::rename(tmp, final_dir);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, final_dir);
    }
    io::fsync_dir(run_dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return final_dir.string();
}

void prune_checkpoints(const std::string& run_dir, int64_t keep) {
  std::vector<std::string> all;
  for (auto& e : fs::directory_iterator(run_dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) == 0 && e.is_directory()) all.push_back(e.path().string());
    // Leftovers of an interrupted save.
    if ((n.rfind(".checkpoint-", 0) == 0 || n.rfind(".old-checkpoint-", 0) == 0) && e.is_directory())
      fs::remove_all(e.path());
  }
  std::sort(all.begin(), all.end());
  // Renamed out of the way first (atomic), then deleted: a checkpoint-* directory is always whole.
  for (size_t i = 0; i + size_t(keep) < all.size(); ++i) {
    const fs::path p(all[i]);
    const fs::path trash = io::temp_sibling((p.parent_path() / (".old-" + p.filename().string())).string());
    fs::rename(p, trash);
    fs::remove_all(trash);
  }
}

std::string fmt_duration(double s) {
  char b[32];
  if (s >= 3600) {
    std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  } else {
    std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  }
  return b;
}

// Keeps the metrics log consistent with a resumed step: drops lines of steps after it.
void truncate_log(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      json j = json::parse(line);
      if (j.value("step", int64_t(0)) <= step) kept += line + "\n";
    } catch (const json::exception&) {  // a torn last line from a kill: dropped
    }
  }
  io::atomic_write_text(path, kept);
}

void write_curve(const std::string& log_path, const std::string& svg_path) {
  std::ifstream in(log_path);
  Series tr{"train loss (next token)", "#1f77b4", {}}, va{"validation loss", "#d62728", {}};
  std::string line;
  while (std::getline(in, line)) {
    try {
      json j = json::parse(line);
      if (j.contains("main_loss"))
        tr.points.emplace_back(j["step"].get<double>(), j["main_loss"].get<double>());
      if (j.contains("val_loss"))
        va.points.emplace_back(j["step"].get<double>(), j["val_loss"].get<double>());
    } catch (const json::exception&) {
    }
  }
  io::atomic_write_text(svg_path, svg_chart("dseek training loss", {tr, va}));
}

}  // namespace

void update_router_bias(Tensor& bias, const std::vector<int64_t>& load, double gamma) {
  ops::router_bias_update(bias, load, gamma);  // on the bias's device
}

TrainSummary run_training(TrainConfig cfg, const std::string& resume,
                          const std::vector<std::string>& overridden, const TextCodec& codec,
                          int64_t stop_after) {
  int64_t start_step = 0;
  Loader::Position data_pos;
  std::string resume_dir;
  if (!resume.empty()) {
    resume_dir = fs::exists(fs::path(resume) / "trainer_state.json") ? resume : latest_checkpoint(resume);
    DSEEK_CHECK(!resume_dir.empty(), "--resume ", resume, ": no complete checkpoint there");
    const std::string sp = (fs::path(resume_dir) / "trainer_state.json").string();
    json st = json::parse(io::read_text_file(sp));
    json saved = st.at("train_config");
    const json given = cfg.to_json();
    for (const auto& k : overridden) saved[k] = given[k];
    cfg = TrainConfig::from_json(saved, sp);
    start_step = st.at("step").get<int64_t>();
    data_pos = {st.at("data").at("epoch").get<int64_t>(), st.at("data").at("cursor").get<int64_t>()};
  }
  cfg.validate();

  // ---- model
  Model model;
  if (!resume_dir.empty()) {
    model = Model::load(resume_dir, {.dtype = DType::F32, .load_mtp = true, .writable = true});
  } else if (fs::is_directory(cfg.model)) {
    model = Model::load(cfg.model, {.dtype = DType::F32, .load_mtp = true, .writable = true});
  } else {
    json mj;
    if (fs::exists(cfg.model)) {
      mj = json::parse(io::read_text_file(cfg.model));
    } else {
      Loader probe(cfg.data, "train", 1, 1, 0);
      mj = preset_model_config(cfg.model, probe.vocab_size(), std::max<int64_t>(codec.bos, 0), probe.eos());
    }
    ModelConfig mc = ModelConfig::from_json(mj, cfg.model);
    model = Model::from_weights(mc, init_weights(mc, DType::F32, cfg.seed, /*with_mtp=*/true));
  }
  ModelConfig& mc = model.cfg;
  const Device dev = cfg.device == "cuda" ? Device::CUDA : Device::CPU;
  if (dev == Device::CUDA) {
    DSEEK_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device here");
    model.to(Device::CUDA, DType::F32);  // f32 master weights on the GPU, as on the CPU
  }
  Loader train(cfg.data, "train", cfg.seq_len, cfg.batch_size, cfg.seed);
  DSEEK_CHECK(train.vocab_size() <= mc.vocab_size, cfg.data, ": data vocabulary (", train.vocab_size(),
              ") exceeds the model's (", mc.vocab_size, ")");
  train.seek(data_pos);
  const bool mtp = model.w.has_mtp && cfg.mtp_lambda > 0;
  const double alpha = cfg.balance_alpha >= 0 ? cfg.balance_alpha : (mc.seq_aux ? mc.aux_loss_alpha : 0.0);
  const bool bias_update = cfg.bias_update_speed > 0 && mc.has_bias_correction() && mc.n_routed_experts > 0;

  // what the step computes with: the model itself (f32), or bf16 copies of its matrices (compute_copy.h)
  ComputeCopy compute(model, cfg.dtype == "bf16" ? DType::BF16 : DType::F32);
  AdamW opt(model.w, mc, cfg.optim);
  if (!resume_dir.empty()) opt.load((fs::path(resume_dir) / "optimizer.safetensors").string());
  Weights grads = zero_grads(model.w, mc, DType::F32, dev);
  // Routers whose bias the load-balancing update moves: main MoE layers, then MTP layers (the order of
  // TrainResult::expert_load).
  std::vector<Tensor*> biases;
  for (auto& L : model.w.layers)
    if (L.is_moe) biases.push_back(&L.moe.e_score_correction_bias);
  if (mtp)
    for (auto& M : model.w.mtp)
      if (M.layer.is_moe) biases.push_back(&M.layer.moe.e_score_correction_bias);

  fs::create_directories(cfg.out);
  const std::string log_path = (fs::path(cfg.out) / "metrics.jsonl").string();
  const std::string svg_path = (fs::path(cfg.out) / "loss.svg").string();
  if (start_step > 0) {
    truncate_log(log_path, start_step);
  } else if (fs::exists(log_path)) {
    fs::remove(log_path);
  }
  std::ofstream log(log_path, std::ios::app);
  const bool tty = ::isatty(2);
  const int64_t tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum;
  ParamCounts pc = count_params(mc);
  // MFU on the GPU: model FLOPs over the H100/H200 dense bf16 peak, 989 TFLOP/s (issue 6).
  const double flops_per_token = train_flops_per_token(mc, cfg.seq_len);
  constexpr double kPeakFlops = 989e12;
  std::fprintf(
      stderr,
      "dseek train: %s, %.2f M parameters (%.2f M active/token)%s, %lld steps of %lld tokens, data %s (%lld "
      "windows), out %s%s\n",
      cfg.model.c_str(), double(pc.total) / 1e6, double(pc.active) / 1e6, mtp ? " + MTP" : "",
      (long long)cfg.steps, (long long)tokens_per_step, cfg.data.c_str(), (long long)train.windows(),
      cfg.out.c_str(), start_step ? (" — resumed at step " + std::to_string(start_step)).c_str() : "");

  TrainSummary sum;
  sum.steps_done = start_step;
  const auto t_start = clk::now();
  double tokens_done = 0;
  const TrainOptions topt{.mtp_lambda = mtp ? cfg.mtp_lambda : 0.0,
                          .balance_alpha = alpha,
                          .recompute = cfg.recompute,
                          .grad_scale = 1.0 / double(cfg.grad_accum)};
  auto state_json = [&](int64_t step) {
    auto p = train.position();
    return json{{"step", step},
                {"data", {{"epoch", p.epoch}, {"cursor", p.cursor}}},
                {"train_config", cfg.to_json()},
                {"model_config", mc.to_json()},
                {"format", "dseek-trainer-state-1"}};
  };
  auto evaluate = [&]() {
    Loader val(cfg.data, "val", cfg.seq_len, cfg.batch_size, cfg.seed);
    double total = 0;
    int64_t n = 0;
    for (int64_t b = 0; b < cfg.eval_batches; ++b) {
      Tensor ids, tg;
      val.next(ids, tg);
      total += compute.model().forward_backward(ids, tg, {}, nullptr).main_loss;
      ++n;
    }
    return total / double(n);
  };
  bool have_val = false;
  try {
    Loader v(cfg.data, "val", cfg.seq_len, 1, 0);
    have_val = true;
  } catch (const Error&) {
  }

  for (int64_t step = start_step; step < cfg.steps; ++step) {
    const auto t0 = clk::now();
    const double lr = cfg.schedule.at(step);
    zero_grads_(grads);
    double loss = 0, main_loss = 0, bal = 0;
    std::vector<double> mtp_l;
    std::vector<std::vector<int64_t>> load;
    for (int64_t a = 0; a < cfg.grad_accum; ++a) {
      Tensor ids, tg;
      train.next(ids, tg);
      TrainResult r = compute.model().forward_backward(ids, tg, topt, &grads);
      loss += r.loss / double(cfg.grad_accum);
      main_loss += r.main_loss / double(cfg.grad_accum);
      bal += r.balance_loss / double(cfg.grad_accum);
      if (mtp_l.empty()) mtp_l.assign(r.mtp_losses.size(), 0);
      for (size_t k = 0; k < r.mtp_losses.size(); ++k) mtp_l[k] += r.mtp_losses[k] / double(cfg.grad_accum);
      if (load.empty()) load.assign(r.expert_load.size(), std::vector<int64_t>());
      for (size_t l = 0; l < r.expert_load.size(); ++l) {
        load[l].resize(r.expert_load[l].size());
        for (size_t e = 0; e < r.expert_load[l].size(); ++e) load[l][e] += r.expert_load[l][e];
      }
    }
    DSEEK_CHECK(std::isfinite(loss), "training diverged: loss is ", loss, " at step ", step + 1);
    StepStats st = opt.step(grads, lr, &compute);  // also brings the bf16 compute copies up to date
    // Auxiliary-loss-free balancing: b_i += γ · sign(mean load − load_i), outside the gradient.
    json load_stats = json::array();
    for (size_t l = 0; l < load.size(); ++l) {
      double mean = 0, mx = 0;
      for (int64_t x : load[l]) {
        mean += double(x);
        mx = std::max(mx, double(x));
      }
      mean /= double(load[l].size());
      load_stats.push_back(mean > 0 ? mx / mean : 0.0);
      if (bias_update && l < biases.size()) update_router_bias(*biases[l], load[l], cfg.bias_update_speed);
    }
    const double dt = std::chrono::duration<double>(clk::now() - t0).count();
    tokens_done += double(tokens_per_step);
    const double elapsed = std::chrono::duration<double>(clk::now() - t_start).count();
    const double tps = tokens_done / elapsed;
    if (step == start_step) sum.first_loss = loss;
    sum.last_loss = loss;
    sum.steps_done = step + 1;
    json rec = {{"step", step + 1},
                {"loss", loss},
                {"main_loss", main_loss},
                {"mtp_loss", mtp_l},
                {"balance_loss", bal},
                {"lr", lr},
                {"grad_norm", st.grad_norm},
                {"clip", st.clip},
                {"tokens", (step + 1) * tokens_per_step},
                {"step_seconds", dt},
                {"tokens_per_second", tps},
                {"mfu", dev == Device::CUDA ? tps * flops_per_token / kPeakFlops : 0.0},
                {"expert_load_max_over_mean", load_stats}};
    log << rec.dump() << "\n";
    log.flush();
    const bool last = step + 1 == cfg.steps || step + 1 == stop_after;
    if ((step + 1) % cfg.log_every == 0 || last || step == start_step || tty) {
      const double eta = double(cfg.steps - step - 1) * elapsed / double(step + 1 - start_step);
      const int width = 24, filled = int(double(width) * double(step + 1) / double(cfg.steps));
      std::string bar(size_t(filled), '=');
      bar += std::string(size_t(width - filled), ' ');
      double lmax = 0;
      for (auto& v : load_stats) lmax = std::max(lmax, v.get<double>());
      char mfu_buf[32] = "";
      if (dev == Device::CUDA)
        std::snprintf(mfu_buf, sizeof mfu_buf, " | MFU %.1f%%", 100.0 * tps * flops_per_token / kPeakFlops);
      const std::string mfu_text = mfu_buf;
      std::fprintf(
          stderr,
          "%sstep %lld/%lld [%s] loss %.4f%s | lr %.2e | %.0f tok/s%s | load max/mean %.2f | ETA %s%s",
          tty ? "\r" : "", (long long)(step + 1), (long long)cfg.steps, bar.c_str(), loss,
          mtp_l.empty() ? "" : (" (mtp " + std::to_string(mtp_l[0]).substr(0, 6) + ")").c_str(), lr, tps,
          mfu_text.c_str(), lmax, fmt_duration(eta).c_str(), tty ? "   " : "\n");
    }
    if (have_val && cfg.eval_every > 0 && ((step + 1) % cfg.eval_every == 0 || last)) {
      const double vl = evaluate();
      sum.last_val_loss = vl;
      log << json{{"step", step + 1}, {"val_loss", vl}}.dump() << "\n";
      log.flush();
      std::fprintf(stderr, "%sstep %lld: validation loss %.4f\n", tty ? "\n" : "", (long long)(step + 1), vl);
    }
    if ((cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) || last) {
      sum.last_checkpoint =
          save_checkpoint(cfg.out, step + 1, model, opt, state_json(step + 1), cfg.tokenizer);
      prune_checkpoints(cfg.out, cfg.keep_last);
      write_curve(log_path, svg_path);
    }
    if (step + 1 == stop_after) break;
  }
  if (tty) std::fprintf(stderr, "\n");
  if (sum.last_checkpoint.empty()) sum.last_checkpoint = latest_checkpoint(cfg.out);
  write_curve(log_path, svg_path);

  // A sample from the saved checkpoint (loaded back from disk, as a user would).
  if (!sum.last_checkpoint.empty() && cfg.sample_tokens > 0) {
    Model saved = Model::load(sum.last_checkpoint, {.dtype = DType::F32, .load_mtp = false});
    std::vector<int64_t> prompt;
    if (codec.encode && !cfg.sample_prompt.empty()) prompt = codec.encode(cfg.sample_prompt);
    if (prompt.empty()) prompt.push_back(codec.bos >= 0 ? codec.bos : saved.cfg.bos_token_id);
    infer::GenerateOptions go;
    go.max_new_tokens = cfg.sample_tokens;
    go.sampling = {.greedy = false, .temperature = 0.8, .top_k = 40, .top_p = 0.95, .seed = cfg.seed};
    auto r = infer::generate(saved, prompt, go);
    std::fprintf(stderr, "sample from %s:\n", sum.last_checkpoint.c_str());
    if (codec.decode) {
      std::printf("%s%s\n", cfg.sample_prompt.c_str(), codec.decode(r.ids).c_str());
    } else {
      for (int64_t id : r.ids) std::printf("%lld ", (long long)id);
      std::printf("\n");
    }
  }
  return sum;
}

}  // namespace dseek::train
