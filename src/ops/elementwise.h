// elementwise.h — small data movement and arithmetic the modules need between products.
#pragma once

#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// x += y (same shape and dtype).
void add_(Tensor x, const Tensor& y, Stream s = {});
// x += alpha · y.
void axpy_(Tensor x, const Tensor& y, double alpha, Stream s = {});
// dst[:, dcol : dcol + width] = src[:, scol : scol + width] for 2-D views [rows, cols] of equal rows.
void copy_cols(Tensor dst, int64_t dcol, const Tensor& src, int64_t scol, int64_t width, Stream s = {});

// One column block move for copy_cols_many: dst[:, dcol : dcol + width] = (or, with add, +=)
// src[:, scol : scol + width]. An adding block must cover all of dst's columns.
struct ColBlock {
  Tensor dst;
  int64_t dcol;
  Tensor src;
  int64_t scol, width;
  bool add = false;
};
// Every block in list order, for 2-D views that all have the same rows: on the CPU one pass over the
// rows does them all (the MLA head splits and gathers are a dozen narrow copies each).
void copy_cols_many(const std::vector<ColBlock>& blocks, Stream s = {});

// dst[i] = src[i] converted (f32 → bf16, round to nearest even) for many tensors of one device with equal
// element counts pairwise: one launch on the GPU (bf16 training rewrites its thousands of weight copies
// after every optimizer step, train/compute_copy.h).
void cast_many(const std::vector<Tensor*>& dst, const std::vector<const Tensor*>& src);

}  // namespace dseek::ops
