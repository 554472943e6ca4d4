// elementwise.cpp — checks and device dispatch for add_, axpy_, copy_cols, copy_cols_many
// (ops/elementwise.h).
#include "ops/elementwise.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void add_(Tensor x, const Tensor& y, Stream s) {
  axpy_(x, y, 1.0, s);
}

void axpy_(Tensor x, const Tensor& y, double alpha, Stream) {
  check_act("axpy_", "x", x);
  check_shape("axpy_", "y", y, x.shape());
  DSEEK_CHECK(y.dtype() == x.dtype(), "axpy_: mixed dtypes");
  check_same_device("axpy_", {&x, &y});
  switch (x.device()) {
    case Device::CPU:
      return cpu::axpy_(x, y, alpha);
    case Device::CUDA:
      return cuda::axpy_(x, y, alpha);
    default:
      fail("axpy_: no implementation for ", device_name(x.device()));
  }
}

void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width, Stream) {
  check_ndim("copy_cols", "dst", dst, 2);
  check_ndim("copy_cols", "src", src, 2);
  DSEEK_CHECK(dst.size(0) == src.size(0), "copy_cols: ", dst.str(), " and ", src.str(), " differ in rows");
  DSEEK_CHECK(dst.dtype() == src.dtype(), "copy_cols: mixed dtypes");
  DSEEK_CHECK(
      width >= 0 && dcol >= 0 && scol >= 0 && dcol + width <= dst.size(1) && scol + width <= src.size(1),
      "copy_cols: columns out of range");
  check_same_device("copy_cols", {&dst, &src});
  switch (dst.device()) {
    case Device::CPU:
      return cpu::copy_cols(dst, dcol, src, scol, width);
    case Device::CUDA:
      return cuda::copy_cols(dst, dcol, src, scol, width);
    default:
      fail("copy_cols: no implementation for ", device_name(dst.device()));
  }
}

void copy_cols_many(const std::vector<ColBlock>& blocks, Stream s) {
  if (blocks.empty()) return;
  const int64_t rows = blocks[0].dst.size(0);
  for (const ColBlock& b : blocks) {
    check_ndim("copy_cols_many", "dst", b.dst, 2);
    check_ndim("copy_cols_many", "src", b.src, 2);
    DSEEK_CHECK(b.dst.size(0) == rows && b.src.size(0) == rows, "copy_cols_many: ", b.dst.str(), " and ",
                b.src.str(), " must both have ", rows, " rows");
    DSEEK_CHECK(b.dst.dtype() == b.src.dtype() && b.dst.dtype() == blocks[0].dst.dtype(),
                "copy_cols_many: mixed dtypes");
    DSEEK_CHECK(b.width >= 0 && b.dcol >= 0 && b.scol >= 0 && b.dcol + b.width <= b.dst.size(1) &&
                    b.scol + b.width <= b.src.size(1),
                "copy_cols_many: columns out of range");
    DSEEK_CHECK(!b.add || (b.dcol == 0 && b.width == b.dst.size(1)),
                "copy_cols_many: an adding block must cover all of dst's columns");
    DSEEK_CHECK(!b.add || dtype_is_float(b.dst.dtype()), "copy_cols_many: adding needs a float dtype");
    check_same_device("copy_cols_many", {&b.dst, &b.src, &blocks[0].dst});
  }
  if (blocks[0].dst.device() == Device::CPU) return cpu::copy_cols_many(blocks);
  for (const ColBlock& b : blocks) {  // elsewhere: one copy per block
    if (!b.add) {
      copy_cols(b.dst, b.dcol, b.src, b.scol, b.width, s);
      continue;
    }
    Tensor tmp = Tensor::empty({rows, b.width}, b.src.dtype(), b.src.device());  // tmp: [rows, width]
    copy_cols(tmp, 0, b.src, b.scol, b.width, s);
    add_(b.dst, tmp, s);
  }
}

void cast_many(const std::vector<Tensor*>& dst, const std::vector<const Tensor*>& src) {
  DSEEK_CHECK(dst.size() == src.size(), "cast_many: ", dst.size(), " destinations for ", src.size(),
              " sources");
  if (dst.empty()) return;
  const Device d = src[0]->device();
  for (size_t i = 0; i < dst.size(); ++i) {
    DSEEK_CHECK(dst[i]->numel() == src[i]->numel(), "cast_many: ", dst[i]->str(), " from ", src[i]->str());
    DSEEK_CHECK(src[i]->dtype() == DType::F32 && dst[i]->dtype() == DType::BF16 && !dst[i]->block_scale(),
                "cast_many: f32 sources into bf16 destinations, not ", src[i]->str(), " into ",
                dst[i]->str());
    DSEEK_CHECK(src[i]->device() == d && dst[i]->device() == d, "cast_many: tensors on different devices");
  }
  if (d == Device::CUDA) return cuda::cast_many(dst, src);
  for (size_t i = 0; i < dst.size(); ++i) dst[i]->copy_from(*src[i]);
}

}  // namespace dseek::ops
