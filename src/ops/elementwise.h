// elementwise.h — small data movement and arithmetic the modules need between products.
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// x += y (same shape and dtype).
void add_(Tensor x, const Tensor& y, Stream s = {});
// x += alpha · y.
void axpy_(Tensor x, const Tensor& y, double alpha, Stream s = {});
// dst[:, dcol : dcol + width] = src[:, scol : scol + width] for 2-D views [rows, cols] of equal rows.
void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width, Stream s = {});

}  // namespace dseek::ops
