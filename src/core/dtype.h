// dtype.h — element types and their exact conversions (DESIGN.md core/; spec/model.md §6.1, §6.4).
// bf16, f16, f8 e4m3fn (OCP "fn": no infinities, saturating, NaN = S.1111.111) and f8 e5m2 (IEEE-like)
// convert to and from f32 with round-to-nearest-even. Decoding to f32 is always exact.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace dseek {

enum class DType : uint8_t { F32, F64, BF16, F16, F8E4M3, F8E5M2, I32, I64, U8, BOOL };

size_t dtype_size(DType t);
// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- bfloat16 ----
inline float bf16_to_f32(uint16_t h) {
  return bits_f32(uint32_t(h) << 16);
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
  return uint16_t(u >> 16);
}

uint16_t f64_to_bf16(double f);  // single rounding from f64

// ---- IEEE half ----
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
uint16_t f64_to_f16(double f);

// ---- fp8 ----
float f8e4m3_to_f32(uint8_t v);
// Saturating: finite overflow and ±inf give ±448; NaN gives 0x7f | sign.
uint8_t f32_to_f8e4m3(float f);
uint8_t f64_to_f8e4m3(double f);
float f8e5m2_to_f32(uint8_t v);
// Overflow past the largest finite value (57344) rounds to ±inf, as IEEE; with saturate, to ±57344.
uint8_t f32_to_f8e5m2(float f, bool saturate = false);
uint8_t f64_to_f8e5m2(double f, bool saturate = false);

// Convert n elements between any two float dtypes (f32, f64, bf16, f16, f8); integers to/from
// integers or floats as plain casts. Throws on unsupported pairs.
void convert(void* dst, DType dst_t, const void* src, DType src_t, size_t n);

}  // namespace dseek
