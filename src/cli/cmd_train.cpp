// cmd_train.cpp — `dseek train` (the main job) and `dseek data prepare | demo-corpus`.
// `dseek train` with no model/data runs the embedded default: generate the demo corpus, learn a small
// BPE tokenizer on it, prepare token shards, train the "demo" preset (MLA + MoE with a shared expert +
// MTP) for a few minutes, save checkpoints and the loss curve, and print a sample from the saved model.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "io/atomic_file.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_writer.h"
#include "train/data.h"
#include "train/demo_corpus.h"
#include "train/trainer.h"

namespace dseek::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::vector<int64_t> to64(const std::vector<int32_t>& v) {
  return {v.begin(), v.end()};
}

train::Encoder encoder_for(const tok::Tokenizer& t) {
  return [&t](const std::string& s) { return to64(t.encode(s, {.parse_special = false, .add_bos = false})); };
}

// The demo's data: corpus, tokenizer and shards under `run` (made once; reused on later runs).
void prepare_demo(const std::string& run, train::TrainConfig& cfg) {
  const fs::path r(run);
  const std::string corpus = (r / "corpus.jsonl").string(), tok_dir = (r / "tokenizer").string(),
                    data = (r / "data").string();
  fs::create_directories(r);
  if (!fs::exists(corpus)) {
    std::fprintf(stderr, "demo: generating the corpus (%s)\n", corpus.c_str());
    train::write_demo_corpus(corpus, size_t(3) << 20, 1);
  }
  if (!fs::exists(fs::path(tok_dir) / "tokenizer.json")) {
    auto docs = train::read_documents(corpus, "jsonl");
    tok::TrainStats st;
    auto vocab = tok::train_bpe(docs, {.vocab_size = 1024, .specials = tok::default_special_tokens()}, &st);
    tok::write_tokenizer_dir(tok_dir, vocab, tok::default_special_tokens());
    std::fprintf(stderr, "demo: learned %zu BPE merges in %.1f s (%s)\n", st.merges, st.seconds,
                 tok_dir.c_str());
  }
  if (!fs::exists(fs::path(data) / "meta.json")) {
    tok::Tokenizer t = tok::Tokenizer::load(tok_dir);
    auto st = train::prepare_data({corpus}, data, encoder_for(t), t.eos_id(), t.num_ids(), tok_dir,
                                  {.val_fraction = 0.02, .seed = 1});
    std::fprintf(stderr, "demo: %lld documents -> %lld train / %lld validation tokens (%s)\n",
                 (long long)st.documents, (long long)st.train_tokens, (long long)st.val_tokens, data.c_str());
  }
  cfg.model = "demo";
  cfg.data = data;
  cfg.tokenizer = tok_dir;
}

}  // namespace

