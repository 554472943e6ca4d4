// model_paged.cpp — Model::forward_paged: one forward for new tokens of several sequences of the paged
// latent cache (spec/model.md §2.5; spec/serving.md paged cache and its slot mapping / block tables).
#include "core/device.h"
#include "model/model.h"
#include "ops/linear.h"

namespace dseek {

namespace {

Tensor host_i64(const std::vector<int64_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I64);
  std::copy(v.begin(), v.end(), t.data<int64_t>());
  return t;
}
Tensor host_i32(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

}  // namespace

Tensor Model::decode_logits(const Tensor& ids, const Tensor& positions, const PagedStep& step) const {
  DSEEK_CHECK(step.decode && step.cache, "decode_logits: a decode step over a paged cache");
  const int64_t B = ids.size(0);
  std::vector<SeqChunk> chunks;  // one token per sequence (read by the attention only through `step`)
  for (int64_t b = 0; b < B; ++b) chunks.push_back({.row0 = b, .len = 1, .pos0 = 1, .cache = nullptr});
  Tensor hn = run(ids, positions, chunks, AttnPath::Auto, nullptr, &step);
  Tensor logits = Tensor::empty({B, cfg.vocab_size}, hn.dtype(), device());  // logits: [B, V]
  ops::linear(logits, hn, lm_head());
  return logits;
}

Tensor Model::forward_paged(const std::vector<std::vector<int64_t>>& tokens, const std::vector<int64_t>& seqs,
                            PagedLatentCache& cache) const {
  const int64_t B = int64_t(seqs.size()), V = cfg.vocab_size;
  DSEEK_CHECK(B > 0 && tokens.size() == seqs.size(), "forward_paged: ", tokens.size(), " token lists for ",
              seqs.size(), " sequences");
  bool decode = true, fresh = true;
  for (int64_t b = 0; b < B; ++b) {
    DSEEK_CHECK(!tokens[size_t(b)].empty(), "forward_paged: sequence ", seqs[size_t(b)], " gets no tokens");
    for (int64_t id : tokens[size_t(b)])
      DSEEK_CHECK(id >= 0 && id < V, "forward_paged: token id ", id, " is outside the vocabulary (", V, ")");
    decode = decode && tokens[size_t(b)].size() == 1;
    fresh = fresh && cache.length(seqs[size_t(b)]) == 0;
  }
  DSEEK_CHECK(decode || fresh, "forward_paged: a step either decodes one token per sequence or starts ",
              "empty sequences with their prompts");
  // Flattened rows: ids, positions and cache slots [N]; one chunk per sequence.
  std::vector<int64_t> ids, pos;
  std::vector<int32_t> slots, lens;
  std::vector<SeqChunk> chunks;
  int64_t max_blocks = 1, max_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = seqs[size_t(b)], p0 = cache.length(s), n = int64_t(tokens[size_t(b)].size());
    cache.reserve(s, p0 + n);
    chunks.push_back({.row0 = int64_t(ids.size()), .len = n, .pos0 = p0, .cache = nullptr});
    for (int64_t t = 0; t < n; ++t) {
      ids.push_back(tokens[size_t(b)][size_t(t)]);
      pos.push_back(p0 + t);
      slots.push_back(cache.slot(s, p0 + t));
    }
    lens.push_back(int32_t(p0 + n));
    max_len = std::max(max_len, p0 + n);
    max_blocks = std::max<int64_t>(max_blocks, int64_t(cache.blocks(s).size()));
  }
  const int64_t N = int64_t(ids.size());
  const Device dev = device();
  PagedStep step;
  step.cache = &cache;
  step.slots = host_i32(slots, {N}).to(dev);
  step.decode = decode;
  if (decode) {
    std::vector<int32_t> table(size_t(B * max_blocks), 0);  // [B, MB], padded with block 0
    for (int64_t b = 0; b < B; ++b) {
      const auto& bl = cache.blocks(seqs[size_t(b)]);
      std::copy(bl.begin(), bl.end(), table.begin() + b * max_blocks);
    }
    step.block_table = host_i32(table, {B, max_blocks}).to(dev);
    step.seq_lens = host_i32(lens, {B}).to(dev);
    step.max_len = max_len;
  }
  Tensor logits;
  if (decode) {
    logits = decode_logits(host_i64(ids).to(dev), host_i64(pos).to(dev), step);
  } else {
    Tensor hn = run(host_i64(ids).to(dev), host_i64(pos).to(dev), chunks, AttnPath::Auto, nullptr, &step);
    Tensor last = Tensor::empty({B, cfg.hidden_size}, hn.dtype(), dev);  // last: [B, D] each last row
    for (int64_t b = 0; b < B; ++b) {
      const SeqChunk& ch = chunks[size_t(b)];
      last.slice(b, 1).copy_from(hn.slice(ch.row0 + ch.len - 1, 1));
    }
    logits = Tensor::empty({B, V}, last.dtype(), dev);  // logits: [B, V]
    ops::linear(logits, last, lm_head());
  }
  for (int64_t b = 0; b < B; ++b) cache.set_length(seqs[size_t(b)], lens[size_t(b)]);
  return logits;
}

}  // namespace dseek
