// dtype_test.cpp — exact dtype conversions: every fp8 code both ways, round-to-nearest-even checked
// against an independent nearest-value search, saturation and special values (issue: core dtypes).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace dseek {
namespace {

// Independent decoders written from the format definitions (spec/model.md §6.4, IEEE 754).
double ref_e4m3(int c) {
  int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return NAN;
  double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return s ? -v : v;
}
double ref_e5m2(int c) {
  int s = c >> 7, e = (c >> 2) & 31, m = c & 3;
  double v;
  if (e == 31) {
    v = m ? NAN : INFINITY;
  } else {
    v = e == 0 ? std::ldexp(m / 4.0, -14) : std::ldexp(1 + m / 4.0, e - 15);
  }
  return s ? -v : v;
}

// The code a correct RNE encoder must pick for x among `codes` (finite, non-NaN): the nearest value;
// on a tie, the one with an even mantissa (even code).
template <typename Dec>
int nearest_code(double x, Dec dec, int ncodes, double maxval, bool saturate) {
  if (saturate && std::fabs(x) >= maxval) return -1;  // caller checks saturation separately
  int best = -1;
  double bd = INFINITY;
  for (int c = 0; c < ncodes; ++c) {
    double v = dec(c);
    if (!std::isfinite(v)) continue;
    if (v == 0 && std::signbit(v) != std::signbit(x)) continue;
    if ((v > 0 && x < 0) || (v < 0 && x > 0)) continue;
    double d = std::fabs(v - x);
    if (d < bd || (d == bd && (c & 1) == 0)) {
      bd = d;
      best = c;
    }
  }
  return best;
}

TEST(DType, Sizes) {
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F8E4M3), 1u);
  EXPECT_EQ(*dtype_from_name("F8_E4M3"), DType::F8E4M3);
  EXPECT_EQ(*dtype_from_name("I64"), DType::I64);
  EXPECT_FALSE(dtype_from_name("F8_E4M3FNUZ").has_value());
  EXPECT_FALSE(dtype_from_name("f32").has_value());
}

TEST(E4M3, DecodesAll256Codes) {
  for (int c = 0; c < 256; ++c) {
    double want = ref_e4m3(c);
    float got = f8e4m3_to_f32(uint8_t(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(double(got), want) << "code " << c;
      EXPECT_EQ(std::signbit(got), bool(c & 0x80)) << c;
    }
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));
}

TEST(E4M3, EncodeRoundTripsEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN codes
    EXPECT_EQ(f32_to_f8e4m3(f8e4m3_to_f32(uint8_t(c))), c) << "code " << c;
  }
  EXPECT_EQ(f32_to_f8e4m3(NAN) & 0x7f, 0x7f);
  EXPECT_EQ(f32_to_f8e4m3(-NAN), 0xff);
}

TEST(E4M3, SaturatesAndHandlesEdges) {
  EXPECT_EQ(f32_to_f8e4m3(448.0f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(460.0f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7e);  // would round up to 480 (not representable): saturates
  EXPECT_EQ(f32_to_f8e4m3(1e30f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(INFINITY), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(-INFINITY), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(-1e30f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(0.0f), 0x00);
  EXPECT_EQ(f32_to_f8e4m3(-0.0f), 0x80);
  // Subnormal ties: 2^-10 is halfway between 0 and 2^-9 -> even (0); 3·2^-10 between codes 1 and 2 -> 2.
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(3.0f, -10)), 0x02);
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10) * 1.0001f), 0x01);
  EXPECT_EQ(f32_to_f8e4m3(1e-30f), 0x00);
  // Normal ties: 1 + 1/16 is halfway between 1 (m=0) and 1.125 (m=1) -> 1.
  EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3(1.0625f)), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3(1.1875f)), 1.25f);  // between 1.125 (m=1) and 1.25 (m=2) -> 1.25
  // Largest subnormal rounding into the smallest normal.
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(7.5f, -9)), 0x08);
}

