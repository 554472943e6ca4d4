// sample_text.h — deterministic, license-clean mixed text for the tokenizer's benchmark and tests:
// English-like prose, code, Chinese and Japanese, Cyrillic and Greek, accented words, emoji, digits,
// punctuation runs, URLs. Generated from a seed, so every machine makes the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dseek::tok {

// Documents of roughly `doc_bytes` each, adding up to at least `total_bytes`.
std::vector<std::string> sample_documents(size_t total_bytes, uint64_t seed = 1, size_t doc_bytes = 4096);

}  // namespace dseek::tok
