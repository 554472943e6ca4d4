// dtype.cpp — element types and exact conversions (spec/model.md §6.4 for e4m3fn).
#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace dseek {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::BF16:
    case DType::F16:
      return 2;
    case DType::F8E4M3:
    case DType::F8E5M2:
    case DType::U8:
    case DType::BOOL:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::F8E4M3:
      return "F8_E4M3";
    case DType::F8E5M2:
      return "F8_E5M2";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view n) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I32,
                  DType::I64, DType::U8, DType::BOOL}) {
    if (n == dtype_name(t)) return t;
  }
  return std::nullopt;
}

bool dtype_is_float(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F64:
    case DType::BF16:
    case DType::F16:
    case DType::F8E4M3:
    case DType::F8E5M2:
      return true;
    default:
      return false;
  }
}

namespace {

// Magnitude code of a >= 0 (finite) rounded to nearest even in a binary format with `mbits` mantissa
// bits and exponent bias `bias` (subnormals included). The caller handles overflow: the result may
// exceed the format's largest finite code, and carries into the exponent field as IEEE encodings do.
uint32_t encode_magnitude(double a, int mbits, int bias) {
  if (a == 0) return 0;
  int e2;
  std::frexp(a, &e2);
  int exp = e2 - 1;  // a in [2^exp, 2^(exp+1))
  const int emin = 1 - bias;
  if (exp < emin) {
    // Subnormal: units of 2^(emin - mbits). A result of 2^mbits is the smallest normal, whose code
    // is exactly that integer.
    return uint32_t(std::nearbyint(std::ldexp(a, mbits - emin)));
  }
  uint32_t m = uint32_t(std::nearbyint(std::ldexp(a, mbits - exp)));  // in [2^mbits, 2^(mbits+1)]
  if (m == (2u << mbits)) {
    exp += 1;
    m >>= 1;
  }
  return (uint32_t(exp + bias) << mbits) | (m - (1u << mbits));
}

struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int c = 0; c < 256; ++c) {
      int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
      double mag;
      if (e == 15 && m == 7) {
        mag = NAN;
      } else if (e == 0) {
        mag = std::ldexp(double(m), -9);
      } else {
        mag = std::ldexp(1.0 + m / 8.0, e - 7);
      }
      v[c] = float(s ? -mag : mag);
    }
  }
};
const E4M3Table kE4M3;

}  // namespace

float f16_to_f32(uint16_t h) {
  uint32_t s = uint32_t(h >> 15), e = (h >> 10) & 31, m = h & 1023;
  float mag;
  if (e == 0) {
    mag = std::ldexp(float(m), -24);
  } else if (e == 31) {
    mag = m ? NAN : INFINITY;
  } else {
    mag = std::ldexp(float(1024 + m), int(e) - 25);
  }
  return s ? -mag : mag;
}

uint16_t f64_to_f16(double f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return uint16_t(sign | 0x7e00);
  if (std::isinf(f)) return uint16_t(sign | 0x7c00);
  uint32_t code = encode_magnitude(std::fabs(f), 10, 15);
  if (code > 0x7bff) code = 0x7c00;  // overflow rounds to infinity
  return uint16_t(sign | code);
}
uint16_t f32_to_f16(float f) {
  return f64_to_f16(f);
}

uint16_t f64_to_bf16(double f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return uint16_t(sign | 0x7fc0);
  if (std::isinf(f)) return uint16_t(sign | 0x7f80);
  uint32_t code = encode_magnitude(std::fabs(f), 7, 127);
  if (code > 0x7f7f) code = 0x7f80;
  return uint16_t(sign | code);
}

float f8e4m3_to_f32(uint8_t v) {
  return kE4M3.v[v];
}

uint8_t f64_to_f8e4m3(double f) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) return uint8_t(sign | 0x7f);
  if (std::isinf(f)) return uint8_t(sign | 0x7e);
  uint32_t code = encode_magnitude(std::fabs(f), 3, 7);
  if (code > 0x7e) code = 0x7e;  // saturate at 448 (0x7f is NaN in e4m3fn)
  return uint8_t(sign | code);
}
uint8_t f32_to_f8e4m3(float f) {
  return f64_to_f8e4m3(f);
}

