// parallel.h — OpenMP helpers (DESIGN.md core/): thread count and a chunked parallel-for.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace dseek {

inline int num_threads() {
  return omp_get_max_threads();
}

// Memory-bound loops give each thread at least this much traffic (bytes read + written), some 50 µs of
// work: below it the per-thread share of a region's fork/join and barrier outweighs the work. (On the
// 16-core H200 host the layer norms, residual adds and MLA copies of the demo model, 1-3 MB each, took
// 4.5 ms per step at 2-8 threads and 13.8 ms at 16 when each used every thread; that run also paid for
// the thread re-creation described at parallel_for.)
constexpr int64_t kMinBytesPerThread = int64_t(512) << 10;

// The grain (items per thread) for a memory-bound loop moving `bytes_per_item` bytes per item.
inline int64_t grain_for_bytes(int64_t bytes_per_item) {
  return std::max<int64_t>(1, kMinBytesPerThread / std::max<int64_t>(bytes_per_item, 1));
}

// Calls fn(begin, end) on contiguous chunks of [0, n) across the OpenMP threads; `grain` is the
// smallest chunk worth a thread. Runs inline when n is small or when already inside a parallel region.
//
// The region always starts the whole team: libgomp ends the surplus threads of its pool when a region
// asks for fewer than the one before, and starts new ones (pthread_create, fresh stacks and TLS) when a
// later region asks for more, so regions of varying size cost thread creations (seen on the CPU box:
// 22,000 clone3 calls for 2,000 alternations of 16 and 4-6 threads, 20× slower than a fixed team of 16).
// The chunks (fixed by n, grain and the thread count, so results never depend on the schedule) are
// handed out dynamically: a thread whose core is busy with something else takes fewer of them.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  int nt = omp_in_parallel()
               ? 1
               : int(std::min<int64_t>(num_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1)));
  if (nt <= 1) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int c = 0; c < nt; ++c) {
    const int64_t b = n * c / nt, e = n * (c + 1) / nt;
    if (b < e) fn(b, e);
  }
}

}  // namespace dseek
