// bpe.cpp — BPE vocab/merges loading and the per-word merge (model.md §7.1).
#include "tokenizer/bpe.h"

#include <atomic>
#include <climits>
#include <cstring>
#include <queue>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace dseek::tok {

using nlohmann::json;

size_t SvHash::operator()(std::string_view s) const noexcept {
  // 8 bytes at a time, multiply-xorshift mixing.
  uint64_t h = 0x243F6A8885A308D3ull ^ (s.size() * 0x9E3779B97F4A7C15ull);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x94D049BB133111EBull;
  h ^= h >> 31;
  return size_t(h);
}

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 1) cap <<= 1;
  slots_.assign(cap, Entry{kEmpty, 0, 0});
  mask_ = cap - 1;
  size_ = 0;
}

void MergeTable::insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
  const uint64_t k = key(a, b);
  for (size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
    Entry& e = slots_[i];
    if (e.key == k) {
      e.rank = rank;
      e.id = id;
      return;
    }
    if (e.key == kEmpty) {
      e = Entry{k, rank, id};
      ++size_;
      return;
    }
  }
}

namespace {
std::atomic<uint64_t> g_serial{1};
}

BpeModel BpeModel::from_json(const json& m, const std::string& file) {
  if (!m.is_object()) fail(file, ": \"model\" is not an object");
  const std::string type = m.value("type", std::string("BPE"));
  if (type != "BPE") fail(file, ": model type \"", type, "\" is not supported (only BPE)");
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail(file, ": model has no \"vocab\" object");
  if (!m.contains("merges") || !m["merges"].is_array()) fail(file, ": model has no \"merges\" array");
  auto str_or_null = [&](const char* k) {
    return m.contains(k) && m[k].is_string() ? m[k].get<std::string>() : std::string();
  };
  if (!str_or_null("continuing_subword_prefix").empty() || !str_or_null("end_of_word_suffix").empty())
    fail(file, ": BPE continuing_subword_prefix / end_of_word_suffix are not supported (not byte-level)");
  if (m.value("byte_fallback", false))
    fail(file, ": BPE byte_fallback is not supported (it belongs to non-byte-level tokenizers)");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    fail(file, ": BPE dropout is not supported");

  BpeModel b;
  b.serial_ = g_serial.fetch_add(1);
  b.ignore_merges_ = m.value("ignore_merges", false);
  b.fuse_unk_ = m.value("fuse_unk", false);
  const json& vocab = m["vocab"];
  b.vocab_.reserve(vocab.size() * 2);
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX / 2)
      fail(file, ": vocab entry \"", it.key(), "\" has a bad id ", it.value().dump());
    const int32_t id = it.value().get<int32_t>();
    b.vocab_[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  b.id_to_token_.assign(size_t(max_id + 1), std::string());
  b.has_id_.assign(size_t(max_id + 1), 0);
  for (auto& [tok, id] : b.vocab_) {
    b.id_to_token_[size_t(id)] = tok;
    b.has_id_[size_t(id)] = 1;
  }
  const ByteLevelMap& bl = ByteLevelMap::get();
  for (int c = 0; c < 256; ++c) {
    auto it = b.vocab_.find(bl.byte_to_utf8[c]);
    b.byte_id_[c] = it == b.vocab_.end() ? -1 : it->second;
  }
  if (str_or_null("unk_token").size()) {
    auto it = b.vocab_.find(str_or_null("unk_token"));
    if (it == b.vocab_.end())
      fail(file, ": unk_token \"", str_or_null("unk_token"), "\" is not in the vocab");
    b.unk_id_ = it->second;
  }
  if (b.ignore_merges_) {
    std::string bytes;
    for (auto& [tok, id] : b.vocab_)
      if (bl.to_bytes(tok, bytes)) b.byte_vocab_[bytes] = id;
  }

  const json& merges = m["merges"];
  b.merges_.reserve(merges.size());
  b.merge_list_.reserve(merges.size());
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    std::string left, right;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos)
        fail(file, ": merges[", r, "] = \"", s, "\" is not two tokens separated by a space");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      fail(file, ": merges[", r, "] = ", e.dump().substr(0, 100), " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto ia = b.vocab_.find(left), ib = b.vocab_.find(right);
    if (ia == b.vocab_.end()) fail(file, ": merges[", r, "]: token \"", left, "\" is not in the vocab");
    if (ib == b.vocab_.end()) fail(file, ": merges[", r, "]: token \"", right, "\" is not in the vocab");
    joined = left + right;
    auto ij = b.vocab_.find(joined);
    if (ij == b.vocab_.end())
      fail(file, ": merges[", r, "]: the merged token \"", joined, "\" is not in the vocab");
    b.merges_.insert(ia->second, ib->second, int32_t(r), ij->second);
    b.merge_list_.emplace_back(ia->second, ib->second);
  }
  return b;
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size() || !has_id_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

void BpeModel::initial_symbols(const char* p, size_t n, std::vector<int32_t>& sym) const {
  sym.clear();
  bool prev_unk = false;
  for (size_t i = 0; i < n; ++i) {
    int32_t id = byte_id_[static_cast<unsigned char>(p[i])];
    if (id >= 0) {
      sym.push_back(id);
      prev_unk = false;
    } else if (unk_id_ >= 0) {  // Hugging Face: unknown characters become unk (fused if asked), or vanish
      if (!(fuse_unk_ && prev_unk)) sym.push_back(unk_id_);
      prev_unk = true;
    }
  }
}

