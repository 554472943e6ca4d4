// rng.h — counter-based random numbers (Philox-4x32-10), reproducible across threads and runs
// (DESIGN.md core/). A value depends only on (key, counter), so any element can be drawn in any order.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace dseek {

inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(kM0) * ctr[0];
    uint64_t p1 = uint64_t(kM1) * ctr[2];
    ctr = {uint32_t(p1 >> 32) ^ ctr[1] ^ key[0], uint32_t(p1), uint32_t(p0 >> 32) ^ ctr[3] ^ key[1],
           uint32_t(p0)};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// FNV-1a, to derive per-tensor streams from names.
inline uint64_t hash_str(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// A stream of random numbers keyed by a 64-bit seed; `at(i)` is the i-th block of four words.
class Philox {
 public:
  explicit Philox(uint64_t seed, uint64_t stream = 0)
      : key_{uint32_t(seed), uint32_t(seed >> 32)}, stream_(stream) {}
  std::array<uint32_t, 4> at(uint64_t i) const {
    return philox4x32({uint32_t(i), uint32_t(i >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)}, key_);
  }
  // Uniform in (0, 1) from a 32-bit word (never 0, never 1).
  static double uniform(uint32_t w) { return (double(w) + 0.5) * (1.0 / 4294967296.0); }
  // Two standard normals from the i-th block (Box-Muller on its first two words and last two).
  std::array<double, 2> normal2(uint64_t i) const {
    auto w = at(i);
    double u1 = uniform(w[0]) * (1.0 - 1.0 / 4294967296.0) + uniform(w[1]) / 4294967296.0;
    double u2 = uniform(w[2]);
    double r = std::sqrt(-2.0 * std::log(u1));
    return {r * std::cos(2 * M_PI * u2), r * std::sin(2 * M_PI * u2)};
  }

 private:
  std::array<uint32_t, 2> key_;
  uint64_t stream_;
};

// Sequential convenience wrapper (sampling): each call advances a counter.
class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0) : ph_(seed, stream) {}
  double uniform() {
    if (idx_ == 4) {
      buf_ = ph_.at(ctr_++);
      idx_ = 0;
    }
    return Philox::uniform(buf_[idx_++]);
  }
  uint64_t counter() const { return ctr_; }

 private:
  Philox ph_;
  std::array<uint32_t, 4> buf_{};
  int idx_ = 4;
  uint64_t ctr_ = 0;
};

}  // namespace dseek
