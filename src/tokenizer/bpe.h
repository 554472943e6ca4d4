// bpe.h — the BPE model of a byte-level tokenizer.json (model.md §7.1): vocab, merges (either the
// "a b" string form or the ["a", "b"] pair form) as a rank table keyed by id pairs, and the merge of
// one pre-token's bytes into ids, lowest rank first and leftmost among equals (Hugging Face's
// Word::merge_all). Pre-tokens are raw bytes; the ByteLevel character map is applied at load time.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dseek::tok {

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept;
};
using StringIdMap = std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>>;

// Open-addressing map from a pair of ids to (rank, merged id).
class MergeTable {
 public:
  struct Entry {
    uint64_t key;
    int32_t rank, id;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, int32_t rank, int32_t id);  // a later insert of a pair wins
  const Entry* find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    for (size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == k) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) { return size_t((k * 0x9E3779B97F4A7C15ull) >> 20); }
  std::vector<Entry> slots_;
  size_t mask_ = 0, size_ = 0;
};

class BpeModel {
 public:
  // Parses tokenizer.json's "model" object; errors name `file` and the bad entry.
  static BpeModel from_json(const nlohmann::json& model, const std::string& file);

  // Appends the ids of one pre-token (raw bytes). Thread-safe; uses a per-thread word cache.
  void encode_word(const char* p, size_t n, std::vector<int32_t>& out) const;
  // The same without the cache, by the O(n log n) heap merge or the O(n^2) scan (tests compare them).
  void merge_word_heap(const char* p, size_t n, std::vector<int32_t>& out) const;
  void merge_word_scan(const char* p, size_t n, std::vector<int32_t>& out) const;

  // Hugging Face's token string (byte-level characters) ↔ id; -1 / nullptr when absent.
  int32_t token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  size_t vocab_size() const { return vocab_.size(); }  // number of entries (Model::get_vocab_size)
  int32_t max_id() const { return int32_t(id_to_token_.size()) - 1; }
  const MergeTable& merges() const { return merges_; }
  const std::vector<std::pair<int32_t, int32_t>>& merge_list() const { return merge_list_; }

 private:
  StringIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> has_id_;
  std::array<int32_t, 256> byte_id_{};
  MergeTable merges_;
  std::vector<std::pair<int32_t, int32_t>> merge_list_;
  StringIdMap byte_vocab_;  // raw bytes → id, only for ignore_merges
  bool ignore_merges_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
  uint64_t serial_ = 0;  // identifies this model to the per-thread caches

  // Initial symbols of a word; false if it has none.
  void initial_symbols(const char* p, size_t n, std::vector<int32_t>& sym) const;
};

}  // namespace dseek::tok
