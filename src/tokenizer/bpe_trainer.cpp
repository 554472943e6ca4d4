// bpe_trainer.cpp — byte-level BPE training with incremental pair counts (model.md §7.1).
#include "tokenizer/bpe_trainer.h"

#include <chrono>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace dseek::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

struct Word {
  std::vector<int32_t> sym;
  int64_t count;
};

}  // namespace

BpeVocab train_bpe(const std::vector<std::string>& texts, const TrainOptions& opt, TrainStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  DSEEK_CHECK(opt.vocab_size >= 256 + opt.specials.size(), "--vocab-size ", opt.vocab_size,
              " is too small: 256 byte tokens + ", opt.specials.size(), " special tokens need at least ",
              256 + opt.specials.size());
  BpeVocab v = byte_vocab();
  // A tokenizer with the byte vocabulary, V3's pre-tokenizer and the specials does the splitting.
  const Tokenizer pre = Tokenizer::from_json_text(tokenizer_json_text(v, opt.specials), "<trainer>");

  // 1. Count words (pre-tokens) over all texts.
  StringIdMap word_index;
  std::vector<Word> words;
  size_t n_words = 0;
  for (const std::string& text : texts) {
    Arena arena;
    std::vector<Piece> pieces =
        pre.pre_tokenize(text, arena, EncodeOptions{.parse_special = true}, opt.threads);
    for (const Piece& pc : pieces) {
      if (pc.id >= 0 || pc.n == 0) continue;
      ++n_words;
      auto [it, fresh] = word_index.try_emplace(std::string(pc.p, pc.n), int32_t(words.size()));
      if (fresh) {
        Word w;
        w.count = 0;
        for (size_t i = 0; i < pc.n; ++i) w.sym.push_back(static_cast<unsigned char>(pc.p[i]));
        words.push_back(std::move(w));
      }
      ++words[size_t(it->second)].count;
    }
  }
  word_index = StringIdMap();

  // 2. Pair counts and where each pair occurs.
  std::unordered_map<uint64_t, int64_t> count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  count.reserve(1 << 16);
  where.reserve(1 << 16);
  for (uint32_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].sym;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      count[k] += words[w].count;
      auto& list = where[k];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  // Max-heap on (count, then the smaller pair); stale entries are skipped when popped.
  struct Cand {
    int64_t count;
    uint64_t key;
    bool operator<(const Cand& o) const { return count != o.count ? count < o.count : key > o.key; }
  };
  std::priority_queue<Cand> heap;
  for (auto& [k, c] : count) heap.push({c, k});

  StringIdMap token_id;  // bytes → id, to reuse an id when two merges build the same bytes
  for (size_t id = 0; id < v.tokens.size(); ++id) token_id[v.tokens[id]] = int32_t(id);
  const size_t target = opt.vocab_size - opt.specials.size();
  std::vector<uint32_t> stamp(words.size(), 0);
  uint32_t epoch = 0;
  std::unordered_map<uint64_t, int64_t> delta;
  while (v.tokens.size() < target && !heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    auto ci = count.find(top.key);
    const int64_t cur = ci == count.end() ? 0 : ci->second;
    if (cur != top.count) {  // stale entry
      if (cur > 0) heap.push({cur, top.key});
      continue;
    }
    if (cur < std::max<int64_t>(opt.min_frequency, 1)) break;
    const int32_t a = int32_t(top.key >> 32), b = int32_t(top.key & 0xffffffffu);
    std::string bytes = v.tokens[size_t(a)] + v.tokens[size_t(b)];
    auto [ti, fresh] = token_id.try_emplace(bytes, int32_t(v.tokens.size()));
    const int32_t nid = ti->second;
    if (fresh) v.tokens.push_back(std::move(bytes));
    v.merges.emplace_back(a, b);

    // Re-count the words that contain (a, b): subtract their pairs, merge, add them back.
    ++epoch;
    delta.clear();
    std::vector<uint32_t> list = std::move(where[top.key]);
    where.erase(top.key);
    for (uint32_t w : list) {
      if (stamp[w] == epoch) continue;
      stamp[w] = epoch;
      auto& s = words[w].sym;
      const int64_t c = words[w].count;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= c;
      size_t o = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[o++] = nid;
          ++i;
        } else {
          s[o++] = s[i];
        }
      }
      s.resize(o);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        delta[k] += c;
        if (s[i] == nid || s[i + 1] == nid) {
          auto& wl = where[k];
          if (wl.empty() || wl.back() != w) wl.push_back(w);
        }
      }
    }
    for (auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = count[k];
      c += d;
      if (d > 0) heap.push({c, k});
      if (c <= 0) count.erase(k);
    }
  }
  if (stats) {
    stats->words = n_words;
    stats->unique_words = words.size();
    stats->merges = v.merges.size();
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return v;
}

}  // namespace dseek::tok
