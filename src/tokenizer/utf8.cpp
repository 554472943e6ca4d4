// utf8.cpp — UTF-8 validation, lossy decoding and the GPT-2 byte-level map (model.md §7.1).
#include "tokenizer/utf8.h"

namespace dseek::tok {

size_t utf8_valid_len(const unsigned char* s, size_t n) {
  if (n == 0) return 0;
  const unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;  // continuation byte or overlong 2-byte lead
  auto cont = [&](size_t i) { return i < n && (s[i] & 0xC0) == 0x80; };
  if (c < 0xE0) return cont(1) ? 2 : 0;
  if (c < 0xF0) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;   // overlong
    if (c == 0xED && s[1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c < 0xF5) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0;   // overlong
    if (c == 0xF4 && s[1] >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

size_t utf8_valid_prefix(const char* p, size_t n) {
  auto s = reinterpret_cast<const unsigned char*>(p);
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    size_t l = utf8_valid_len(s + i, n - i);
    if (l == 0) return i;
    i += l;
  }
  return n;
}

size_t utf8_invalid_len(const unsigned char* s, size_t n) {
  // Longest prefix of a well-formed sequence (Unicode Table 3-7), at least one byte.
  const unsigned c = s[0];
  size_t need;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c < 0xE0) {
    need = 1;
  } else if (c >= 0xE0 && c < 0xF0) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c < 0xF5) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t i = 1;
  if (i < n && s[i] >= lo && s[i] <= hi) {
    ++i;
    while (i <= need && i < n && (s[i] & 0xC0) == 0x80) ++i;
  }
  return i;
}

size_t utf8_incomplete_tail(const char* p, size_t n) {
  auto s = reinterpret_cast<const unsigned char*>(p);
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const unsigned char* t = s + n - k;
    if ((t[0] & 0xC0) == 0x80) continue;  // continuation: look further back
    // t[0] is a lead (or ASCII) byte: the tail is incomplete when it is a proper prefix of a
    // well-formed sequence.
    if (t[0] < 0xC2 || t[0] >= 0xF5) return 0;
    size_t want = t[0] < 0xE0 ? 2 : t[0] < 0xF0 ? 3 : 4;
    if (k >= want) return 0;
    return utf8_invalid_len(t, k) == k ? k : 0;
  }
  return 0;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  auto s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    size_t v = utf8_valid_prefix(bytes.data() + i, n - i);
    out.append(bytes.data() + i, v);
    i += v;
    if (i >= n) break;
    i += utf8_invalid_len(s + i, n - i);
    out += "\xEF\xBF\xBD";
  }
  return out;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

uint32_t utf8_decode(const unsigned char* s, size_t len) {
  switch (len) {
    case 1:
      return s[0];
    case 2:
      return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    case 3:
      return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    default:
      return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
  }
}

ByteLevelMap::ByteLevelMap() {
  cp_to_byte_.fill(-1);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    byte_to_cp[b] = printable ? uint32_t(b) : next++;
    cp_to_byte_[byte_to_cp[b]] = int16_t(b);
    utf8_append(byte_to_utf8[b], byte_to_cp[b]);
  }
}

const ByteLevelMap& ByteLevelMap::get() {
  static const ByteLevelMap m;
  return m;
}

bool ByteLevelMap::to_bytes(std::string_view token, std::string& out) const {
  out.clear();
  auto s = reinterpret_cast<const unsigned char*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    size_t l = utf8_valid_len(s + i, token.size() - i);
    if (l == 0) return false;
    int b = cp_to_byte(utf8_decode(s + i, l));
    if (b < 0) return false;
    out += char(b);
    i += l;
  }
  return true;
}

std::string ByteLevelMap::from_bytes(std::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += byte_to_utf8[c];
  return out;
}

}  // namespace dseek::tok
