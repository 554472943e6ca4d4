// demo_corpus.h — the main job's training text, generated (deterministic, license-clean): short
// stories about people, objects and places with consistent counting ("Mia has 3 apples. Tom gives her 2
// more. Now Mia has 5 apples."), simple facts and sums. Structured enough that a few-million-parameter
// model visibly learns it in minutes on two cores.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dseek::train {

// Documents totalling about `bytes` bytes.
std::vector<std::string> demo_corpus(size_t bytes, uint64_t seed);

// Writes them as JSONL ({"text": ...} per line), atomically.
void write_demo_corpus(const std::string& path, size_t bytes, uint64_t seed);

}  // namespace dseek::train
