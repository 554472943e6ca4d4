// cpu_features.h — which vector extensions this CPU has, checked once at run time (the build's floor
// is x86-64-v3; AVX-512 kernels are used only where present).
#pragma once

namespace dseek {
inline bool cpu_has_avx512() {
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return v;
}
}  // namespace dseek
