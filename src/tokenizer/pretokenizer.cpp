// pretokenizer.cpp — Sequence/Split/Digits/ByteLevel pre-tokenizers with Hugging Face's split
// semantics (model.md §7.1), serial and chunk-parallel.
#include "tokenizer/pretokenizer.h"

#include <omp.h>

#include <algorithm>

#include "core/error.h"

namespace dseek::tok {

using nlohmann::json;

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

size_t char_len_at(const char* s, size_t n, size_t i) {
  unsigned c = static_cast<unsigned char>(s[i]);
  size_t l = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  return std::min(l, n - i);
}

SplitBehavior parse_behavior(const json& j, const std::string& file) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail(file, ": pre_tokenizer Split has unknown behavior ", j.dump(),
       " (expected Isolated, Removed, MergedWithPrevious, MergedWithNext or Contiguous)");
}

// Pieces of one "slice": [a, b) of the piece, `flag` = is-match (then: remove-flag after behavior).
struct Slice {
  size_t a, b;
  bool flag;
};

}  // namespace

void find_all(const Regex& re, const char* s, size_t n, std::vector<Match>& out) {
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  Match m;
  while (last_end <= n && re.find(s, n, last_end, m)) {
    if (m.start == m.end && have_last && last_match_end == m.end) {
      if (last_end >= n) break;
      last_end += char_len_at(s, n, last_end);
      continue;
    }
    last_end = m.end;
    have_last = true;
    last_match_end = m.end;
    out.push_back(m);
  }
}

