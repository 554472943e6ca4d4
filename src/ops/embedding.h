// embedding.h — rows of the embedding table gathered by token id (spec/model.md §2.1).
#pragma once

#include "core/stream.h"
#include "core/tensor.h"

namespace dseek::ops {

// out: [N, D] f32/f64; ids: [N] I64 (checked against V); table: [V, D] f32, f64 or bf16.
void embedding_fwd(Tensor out, const Tensor& ids, const Tensor& table, Stream s = {});

// Backward: dtable[ids[n]] += dout[n] (accumulated).
void embedding_bwd(Tensor dtable, const Tensor& ids, const Tensor& dout, Stream s = {});

}  // namespace dseek::ops
