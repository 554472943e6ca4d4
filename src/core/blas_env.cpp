// blas_env.cpp — see blas_env.h.
#include "core/blas_env.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "core/cpu_features.h"

extern "C" char* openblas_get_corename();

namespace dseek {

void ensure_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("DSEEK_NO_BLAS_REEXEC")) return;
  const char* core = openblas_get_corename();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  if (!avx512 || !core) return;
  if (std::strcmp(core, "Haswell") != 0 && std::strcmp(core, "Zen") != 0 &&
      std::strcmp(core, "Prescott") != 0 && std::strcmp(core, "Nehalem") != 0 &&
      std::strcmp(core, "Sandybridge") != 0)
    return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  setenv("DSEEK_NO_BLAS_REEXEC", "1", 1);  // never loop
  execv("/proc/self/exe", argv);
  // execv failed: carry on with the kernels OpenBLAS chose.
}

}  // namespace dseek
