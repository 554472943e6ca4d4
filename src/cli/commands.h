// commands.h — the dseek subcommands (DESIGN.md cli/); each registers its options on the CLI11 app
// and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"

namespace dseek::cli {

using Runner = std::function<int()>;

Runner add_info(CLI::App& app);
Runner add_init(CLI::App& app);
Runner add_logits(CLI::App& app);
Runner add_generate(CLI::App& app);
Runner add_grads(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_detokenize(CLI::App& app);
Runner add_tokenizer(CLI::App& app);  // the `tokenizer` group: bytes, train
Runner add_train(CLI::App& app);
Runner add_data(CLI::App& app);  // the `data` group: prepare, demo-corpus

// Shared helpers.
std::vector<int64_t> parse_id_list(const std::string& s, const char* flag);
DType parse_weight_dtype(const std::string& s, const char* flag);  // "f32" | "bf16"
Device parse_device(const std::string& s);                         // "cpu" | "cuda"
// Chat messages from a JSON file (an array, or {"messages": [...]}).
std::vector<tok::ChatMessage> read_chat_file(const std::string& path);

// Loads MODEL_DIR for --device/--dtype: on the CPU in --dtype (default: the checkpoint's); on CUDA,
// fp8 matrices stay fp8 with their block scales and the others move in --dtype (default bf16).
Model load_model(const std::string& dir, const std::string& dtype_flag, const std::string& device_flag);

}  // namespace dseek::cli
