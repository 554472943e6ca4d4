// blas_env.h — picks OpenBLAS's best kernels for this CPU. OpenBLAS 0.3.21 (Debian 12) runs its
// Haswell kernels on AVX-512 CPUs it does not recognise (AMD Zen 4, some virtual Xeons): measured 1.4×
// slower training than its SkylakeX kernels on the same machine. OpenBLAS reads OPENBLAS_CORETYPE
// when it loads, before main(), so the program re-executes itself once with it set. A value the user
// set is kept.
#pragma once

namespace dseek {

// Call first thing in main(). Returns only when no re-exec was needed (or it failed).
void ensure_blas_kernels(char** argv);

}  // namespace dseek