void BpeModel::merge_word_scan(const char* p, size_t n, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> sym, rank;
  initial_symbols(p, n, sym);
  const size_t m = sym.size();
  if (m == 0) return;
  // rank[i] = rank of the pair (sym[i], sym[i+1]).
  rank.resize(m);
  auto pair_rank = [&](size_t i) {
    const MergeTable::Entry* e = merges_.find(sym[i], sym[i + 1]);
    return e ? e->rank : INT32_MAX;
  };
  size_t len = m;
  for (size_t i = 0; i + 1 < len; ++i) rank[i] = pair_rank(i);
  while (len > 1) {
    int32_t best = INT32_MAX;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < len; ++i)
      if (rank[i] < best) {
        best = rank[i];
        bi = i;
      }
    if (best == INT32_MAX) break;
    sym[bi] = merges_.find(sym[bi], sym[bi + 1])->id;
    for (size_t i = bi + 1; i + 1 < len; ++i) {
      sym[i] = sym[i + 1];
      rank[i] = rank[i + 1];
    }
    --len;
    if (bi + 1 < len) rank[bi] = pair_rank(bi);
    if (bi > 0) rank[bi - 1] = pair_rank(bi - 1);
  }
  out.insert(out.end(), sym.begin(), sym.begin() + long(len));
}

void BpeModel::merge_word_heap(const char* p, size_t n, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> sym, prev, next;
  initial_symbols(p, n, sym);
  const int32_t m = int32_t(sym.size());
  if (m == 0) return;
  prev.resize(size_t(m));
  next.resize(size_t(m));
  for (int32_t i = 0; i < m; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < m ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> q;
  auto push = [&](int32_t i) {
    int32_t j = next[size_t(i)];
    if (j < 0) return;
    if (const MergeTable::Entry* e = merges_.find(sym[size_t(i)], sym[size_t(j)])) q.push({e->rank, i});
  };
  for (int32_t i = 0; i + 1 < m; ++i) push(i);
  std::vector<uint8_t> dead(size_t(m), 0);
  while (!q.empty()) {
    Cand c = q.top();
    q.pop();
    if (dead[size_t(c.pos)]) continue;
    int32_t j = next[size_t(c.pos)];
    if (j < 0) continue;
    const MergeTable::Entry* e = merges_.find(sym[size_t(c.pos)], sym[size_t(j)]);
    if (!e || e->rank != c.rank) continue;  // stale: the pair changed since it was queued
    sym[size_t(c.pos)] = e->id;
    dead[size_t(j)] = 1;
    next[size_t(c.pos)] = next[size_t(j)];
    if (next[size_t(j)] >= 0) prev[size_t(next[size_t(j)])] = c.pos;
    if (prev[size_t(c.pos)] >= 0) push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) out.push_back(sym[size_t(i)]);
}

namespace {

// Per-thread cache of word → ids for one model at a time: open addressing over flat arrays (keys and
// ids live in two pools), cleared when it fills up.
class WordCache {
 public:
  static constexpr size_t kSlots = 1 << 18, kMaxEntries = kSlots / 2, kMaxKey = 255;

  bool lookup(uint64_t owner, const char* p, size_t n, uint64_t h, std::vector<int32_t>& out) {
    if (owner != owner_) reset(owner);
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.len == 0) return false;
      if (s.hash == h && s.len == n && std::memcmp(keys_.data() + s.key_off, p, n) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.n_ids);
        return true;
      }
    }
  }
  void insert(const char* p, size_t n, uint64_t h, const int32_t* ids, size_t n_ids) {
    if (n > kMaxKey || n_ids > 0xFFFF) return;
    if (entries_ >= kMaxEntries) reset(owner_);
    size_t i = h & (kSlots - 1);
    while (slots_[i].len) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{h, uint32_t(keys_.size()), uint32_t(ids_.size()), uint16_t(n), uint16_t(n_ids)};
    keys_.insert(keys_.end(), p, p + n);
    ids_.insert(ids_.end(), ids, ids + n_ids);
    ++entries_;
  }

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t len, n_ids;  // len 0 = empty slot (empty words are never cached)
  };
  std::vector<Slot> slots_;
  std::vector<char> keys_;
  std::vector<int32_t> ids_;
  uint64_t owner_ = 0;
  size_t entries_ = 0;

  void reset(uint64_t owner) {
    owner_ = owner;
    slots_.assign(kSlots, Slot{0, 0, 0, 0, 0});
    keys_.clear();
    ids_.clear();
    entries_ = 0;
  }
};

}  // namespace

void BpeModel::encode_word(const char* p, size_t n, std::vector<int32_t>& out) const {
  if (n == 0) return;
  if (n == 1) {
    int32_t id = byte_id_[static_cast<unsigned char>(p[0])];
    if (id >= 0)
      out.push_back(id);
    else if (unk_id_ >= 0)
      out.push_back(unk_id_);
    return;
  }
  if (ignore_merges_) {
    auto it = byte_vocab_.find(std::string_view(p, n));
    if (it != byte_vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (n > WordCache::kMaxKey) {
    merge_word_heap(p, n, out);
    return;
  }
  thread_local WordCache cache;
  const uint64_t h = SvHash()(std::string_view(p, n));
  if (cache.lookup(serial_, p, n, h, out)) return;
  const size_t before = out.size();
  if (n <= 64)
    merge_word_scan(p, n, out);
  else
    merge_word_heap(p, n, out);
  cache.insert(p, n, h, out.data() + before, out.size() - before);
}

}  // namespace dseek::tok