Runner add_train(CLI::App& app) {
  struct Opts {
    std::string config, resume;
    train::TrainConfig cfg;
    std::string schedule = "cosine", moments = "f32";
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  train::TrainConfig& c = o->cfg;
  c.out = "";
  app.add_option("--config", o->config, "Training config (JSON; flags override its values)");
  // name, flag → config key (for "given explicitly" on resume)
  auto keyed = std::make_shared<std::vector<std::pair<CLI::Option*, std::string>>>();
  auto opt = [&](const char* flag, auto& var, const char* key, const char* help) {
    keyed->push_back({app.add_option(flag, var, help), key});
  };
  opt("--model", c.model, "model", "config.json, a model directory to start from, or a preset (demo, tiny)");
  opt("--data", c.data, "data", "Token shards made by `dseek data prepare`");
  opt("--tokenizer", c.tokenizer, "tokenizer",
      "Tokenizer directory (copied into checkpoints; used for the sample)");
  opt("--out", c.out, "out",
      "Run directory: checkpoints, metrics.jsonl, loss.svg (default runs/train, demo: runs/demo)");
  opt("--seq-len", c.seq_len, "seq_len", "Tokens per sequence");
  opt("--batch-size", c.batch_size, "batch_size", "Sequences per micro-batch");
  opt("--grad-accum", c.grad_accum, "grad_accum", "Micro-batches per optimizer step");
  opt("--steps", c.steps, "steps", "Optimizer steps in all");
  opt("--schedule", o->schedule, "schedule", "cosine | wsd | constant");
  opt("--lr", c.schedule.lr, "lr", "Peak learning rate");
  opt("--min-lr", c.schedule.min_lr, "min_lr", "Final learning rate");
  opt("--warmup", c.schedule.warmup_steps, "warmup_steps", "Linear warmup steps");
  opt("--decay-fraction", c.schedule.decay_fraction, "decay_fraction",
      "wsd: fraction of steps spent decaying");
  opt("--weight-decay", c.optim.weight_decay, "weight_decay", "AdamW decoupled weight decay");
  opt("--beta1", c.optim.beta1, "beta1", "AdamW β1");
  opt("--beta2", c.optim.beta2, "beta2", "AdamW β2");
  opt("--clip", c.optim.clip_norm, "clip_norm", "Global gradient-norm clip (0: off)");
  opt("--moments", o->moments, "moments", "AdamW moments dtype: f32 | bf16");
  opt("--mtp-lambda", c.mtp_lambda, "mtp_lambda", "λ of the MTP loss (DeepSeek: 0.3, then 0.1)");
  opt("--balance-alpha", c.balance_alpha, "balance_alpha",
      "α of the sequence-wise balance loss (<0: from config)");
  opt("--bias-update-speed", c.bias_update_speed, "bias_update_speed", "γ of the aux-loss-free bias update");
  opt("--eval-every", c.eval_every, "eval_every", "Validation every N steps (0: off)");
  opt("--eval-batches", c.eval_batches, "eval_batches", "Batches per validation");
  opt("--save-every", c.save_every, "save_every", "Checkpoint every N steps (and at the end)");
  opt("--keep-last", c.keep_last, "keep_last", "Checkpoints kept");
  opt("--log-every", c.log_every, "log_every", "Progress line every N steps");
  opt("--seed", c.seed, "seed", "Seed for initialisation and data order");
  opt("--device", c.device, "device",
      "Where the training step runs: cpu or cuda (f32 master weights on either)");
  opt("--dtype", c.dtype, "dtype",
      "Compute dtype of the products: f32, or bf16 (cuda: bf16 operands, f32 accumulation and masters)");
  opt("--sample-prompt", c.sample_prompt, "sample_prompt", "Prompt for the sample printed at the end");
  opt("--sample-tokens", c.sample_tokens, "sample_tokens", "Tokens in that sample (0: none)");
  keyed->push_back(
      {app.add_flag(
           "--recompute", c.recompute,
           "Recompute RMSNorm, MLA up-projections and the experts' gate/up products in the backward"),
       "recompute"});
  app.add_option("--resume", o->resume, "Resume from a checkpoint directory or a run directory (its newest)");
  return [o, keyed]() {
    train::TrainConfig cfg = o->cfg;
    std::vector<std::string> given;
    json base = train::TrainConfig().to_json();
    if (!o->config.empty()) {
      json file = json::parse(io::read_text_file(o->config));
      base.update(file);
    }
    // Flags given explicitly win over the file.
    json flags = cfg.to_json();
    flags["schedule"] = o->schedule;
    flags["moments"] = o->moments;
    for (auto& [op, key] : *keyed)
      if (op->count()) {
        base[key] = flags[key];
        given.push_back(key);
      }
    cfg = train::TrainConfig::from_json(base, o->config.empty() ? "flags" : o->config);
    const bool demo = o->resume.empty() && cfg.model.empty() && cfg.data.empty();
    if (demo) {
      if (cfg.out.empty() || cfg.out == "runs/train") cfg.out = "runs/demo";
      prepare_demo(cfg.out, cfg);
      // The embedded default: about 3 minutes on 2 cores, all included.
      auto dflt = [&](const char* key, auto value, auto& field) {
        if (std::find(given.begin(), given.end(), key) == given.end()) field = value;
      };
      dflt("seq_len", int64_t(128), cfg.seq_len);
      dflt("batch_size", int64_t(16), cfg.batch_size);
      dflt("steps", int64_t(900), cfg.steps);
      dflt("lr", 3e-3, cfg.schedule.lr);
      dflt("min_lr", 3e-4, cfg.schedule.min_lr);
      dflt("warmup_steps", int64_t(20), cfg.schedule.warmup_steps);
      dflt("eval_every", int64_t(150), cfg.eval_every);
      dflt("save_every", int64_t(150), cfg.save_every);
      dflt("log_every", int64_t(50), cfg.log_every);
      dflt("sample_prompt", std::string("Mia goes to the park."), cfg.sample_prompt);
      cfg.schedule.total_steps = cfg.steps;
    }
    if (cfg.out.empty()) cfg.out = "runs/train";
    train::TextCodec codec;
    std::shared_ptr<tok::Tokenizer> t;
    if (!cfg.tokenizer.empty() || !o->resume.empty()) {
      std::string td = cfg.tokenizer;
      if (td.empty()) {  // resuming: the checkpoint carries the tokenizer
        std::string ck = fs::exists(fs::path(o->resume) / "trainer_state.json")
                             ? o->resume
                             : train::latest_checkpoint(o->resume);
        if (!ck.empty() && fs::exists(fs::path(ck) / "tokenizer.json")) td = ck;
      }
      if (!td.empty()) {
        t = std::make_shared<tok::Tokenizer>(tok::Tokenizer::load(td));
        codec.encode = [t](const std::string& s) { return to64(t->encode(s, {.parse_special = false})); };
        codec.decode = [t](const std::vector<int64_t>& ids) {
          return t->decode(std::vector<int32_t>(ids.begin(), ids.end()), true);
        };
        codec.bos = t->bos_id();
      }
    }
    train::TrainSummary s = train::run_training(cfg, o->resume, given, codec);
    std::fprintf(stderr, "done: %lld steps, loss %.4f -> %.4f%s; checkpoint %s; loss curve %s/loss.svg\n",
                 (long long)s.steps_done, s.first_loss, s.last_loss,
                 s.last_val_loss >= 0 ? (", validation " + std::to_string(s.last_val_loss)).c_str() : "",
                 s.last_checkpoint.c_str(), cfg.out.c_str());
    return 0;
  };
}

Runner add_data(CLI::App& app) {
  app.require_subcommand(1);
  struct Opts {
    std::string tokenizer, out, format = "auto";
    std::vector<std::string> inputs;
    double val_fraction = 0.01;
    uint64_t seed = 0;
    int64_t shard_tokens = int64_t(1) << 27;
    size_t bytes = size_t(3) << 20;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* prep = app.add_subcommand("prepare", "Tokenize text or JSONL documents into token shards");
  prep->add_option("--tokenizer", o->tokenizer, "Tokenizer directory (tokenizer.json)")->required();
  prep->add_option("--input", o->inputs,
                   "Text files (documents split at blank lines) or .jsonl (a \"text\" field)")
      ->required();
  prep->add_option("--out", o->out, "Output directory")->required();
  prep->add_option("--val-fraction", o->val_fraction, "Fraction of documents held out for validation")
      ->capture_default_str();
  prep->add_option("--format", o->format, "auto | text | jsonl")->capture_default_str();
  prep->add_option("--seed", o->seed, "Seed of the train/validation split")->capture_default_str();
  prep->add_option("--shard-tokens", o->shard_tokens, "Tokens per training shard")->capture_default_str();
  CLI::App* corpus = app.add_subcommand("demo-corpus", "Write the generated demo corpus as JSONL");
  corpus->add_option("--out", o->out, "Output .jsonl file")->required();
  corpus->add_option("--bytes", o->bytes, "Approximate size")->capture_default_str();
  corpus->add_option("--seed", o->seed, "Seed")->capture_default_str();
  return [o, prep, corpus]() {
    if (corpus->parsed()) {
      train::write_demo_corpus(o->out, o->bytes, o->seed);
      std::printf("wrote %s\n", o->out.c_str());
      return 0;
    }
    (void)prep;
    tok::Tokenizer t = tok::Tokenizer::load(o->tokenizer);
    DSEEK_CHECK(t.eos_id() >= 0, o->tokenizer,
                ": the tokenizer names no EOS token (tokenizer_config.json eos_token)");
    auto st = train::prepare_data(o->inputs, o->out, encoder_for(t), t.eos_id(), t.num_ids(), o->tokenizer,
                                  {.val_fraction = o->val_fraction,
                                   .seed = o->seed,
                                   .shard_tokens = o->shard_tokens,
                                   .format = o->format});
    std::printf(
        "{\"documents\": %lld, \"train_tokens\": %lld, \"val_tokens\": %lld, \"val_documents\": %lld}\n",
        (long long)st.documents, (long long)st.train_tokens, (long long)st.val_tokens,
        (long long)st.val_documents);
    return 0;
  };
}

}  // namespace dseek::cli
