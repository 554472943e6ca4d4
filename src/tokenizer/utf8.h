// utf8.h — the byte-level facts the tokenizer stands on (model.md §7.1): strict UTF-8 validation, the
// GPT-2 byte↔unicode map that ByteLevel pre-tokenizers and decoders use, and lossy decoding with the
// same replacement rule as Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid subpart).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dseek::tok {

// Length of the valid UTF-8 sequence starting at s[0] (1..4), or 0 when s[0..] does not start with
// a complete, well-formed sequence (overlongs, surrogates and code points > U+10FFFF are invalid).
size_t utf8_valid_len(const unsigned char* s, size_t n);

// Length of the longest prefix of s that is valid UTF-8.
size_t utf8_valid_prefix(const char* s, size_t n);
inline bool utf8_is_valid(std::string_view s) {
  return utf8_valid_prefix(s.data(), s.size()) == s.size();
}

// Length of the "maximal subpart" starting at s[0] when s[0..] is not a valid sequence: the longest
// prefix of a well-formed sequence (at least 1). Unicode's recommended practice for U+FFFD.
size_t utf8_invalid_len(const unsigned char* s, size_t n);

// Number of bytes at the end of s that form an incomplete but so far well-formed sequence (0..3): a
// streaming decoder keeps them back until the next bytes arrive.
size_t utf8_incomplete_tail(const char* s, size_t n);

// Decodes bytes into valid UTF-8, replacing each maximal invalid subpart with U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Appends the UTF-8 encoding of code point cp.
void utf8_append(std::string& out, uint32_t cp);
// Decodes the code point at s (which must be valid UTF-8 of length len).
uint32_t utf8_decode(const unsigned char* s, size_t len);

// GPT-2's byte→unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in order ("Ġ" = U+0120 is the space byte).
struct ByteLevelMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;
  // Code point → byte, or -1 when the code point is not in the table.
  int cp_to_byte(uint32_t cp) const { return cp < kMaxCp ? cp_to_byte_[cp] : -1; }

  static const ByteLevelMap& get();

  // Maps a byte-level token string (e.g. "Ġworld") back to raw bytes; false if some character is
  // not in the table (the string is then not a byte-level token).
  bool to_bytes(std::string_view token, std::string& out) const;
  // Raw bytes → byte-level string.
  std::string from_bytes(std::string_view bytes) const;

 private:
  static constexpr uint32_t kMaxCp = 324;
  std::array<int16_t, kMaxCp> cp_to_byte_{};
  ByteLevelMap();
};

}  // namespace dseek::tok
