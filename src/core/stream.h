// stream.h — an execution stream handle passed to every op (DESIGN.md "Shapes of the code"). On the
// CPU it is ignored; on CUDA it carries the cudaStream_t.
#pragma once

namespace dseek {
struct Stream {
  void* handle = nullptr;
};
}  // namespace dseek
