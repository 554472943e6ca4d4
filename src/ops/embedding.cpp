// embedding.cpp — checks and device dispatch for the embedding gather (ops/embedding.h).
#include "ops/embedding.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::ops {

void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table, Stream) {
  check_ndim("embedding_fwd", "ids", ids, 1);
  check_dtype("embedding_fwd", "ids", ids, {DType::I64});
  check_ndim("embedding_fwd", "table", table, 2);
  check_dtype("embedding_fwd", "table", table, {DType::F32, DType::F64, DType::BF16});
  check_act("embedding_fwd", "out", out);
  check_shape("embedding_fwd", "out", out, {ids.size(0), table.size(1)});
  // ids may stay on the host beside a GPU table (checked there, uploaded once; no device→host copy)
  check_same_device("embedding_fwd", {&out, &table});
  DSEEK_CHECK(ids.device() == out.device() || ids.device() == Device::CPU, "embedding_fwd: ids on ",
              device_name(ids.device()), ", out on ", device_name(out.device()));
  switch (out.device()) {
    case Device::CPU:
      return cpu::embedding_fwd(out, ids, table);
    case Device::CUDA:
      return cuda::embedding_fwd(out, ids, table);
    default:
      fail("embedding_fwd: no implementation for ", device_name(out.device()));
  }
}

void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout, Stream) {
  check_ndim("embedding_bwd", "ids", ids, 1);
  check_dtype("embedding_bwd", "ids", ids, {DType::I64});
  check_ndim("embedding_bwd", "dtable", dtable, 2);
  check_act("embedding_bwd", "dtable", dtable);
  check_shape("embedding_bwd", "dout", dout, {ids.size(0), dtable.size(1)});
  DSEEK_CHECK(dout.dtype() == dtable.dtype(), "embedding_bwd: mixed dtypes");
  // ids may stay on the host beside a GPU table (the grouping by id is built there without a wait)
  check_same_device("embedding_bwd", {&dtable, &dout});
  DSEEK_CHECK(ids.device() == dtable.device() || ids.device() == Device::CPU, "embedding_bwd: ids on ",
              device_name(ids.device()), ", dtable on ", device_name(dtable.device()));
  switch (dtable.device()) {
    case Device::CPU:
      return cpu::embedding_bwd(dtable, ids, dout);
    case Device::CUDA:
      return cuda::embedding_bwd(dtable, ids, dout);
    default:
      fail("embedding_bwd: no implementation for ", device_name(dtable.device()));
  }
}

}  // namespace dseek::ops