TEST(E4M3, RandomValuesRoundToNearestEven) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> lg(-12, 9.5);
  for (int i = 0; i < 20000; ++i) {
    double x = std::exp2(lg(rng)) * (rng() & 1 ? -1 : 1);
    float xf = float(x);
    uint8_t got = f32_to_f8e4m3(xf);
    if (std::fabs(xf) >= 448) {
      EXPECT_EQ(got & 0x7f, 0x7e);
      continue;
    }
    EXPECT_EQ(got, nearest_code(xf, ref_e4m3, 256, 448, true)) << "x = " << xf;
  }
  // Exact midpoints between all adjacent positive codes.
  for (int c = 0; c < 0x7e; ++c) {
    double mid = (ref_e4m3(c) + ref_e4m3(c + 1)) / 2;
    int want = (c & 1) ? c + 1 : c;
    EXPECT_EQ(f32_to_f8e4m3(float(mid)), want) << "midpoint after code " << c;
    EXPECT_EQ(f32_to_f8e4m3(float(-mid)), want | 0x80);
  }
}

TEST(E5M2, AllCodesAndSpecials) {
  for (int c = 0; c < 256; ++c) {
    double want = ref_e5m2(c);
    float got = f8e5m2_to_f32(uint8_t(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got));
      continue;
    }
    EXPECT_EQ(double(got), want) << c;
    EXPECT_EQ(f32_to_f8e5m2(got), c) << c;
  }
  EXPECT_EQ(f32_to_f8e5m2(57344.0f), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(61440.0f), 0x7c);  // the midpoint to "65536" rounds to even: infinity
  EXPECT_EQ(f32_to_f8e5m2(61439.0f), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(1e9f), 0x7c);
  EXPECT_EQ(f32_to_f8e5m2(1e9f, true), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(-INFINITY), 0xfc);
  EXPECT_TRUE(std::isnan(f8e5m2_to_f32(f32_to_f8e5m2(NAN))));
  for (int c = 0; c < 0x7b; ++c) {
    double mid = (ref_e5m2(c) + ref_e5m2(c + 1)) / 2;
    EXPECT_EQ(f32_to_f8e5m2(float(mid)), (c & 1) ? c + 1 : c) << c;
  }
}

TEST(BF16, RoundToNearestEvenAndSpecials) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: rounds to even (1).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  for (uint32_t c = 0; c < 65536; ++c) {
    float v = bf16_to_f32(uint16_t(c));
    if (std::isnan(v)) continue;
    ASSERT_EQ(f32_to_bf16(v), c);
    ASSERT_EQ(f64_to_bf16(double(v)), c);
  }
  // Single rounding from f64: a value just above a bf16 midpoint whose f32 rounding lands on the midpoint.
  double x = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  EXPECT_EQ(f64_to_bf16(x), 0x3f81);
  EXPECT_EQ(f32_to_bf16(float(x)), 0x3f80);  // double rounding through f32 would lose it
}

TEST(F16, AllCodesRoundTripAndMidpoints) {
  for (uint32_t c = 0; c < 65536; ++c) {
    float v = f16_to_f32(uint16_t(c));
    if (std::isnan(v)) continue;
    ASSERT_EQ(f32_to_f16(v), c) << c;
  }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: ties to even
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
}

TEST(Convert, BetweenDtypes) {
  std::vector<float> src = {0.5f, -1.25f, 3.0f, 448.0f, 1000.0f};
  std::vector<uint8_t> f8(src.size());
  convert(f8.data(), DType::F8E4M3, src.data(), DType::F32, src.size());
  std::vector<double> back(src.size());
  convert(back.data(), DType::F64, f8.data(), DType::F8E4M3, src.size());
  EXPECT_EQ(back[0], 0.5);
  EXPECT_EQ(back[1], -1.25);
  EXPECT_EQ(back[3], 448.0);
  EXPECT_EQ(back[4], 448.0);  // saturated
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<int32_t> i32(3);
  convert(i32.data(), DType::I32, ids.data(), DType::I64, 3);
  EXPECT_EQ(i32[2], 3);
}

}  // namespace
}  // namespace dseek