float f8e5m2_to_f32(uint8_t v) {
  return f16_to_f32(uint16_t(v) << 8);
}

uint8_t f64_to_f8e5m2(double f, bool saturate) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) return uint8_t(sign | 0x7e);
  if (std::isinf(f)) return uint8_t(sign | (saturate ? 0x7b : 0x7c));
  uint32_t code = encode_magnitude(std::fabs(f), 2, 15);
  if (code > 0x7b) code = saturate ? 0x7b : 0x7c;
  return uint8_t(sign | code);
}
uint8_t f32_to_f8e5m2(float f, bool saturate) {
  return f64_to_f8e5m2(f, saturate);
}

namespace {

template <typename Dst>
void convert_from(Dst* d, const void* src, DType st, size_t n) {
  switch (st) {
    case DType::F32: {
      auto s = static_cast<const float*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(s[i]);
      return;
    }
    case DType::F64: {
      auto s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(s[i]);
      return;
    }
    case DType::BF16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(bf16_to_f32(s[i]));
      return;
    }
    case DType::F16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(f16_to_f32(s[i]));
      return;
    }
    case DType::F8E4M3: {
      auto s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(f8e4m3_to_f32(s[i]));
      return;
    }
    case DType::F8E5M2: {
      auto s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(f8e5m2_to_f32(s[i]));
      return;
    }
    case DType::I32: {
      auto s = static_cast<const int32_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(s[i]);
      return;
    }
    case DType::I64: {
      auto s = static_cast<const int64_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(s[i]);
      return;
    }
    case DType::U8:
    case DType::BOOL: {
      auto s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) d[i] = Dst(s[i]);
      return;
    }
  }
}

}  // namespace

void convert(void* dst, DType dt, const void* src, DType st, size_t n) {
  if (dt == st) {
    std::memcpy(dst, src, n * dtype_size(dt));
    return;
  }
  switch (dt) {
    case DType::F32:
      return convert_from(static_cast<float*>(dst), src, st, n);
    case DType::F64:
      return convert_from(static_cast<double*>(dst), src, st, n);
    case DType::I32:
      DSEEK_CHECK(!dtype_is_float(st), "convert: ", dtype_name(st), " to I32 is not supported");
      return convert_from(static_cast<int32_t*>(dst), src, st, n);
    case DType::I64:
      DSEEK_CHECK(!dtype_is_float(st), "convert: ", dtype_name(st), " to I64 is not supported");
      return convert_from(static_cast<int64_t*>(dst), src, st, n);
    default:
      break;
  }
  // Narrow float targets: decode the source to f32 (exact for every narrow source), or to f64 when the
  // source is f64, then round once to nearest even.
  DSEEK_CHECK(dtype_is_float(dt), "convert: unsupported target dtype ", dtype_name(dt));
  const size_t kChunk = 2048;
  double tmp[kChunk];
  auto out = static_cast<uint8_t*>(dst);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    size_t m = std::min(kChunk, n - i0);
    convert_from(tmp, static_cast<const uint8_t*>(src) + i0 * dtype_size(st), st, m);
    switch (dt) {
      case DType::BF16: {
        auto d = reinterpret_cast<uint16_t*>(out) + i0;
        if (st == DType::F64) {
          for (size_t i = 0; i < m; ++i) d[i] = f64_to_bf16(tmp[i]);
        } else {
          for (size_t i = 0; i < m; ++i) d[i] = f32_to_bf16(float(tmp[i]));
        }
        break;
      }
      case DType::F16: {
        auto d = reinterpret_cast<uint16_t*>(out) + i0;
        for (size_t i = 0; i < m; ++i) d[i] = f64_to_f16(tmp[i]);
        break;
      }
      case DType::F8E4M3: {
        for (size_t i = 0; i < m; ++i) out[i0 + i] = f64_to_f8e4m3(tmp[i]);
        break;
      }
      case DType::F8E5M2: {
        for (size_t i = 0; i < m; ++i) out[i0 + i] = f64_to_f8e5m2(tmp[i]);
        break;
      }
      default:
        fail("convert: unsupported target dtype ", dtype_name(dt));
    }
  }
}

}  // namespace dseek
