// tokenizer_writer.h — writes tokenizers for the project's own models in Hugging Face's layout
// (model.md §7.1–7.2): tokenizer.json with DeepSeek-V3's normalizer, pre-tokenizer (the three Split
// regexes + ByteLevel), post-processor and decoder, a BPE model whose first 256 ids are the bytes 0..255,
// then learned merges, then the added tokens; and tokenizer_config.json with BOS/EOS and V3's chat
// template. Both files are written atomically.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dseek::tok {

extern const char* const kV3ChatTemplate;  // DeepSeek-V3's Jinja chat template text

struct SpecialToken {
  std::string content;
  bool special = true;  // false: an added token that survives skip_special decoding, as V3's <｜User｜>
};

// BOS, EOS, pad, <｜User｜>, <｜Assistant｜>, <think>, </think> and the tool-call markers.
std::vector<SpecialToken> default_special_tokens();
// Names → tokens, with V3's "special" flag for the names V3 has and special = true for the others.
std::vector<SpecialToken> special_tokens_from_names(const std::vector<std::string>& names);

// DeepSeek-V3's "pre_tokenizer" object.
nlohmann::json v3_pre_tokenizer_json();

// A byte-level BPE vocabulary: token bytes by id (ids 0..255 = single bytes) and merges as id pairs.
struct BpeVocab {
  std::vector<std::string> tokens;  // raw bytes
  std::vector<std::pair<int32_t, int32_t>> merges;
};
BpeVocab byte_vocab();  // the 256 bytes, no merges

std::string tokenizer_json_text(const BpeVocab& v, const std::vector<SpecialToken>& specials);
std::string tokenizer_config_text(const std::vector<SpecialToken>& specials);
// Writes DIR/tokenizer.json and DIR/tokenizer_config.json (creating DIR).
void write_tokenizer_dir(const std::string& dir, const BpeVocab& v,
                         const std::vector<SpecialToken>& specials);

}  // namespace dseek::tok