void apply_behavior(const Piece& in, const std::vector<Match>& matches, SplitBehavior b, bool invert,
                    std::vector<Piece>& out) {
  auto emit = [&](size_t a, size_t e) {
    if (e > a) out.push_back(Piece{in.p + a, e - a, -1});
  };
  if (b == SplitBehavior::kIsolated) {  // the common case: every match and every gap is a piece
    size_t prev = 0;
    for (const Match& m : matches) {
      emit(prev, m.start);
      emit(m.start, m.end);
      prev = m.end;
    }
    emit(prev, in.n);
    return;
  }
  // General path, step for step as Hugging Face's NormalizedString::split.
  std::vector<Slice> sl;
  if (in.n == 0) {
    sl.push_back({0, 0, false});
  } else {
    size_t prev = 0;
    for (const Match& m : matches) {
      if (prev != m.start) sl.push_back({prev, m.start, false});
      sl.push_back({m.start, m.end, true});
      prev = m.end;
    }
    if (prev != in.n) sl.push_back({prev, in.n, false});
  }
  if (invert)
    for (auto& s : sl) s.flag = !s.flag;
  std::vector<Slice> res;
  switch (b) {
    case SplitBehavior::kRemoved:
      res = sl;
      break;
    case SplitBehavior::kIsolated:
      for (auto& s : sl) res.push_back({s.a, s.b, false});
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (auto& s : sl) {
        if (s.flag == prev_match && !res.empty())
          res.back().b = s.b;
        else
          res.push_back({s.a, s.b, false});
        prev_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto& s : sl) {
        if (s.flag && !prev_match && !res.empty())
          res.back().b = s.b;
        else
          res.push_back({s.a, s.b, false});
        prev_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev_match = false;
      for (size_t k = sl.size(); k-- > 0;) {
        const Slice& s = sl[k];
        if (s.flag && !prev_match && !res.empty())
          res.back().a = s.a;
        else
          res.push_back({s.a, s.b, false});
        prev_match = s.flag;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
  }
  for (auto& s : res)
    if (!s.flag) emit(s.a, s.b);
}

void PreTokenizer::add_stage(const json& j, const std::string& file) {
  if (!j.is_object() || !j.contains("type"))
    fail(file, ": pre_tokenizer entry without a \"type\": ", j.dump().substr(0, 200));
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      fail(file, ": pre_tokenizer Sequence without a \"pretokenizers\" array");
    for (const json& s : j["pretokenizers"]) add_stage(s, file);
    return;
  }
  if (byte_level_)
    fail(file, ": pre_tokenizer \"", type,
         "\" after ByteLevel is not supported (it would see byte-level characters)");
  auto st = std::make_unique<PreTokenizerStage>();
  if (type == "Split") {
    if (!j.contains("pattern") || !j["pattern"].is_object())
      fail(file, ": pre_tokenizer Split without a \"pattern\" object");
    const json& pat = j["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      st->re =
          std::make_unique<Regex>(pat["Regex"].get<std::string>(), false, file + ": pre_tokenizer Split");
    } else if (pat.contains("String") && pat["String"].is_string()) {
      st->re =
          std::make_unique<Regex>(pat["String"].get<std::string>(), true, file + ": pre_tokenizer Split");
    } else {
      fail(file, ": pre_tokenizer Split pattern must be {\"Regex\": ...} or {\"String\": ...}, got ",
           pat.dump().substr(0, 200));
    }
    st->behavior = parse_behavior(j.value("behavior", json("Isolated")), file);
    st->invert = j.value("invert", false);
  } else if (type == "Digits") {
    st->re = std::make_unique<Regex>(j.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", false,
                                     file + ": pre_tokenizer Digits");
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    st->prefix_space = j.value("add_prefix_space", true);
    if (j.value("use_regex", true))
      st->re = std::make_unique<Regex>(kGpt2Pattern, false, file + ": ByteLevel");
    if (!st->re && !st->prefix_space) return;  // pure byte mapping: nothing to split
  } else {
    fail(file, ": pre_tokenizer type \"", type,
         "\" is not supported (byte-level BPE needs Sequence, Split, Digits, ByteLevel)");
  }
  stages_.push_back(std::move(st));
}

PreTokenizer PreTokenizer::from_json(const json& j, const std::string& file) {
  PreTokenizer p;
  if (!j.is_null()) p.add_stage(j, file);
  return p;
}

void PreTokenizer::split_one(const PreTokenizerStage& st, const Piece& in0, std::vector<Piece>& out,
                             Arena& arena) const {
  Piece in = in0;
  if (st.prefix_space && (in.n == 0 || in.p[0] != ' ')) {
    std::string& t = arena.strings.emplace_back();
    t.reserve(in.n + 1);
    t.push_back(' ');
    t.append(in.p, in.n);
    in = Piece{arena.strings.back().data(), arena.strings.back().size(), -1};
  }
  if (!st.re) {
    if (in.n) out.push_back(in);
    return;
  }
  thread_local std::vector<Match> matches;
  matches.clear();
  find_all(*st.re, in.p, in.n, matches);
  apply_behavior(in, matches, st.behavior, st.invert, out);
}

void PreTokenizer::run(std::vector<Piece>& pieces, Arena& arena, int threads) const {
  std::vector<Piece> next;
  for (const auto& st : stages_) {
    next.clear();
    if (threads > 1 && !st->prefix_space) {
      run_stage_parallel(*st, pieces, next, arena, threads);
    } else {
      for (const Piece& pc : pieces) {
        if (pc.id != kTextPiece)
          next.push_back(pc);
        else
          split_one(*st, pc, next, arena);
      }
    }
    pieces.swap(next);
  }
}

namespace {

constexpr size_t kGrain = 32 * 1024;  // bytes of text per parallel work item

struct Item {
  size_t first = 0, last = 0;  // whole pieces [first, last) — or one piece cut at [b, e)
  bool sub = false;
  size_t b = 0, e = 0;
  std::vector<Piece> pieces;   // output of a whole-piece item
  std::vector<Match> matches;  // output of a sub item: matches starting in [b, e)
};

// Rebuilds the matches one sequential scan would find from the chunks' own scans. Chunk i scanned
// from its start s_i; the sequential scan restarts at the end of each match. Invariant at chunk i:
// `pos` is a restart position of the sequential scan and, when pos <= s_i, no match starts in
// [pos, s_i). Where the chunk scan and the sequential scan share a restart position they coincide
// from there on (a match at a given start depends only on the subject, not on where the search
// began, since the pattern has no \G and no empty match).
void stitch(const Regex& re, const Piece& pc, const std::vector<Item*>& subs, std::vector<Match>& merged) {
  size_t pos = 0;
  for (const Item* it : subs) {
    const auto& L = it->matches;
    if (pos <= it->b) {
      merged.insert(merged.end(), L.begin(), L.end());
      if (!L.empty()) pos = L.back().end;
      continue;
    }
    while (pos < it->e) {
      auto k = std::lower_bound(L.begin(), L.end(), pos, [](const Match& m, size_t v) { return m.end < v; });
      if (k != L.end() && k->end == pos) {
        merged.insert(merged.end(), k + 1, L.end());
        if (k + 1 != L.end()) pos = L.back().end;
        break;
      }
      Match m;
      if (!re.find(pc.p, pc.n, pos, m)) return;  // no match anywhere after pos
      if (m.start >= it->e) break;               // belongs to a later chunk
      merged.push_back(m);
      pos = m.end;
    }
  }
}

}  // namespace

void PreTokenizer::run_stage_parallel(const PreTokenizerStage& st, const std::vector<Piece>& in,
                                      std::vector<Piece>& out, Arena& arena, int threads) const {
  std::vector<Item> items;
  size_t group_bytes = 0;
  auto flush_group = [&](size_t upto) {
    if (!items.empty() && !items.back().sub && items.back().last < upto) items.back().last = upto;
    group_bytes = 0;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    const Piece& pc = in[i];
    if (pc.id == kTextPiece && st.re && st.re->chunkable() && pc.n > 2 * kGrain) {
      flush_group(i);
      for (size_t b = 0; b < pc.n;) {
        size_t e = std::min(pc.n, b + kGrain);
        while (e < pc.n && (static_cast<unsigned char>(pc.p[e]) & 0xC0) == 0x80) ++e;
        Item it;
        it.first = i;
        it.last = i + 1;
        it.sub = true;
        it.b = b;
        it.e = e;
        items.push_back(std::move(it));
        b = e;
      }
      continue;
    }
    if (items.empty() || items.back().sub || group_bytes >= kGrain) {
      Item it;
      it.first = i;
      it.last = i + 1;
      items.push_back(std::move(it));
      group_bytes = 0;
    } else {
      items.back().last = i + 1;
    }
    group_bytes += pc.n + 16;
  }

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (size_t k = 0; k < items.size(); ++k) {
    Item& it = items[k];
    if (it.sub) {
      const Piece& pc = in[it.first];
      Match m;
      size_t pos = it.b;
      while (pos <= pc.n && st.re->find(pc.p, pc.n, pos, m) && m.start < it.e) {
        it.matches.push_back(m);
        pos = m.end;
      }
    } else {
      Arena unused;  // prefix-space stages never run here
      for (size_t i = it.first; i < it.last; ++i) {
        if (in[i].id != kTextPiece)
          it.pieces.push_back(in[i]);
        else
          split_one(st, in[i], it.pieces, unused);
      }
    }
  }

  (void)arena;
  std::vector<Match> merged;
  std::vector<Item*> subs;
  for (size_t k = 0; k < items.size();) {
    if (!items[k].sub) {
      out.insert(out.end(), items[k].pieces.begin(), items[k].pieces.end());
      ++k;
      continue;
    }
    subs.clear();
    const size_t piece = items[k].first;
    while (k < items.size() && items[k].sub && items[k].first == piece) subs.push_back(&items[k++]);
    merged.clear();
    stitch(*st.re, in[piece], subs, merged);
    apply_behavior(in[piece], merged, st.behavior, st.invert, out);
  }
}

}  // namespace dseek::tok
