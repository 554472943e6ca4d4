// graph.cu — CUDA graph capture and replay of the calling thread's default stream (core/device.h;
// DESIGN.md "CUDA graphs for decoding"). Capture runs in the thread-local mode, so a captured op that
// would synchronise with the host (a blocking copy, an allocation from the driver) fails the capture
// instead of running outside the graph; end_capture then reports it and nothing is kept.
#include <cuda_runtime.h>

#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/device.h"

namespace dseek {

DeviceGraph::~DeviceGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void DeviceGraph::begin_capture() {
  DSEEK_CHECK(!graph_ && !exec_, "DeviceGraph: already captured");
  DSEEK_CUDA_CHECK(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal),
                   "cudaStreamBeginCapture");
}

void DeviceGraph::end_capture() {
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(cudaStreamPerThread, &g);
  if (e != cudaSuccess || !g) {
    cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    fail("CUDA graph capture failed: ", cudaGetErrorString(e));
  }
  cudaGraphExec_t x = nullptr;
  const cudaError_t ei = cudaGraphInstantiate(&x, g, 0);
  if (ei != cudaSuccess) {
    cudaGetLastError();
    cudaGraphDestroy(g);
    fail("CUDA graph instantiation failed: ", cudaGetErrorString(ei));
  }
  graph_ = g;
  exec_ = x;
}

void DeviceGraph::abort_capture() {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(cudaStreamPerThread, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(cudaStreamPerThread, &g);
    if (g) cudaGraphDestroy(g);
  }
  cudaGetLastError();
}

int64_t DeviceGraph::kernels() const {
  if (!graph_) return 0;
  const auto g = static_cast<cudaGraph_t>(graph_);
  size_t n = 0;
  DSEEK_CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n), "cudaGraphGetNodes");
  std::vector<cudaGraphNode_t> nodes(n);
  DSEEK_CUDA_CHECK(cudaGraphGetNodes(g, nodes.data(), &n), "cudaGraphGetNodes");
  int64_t k = 0;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType t{};
    DSEEK_CUDA_CHECK(cudaGraphNodeGetType(node, &t), "cudaGraphNodeGetType");
    k += t == cudaGraphNodeTypeKernel;
  }
  return k;
}

void DeviceGraph::replay() const {
  DSEEK_CHECK(exec_, "DeviceGraph: nothing captured");
  DSEEK_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), cudaStreamPerThread),
                   "cudaGraphLaunch");
}

}  // namespace dseek
