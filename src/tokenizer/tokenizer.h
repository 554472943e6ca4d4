// tokenizer.h — a Hugging Face byte-level BPE tokenizer.json (model.md §7.1–7.2), exactly: added tokens,
// pre-tokenizer, BPE model, ByteLevel decoder; plus tokenizer_config.json's BOS/EOS and chat template.
//
// Input that is not valid UTF-8 (which Hugging Face cannot take: its text is a Rust str) is defined
// here as: added tokens are matched on the raw bytes; then every maximal run of bytes that is not
// valid UTF-8 becomes one pre-token of its own, which the BPE model encodes through the ByteLevel
// byte map like any other bytes; the valid text around it is pre-tokenized as usual. So encoding
// never fails and decode(encode(x)) == x for every byte string x.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"

namespace dseek::tok {

// What tokenizer_config.json says (absent file: everything empty/false).
struct TokenizerConfig {
  std::string bos_token, eos_token, pad_token;
  bool add_bos_token = false, add_eos_token = false;
  std::string chat_template;  // the Jinja text; empty when absent
};

struct EncodeOptions {
  bool parse_special = true;  // recognise special added tokens in the text (else they are plain text)
  bool add_bos = false;       // prepend the BOS token
};

class Tokenizer {
 public:
  // `path` is a directory holding tokenizer.json (and optionally tokenizer_config.json) or the
  // tokenizer.json file itself.
  static Tokenizer load(const std::string& path);
  // From the text of tokenizer.json (and tokenizer_config.json, may be empty); `name` is used in errors.
  static Tokenizer from_json_text(const std::string& tokenizer_json, const std::string& name,
                                  const std::string& config_json = "", const std::string& config_name = "");

  // One thread.
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const;
  // The same ids, with pre-tokenization and BPE spread over `threads` OpenMP threads (0 = all).
  std::vector<int32_t> encode_parallel(std::string_view text, const EncodeOptions& opt = {},
                                       int threads = 0) const;
  // Many documents at once, one thread per document (0 = all threads).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 const EncodeOptions& opt = {}, int threads = 0) const;

  // Ids → text as Hugging Face's decode: unknown ids are skipped, invalid UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // The raw bytes one token stands for (empty for an unknown id).
  const std::string& token_bytes(int32_t id) const;

  int32_t token_to_id(std::string_view token) const;  // added tokens first, then the vocab; -1 if absent
  bool id_to_token(int32_t id, std::string& out) const;
  bool has_id(int32_t id) const;
  bool is_special(int32_t id) const;
  int32_t num_ids() const { return int32_t(bytes_.size()); }  // max id + 1

  const TokenizerConfig& config() const { return config_; }
  int32_t bos_id() const { return bos_id_; }  // -1 when the config names none
  int32_t eos_id() const { return eos_id_; }
  const std::vector<AddedToken>& added_tokens() const { return added_.tokens(); }
  const BpeModel& model() const { return bpe_; }
  const PreTokenizer& pre_tokenizer() const { return pre_; }

  // The pieces the BPE model sees for `text` (added tokens have id >= 0). For tests and tools.
  std::vector<Piece> pre_tokenize(std::string_view text, Arena& arena, const EncodeOptions& opt = {},
                                  int threads = 1) const;

 private:
  BpeModel bpe_;
  PreTokenizer pre_;
  AddedVocab added_;
  TokenizerConfig config_;
  std::vector<std::string> bytes_;  // id → decoded bytes
  std::vector<uint8_t> known_, special_;
  StringIdMap added_ids_;
  int32_t bos_id_ = -1, eos_id_ = -1;

  void split_specials_and_invalid(std::string_view text, const EncodeOptions& opt,
                                  std::vector<Piece>& out) const;
  void bpe_pieces(const std::vector<Piece>& pieces, size_t begin, size_t end,
                  std::vector<int32_t>& out) const;
};

// Turns ids into text as they arrive, never emitting half a UTF-8 character: bytes of an incomplete
// sequence wait for the next token. The concatenation of everything put() and finish() return equals
// decode() of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = false)
      : t_(t), skip_special_(skip_special) {}
  std::string put(int32_t id);
  std::string finish();  // whatever is held back (as U+FFFD if it never completed)

 private:
  const Tokenizer& t_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace dseek::tok
