// dep_trace.h — where a decode step's time goes on the GPU, kernel by kernel, in the real overlapped run
// (a diagnostic; issue 5). In a build configured with -DDSEEK_DEP_TRACE=ON every kernel launched through
// launch_dep (ops/cuda/common.cuh) has its first block write the device clock (%globaltimer) as it
// returns from its dependency wait, and launch_dep keeps each launch's op name on the host. A kernel's
// wait returns when the kernel before it has finished, so the gap between the wait returns of kernels
// i and i + 1 is kernel i's part of the step's critical path: the phase after its wait, which programmatic
// dependent launch cannot hide. Nsight Compute times kernels one at a time (no overlap) and the machine
// has no Nsight Systems, hence this. Off (the default) the hooks compile to nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dseek::ops {

struct DepTrace {
  std::vector<std::string> names;  // launch_dep's op names since dep_trace_begin, in launch order
  std::vector<uint64_t> ns;        // the wait returns recorded on the device, in order (ns)
};

// Whether this build records (DSEEK_DEP_TRACE).
bool dep_trace_available();
// Starts recording (clears the names, the device buffer holds `capacity` stamps); fails when not available.
void dep_trace_begin(int64_t capacity = int64_t(1) << 22);
// Stops recording and returns what was recorded (a synchronisation).
DepTrace dep_trace_end();

}  // namespace dseek::ops
