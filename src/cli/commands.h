// commands.h — the dseek subcommands (DESIGN.md cli/); each registers its options on the CLI11 app
// and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dseek::cli {

using Runner = std::function<int()>;

Runner add_info(CLI::App& app);
Runner add_init(CLI::App& app);
Runner add_logits(CLI::App& app);
Runner add_generate(CLI::App& app);
Runner add_grads(CLI::App& app);

// Shared helpers.
std::vector<int64_t> parse_id_list(const std::string& s, const char* flag);
DType parse_weight_dtype(const std::string& s, const char* flag);  // "f32" | "bf16"

}  // namespace dseek::cli
