// main.cpp — the dseek command: parses the subcommand and its flags, runs it, and turns errors into a
// message on stderr and a nonzero exit (DESIGN.md cli/).
#include <omp.h>

#include "core/blas_env.h"

#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  dseek::ensure_blas_kernels(argv);
  CLI::App app{
      "dseek — one native engine for DeepSeek-V3-architecture models: inspect, initialise, run, generate."};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  std::map<CLI::App*, dseek::cli::Runner> runners;
  auto reg = [&](const char* name, const char* desc, dseek::cli::Runner (*add)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, desc);
    runners[sub] = add(*sub);
  };
  reg("info", "Summarise a model directory: config, parameter counts, latent-cache bytes per token",
      dseek::cli::add_info);
  reg("init", "Write a randomly initialised model directory from a config.json", dseek::cli::add_init);
  reg("logits", "Run the forward pass on input_ids from a safetensors file and write the logits",
      dseek::cli::add_logits);
  reg("generate", "Generate tokens from a prompt through the latent cache", dseek::cli::add_generate);
  reg("grads", "Compute the training loss and every parameter's gradient for input_ids",
      dseek::cli::add_grads);
  reg("train", "Train a DeepSeek-style model (no flags: the embedded demo, corpus to sample in minutes)",
      dseek::cli::add_train);
  reg("data", "Prepare training data: token shards from text or JSONL, or the generated demo corpus",
      dseek::cli::add_data);
  reg("tokenize", "Encode text or a chat with a tokenizer directory; prints {\"ids\": [...]}",
      dseek::cli::add_tokenize);
  reg("detokenize", "Decode token ids with a tokenizer directory; prints the text",
      dseek::cli::add_detokenize);
  reg("tokenizer", "Make tokenizers for dseek's own models: a byte-level one, or BPE trained on text",
      dseek::cli::add_tokenizer);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (threads > 0) omp_set_num_threads(threads);
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const dseek::Error& e) {
    std::fprintf(stderr, "dseek: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dseek: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
