// flash_common.cuh — what the flash attention kernels share (flash_attention.cu: prefill and training
// forward; flash_attention_bwd.cu: training backward; spec/model.md §2.2): 16-byte-multiple tile widths,
// operand packing for the m16n8k16 products (fp16 or bf16), the work-item list uploaded with the sequence
// offsets, and the head dims the kernels are built for.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"

namespace dseek::ops::cuda::flash {

__host__ __device__ constexpr int round16(int x) {
  return (x + 15) / 16 * 16;
}

// Two f32 values as one register of two 16-bit operands (OP = __half or __nv_bfloat16), and one value as OP.
template <typename OP>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<OP, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <typename OP>
__device__ __forceinline__ OP to_op(float x) {
  if constexpr (std::is_same_v<OP, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// One work item: sequence b, rows [r0, r0 + rows per block) of it (queries or keys).
struct Tile {
  int b, r0;
};

// The sequence offsets (queries cu_q, keys cu_k) and the work items in one device buffer.
struct TileList {
  Tensor buf;
  const int64_t *cu_q, *cu_k;
  const Tile* tiles;
};
inline TileList upload_tiles(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k,
                             const std::vector<Tile>& tiles) {
  const size_t B1 = cu_q.size();
  std::vector<int64_t> host(cu_q);
  host.insert(host.end(), cu_k.begin(), cu_k.end());
  const size_t nt = (tiles.size() * sizeof(Tile) + 7) / 8;
  host.resize(host.size() + nt);
  if (!tiles.empty()) std::memcpy(host.data() + 2 * B1, tiles.data(), tiles.size() * sizeof(Tile));
  TileList l;
  l.buf = Tensor::empty({int64_t(host.size())}, DType::I64, Device::CUDA);
  copy_bytes(l.buf.raw(), Device::CUDA, host.data(), Device::CPU, host.size() * 8);
  l.cu_q = l.buf.data<int64_t>();
  l.cu_k = l.cu_q + B1;
  l.tiles = reinterpret_cast<const Tile*>(l.cu_k + B1);
  return l;
}

// Calls fn(integral_constant DN, DR, DV) for the instantiated head dims; false when none matches.
template <typename Fn>
bool with_head_dims(int64_t dn, int64_t R, int64_t dv, Fn&& fn) {
  using std::integral_constant;
  if (dn == 64 && R == 32 && dv == 64) {  // bench-1b
    fn(integral_constant<int, 64>{}, integral_constant<int, 32>{}, integral_constant<int, 64>{});
  } else if (dn == 128 && R == 64 && dv == 128) {  // DeepSeek-V3 / R1 / V2
    fn(integral_constant<int, 128>{}, integral_constant<int, 64>{}, integral_constant<int, 128>{});
  } else if (dn == 32 && R == 16 && dv == 32) {  // the main job's demo model
    fn(integral_constant<int, 32>{}, integral_constant<int, 16>{}, integral_constant<int, 32>{});
  } else if (dn == 16 && R == 8 && dv == 16) {  // the test fixtures
    fn(integral_constant<int, 16>{}, integral_constant<int, 8>{}, integral_constant<int, 16>{});
  } else {
    return false;
  }
  return true;
}

}  // namespace dseek::ops::cuda::flash
