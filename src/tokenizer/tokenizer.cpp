// tokenizer.cpp — loading tokenizer.json / tokenizer_config.json and the encode/decode pipeline
// (model.md §7.1–7.2): added tokens → invalid-UTF-8 runs → pre-tokenizer → BPE; ByteLevel decode.
#include "tokenizer/tokenizer.h"

#include <omp.h>

#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"
#include "tokenizer/utf8.h"

namespace dseek::tok {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json parse_json(const std::string& text, const std::string& name) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(name, ": not valid JSON: ", e.what());
  }
}

// Normalizers that change nothing: null, or a Sequence of such.
void check_normalizer(const json& j, const std::string& file) {
  if (j.is_null()) return;
  if (j.is_object() && j.value("type", std::string()) == "Sequence" && j.contains("normalizers") &&
      j["normalizers"].is_array()) {
    for (const json& n : j["normalizers"]) check_normalizer(n, file);
    return;
  }
  fail(file, ": normalizer ", j.dump().substr(0, 120),
       " is not supported (byte-level BPE tokenizers use none; dseek accepts null or an empty Sequence)");
}

void check_decoder(const json& j, const std::string& file) {
  if (j.is_object() && j.value("type", std::string()) == "ByteLevel") return;
  if (j.is_object() && j.value("type", std::string()) == "Sequence" && j.contains("decoders") &&
      j["decoders"].is_array() && j["decoders"].size() == 1) {
    check_decoder(j["decoders"][0], file);
    return;
  }
  fail(file, ": decoder ", j.dump().substr(0, 120), " is not supported (expected ByteLevel)");
}

std::string token_field(const json& cfg, const char* key) {
  if (!cfg.contains(key) || cfg[key].is_null()) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  fail("tokenizer_config.json: \"", key, "\" must be a string or an AddedToken object");
}

}  // namespace

Tokenizer Tokenizer::from_json_text(const std::string& text, const std::string& name,
                                    const std::string& cfg_text, const std::string& cfg_name) {
  const json j = parse_json(text, name);
  if (!j.is_object()) fail(name, ": not a tokenizer.json object");
  if (!j.contains("model") || j["model"].is_null()) fail(name, ": missing \"model\"");
  Tokenizer t;
  t.bpe_ = BpeModel::from_json(j["model"], name);
  check_normalizer(j.value("normalizer", json()), name);
  t.pre_ = PreTokenizer::from_json(j.value("pre_tokenizer", json()), name);
  if (!t.pre_.byte_level())
    fail(name, ": not a byte-level BPE tokenizer (its pre_tokenizer has no ByteLevel step)");
  check_decoder(j.value("decoder", json()), name);

  // Added tokens, with the ids Hugging Face's AddedVocabulary::add_tokens gives them.
  std::vector<AddedToken> added;
  const json at = j.value("added_tokens", json::array());
  if (!at.is_array()) fail(name, ": \"added_tokens\" is not an array");
  const int64_t model_size = int64_t(t.bpe_.vocab_size());
  int64_t max_added = -1;
  for (size_t k = 0; k < at.size(); ++k) {
    const json& e = at[k];
    if (!e.is_object() || !e.contains("content") || !e["content"].is_string())
      fail(name, ": added_tokens[", k, "] has no \"content\" string");
    AddedToken a;
    a.content = e["content"].get<std::string>();
    a.special = e.value("special", false);
    a.normalized = e.value("normalized", !a.special);
    a.single_word = e.value("single_word", false);
    a.lstrip = e.value("lstrip", false);
    a.rstrip = e.value("rstrip", false);
    if (a.content.empty()) continue;
    if (t.added_ids_.count(a.content)) fail(name, ": added token \"", a.content, "\" appears twice");
    int64_t id = t.bpe_.token_to_id(a.content);
    if (id < 0)
      id = max_added < 0 ? model_size
                         : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
    if (e.contains("id") && !(e["id"].is_number_integer() && e["id"].get<int64_t>() == id))
      fail(name, ": added token \"", a.content, "\" has id ", e["id"].dump(), " but its place gives it id ",
           id, " (tokens already in the vocab keep their vocab id; the others follow the vocab in order)");
    a.id = int32_t(id);
    max_added = std::max(max_added, id);
    t.added_ids_[a.content] = a.id;
    added.push_back(std::move(a));
  }

  // id → bytes, with the ByteLevel decoder's rule: a token whose every character is in the byte map
  // decodes to those bytes, any other token to its own UTF-8 text.
  const int64_t n_ids = std::max<int64_t>(t.bpe_.max_id(), max_added) + 1;
  t.bytes_.assign(size_t(n_ids), std::string());
  t.known_.assign(size_t(n_ids), 0);
  t.special_.assign(size_t(n_ids), 0);
  const ByteLevelMap& bl = ByteLevelMap::get();
  auto set_bytes = [&](int32_t id, const std::string& tok) {
    std::string b;
    t.bytes_[size_t(id)] = bl.to_bytes(tok, b) ? b : tok;
    t.known_[size_t(id)] = 1;
  };
  for (int32_t id = 0; id <= t.bpe_.max_id(); ++id)
    if (const std::string* s = t.bpe_.id_to_token(id)) set_bytes(id, *s);
  for (const AddedToken& a : added) {
    set_bytes(a.id, a.content);
    t.special_[size_t(a.id)] = a.special;
  }
  t.added_.build(std::move(added));

  if (!cfg_text.empty()) {
    const json c = parse_json(cfg_text, cfg_name);
    if (!c.is_object()) fail(cfg_name, ": not a JSON object");
    t.config_.bos_token = token_field(c, "bos_token");
    t.config_.eos_token = token_field(c, "eos_token");
    t.config_.pad_token = token_field(c, "pad_token");
    t.config_.add_bos_token = c.value("add_bos_token", false);
    t.config_.add_eos_token = c.value("add_eos_token", false);
    if (c.contains("chat_template")) {
      const json& ct = c["chat_template"];
      if (ct.is_string()) {
        t.config_.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {  // [{"name": "default", "template": "..."}, ...]
        for (const json& e : ct)
          if (e.is_object() && e.value("name", std::string()) == "default")
            t.config_.chat_template = e.value("template", std::string());
      }
    }
    auto resolve = [&](const std::string& tok, const char* what) {
      if (tok.empty()) return int32_t(-1);
      int32_t id = t.token_to_id(tok);
      if (id < 0) fail(cfg_name, ": ", what, " \"", tok, "\" is not a token of ", name);
      return id;
    };
    t.bos_id_ = resolve(t.config_.bos_token, "bos_token");
    t.eos_id_ = resolve(t.config_.eos_token, "eos_token");
  }
  return t;
}

Tokenizer Tokenizer::load(const std::string& path) {
  if (!fs::exists(path)) fail(path, ": no such directory or file (expected a directory with tokenizer.json)");
  std::string file = path, cfg;
  if (fs::is_directory(path)) {
    file = (fs::path(path) / "tokenizer.json").string();
    cfg = (fs::path(path) / "tokenizer_config.json").string();
  } else {
    cfg = (fs::path(path).parent_path() / "tokenizer_config.json").string();
  }
  if (!fs::exists(file)) fail(file, ": no such file (a tokenizer directory needs tokenizer.json)");
  std::string cfg_text = fs::exists(cfg) ? io::read_text_file(cfg) : "";
  return from_json_text(io::read_text_file(file), file, cfg_text, cfg);
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  auto it = added_ids_.find(token);
  if (it != added_ids_.end()) return it->second;
  return bpe_.token_to_id(token);
}

bool Tokenizer::id_to_token(int32_t id, std::string& out) const {
  for (const AddedToken& a : added_.tokens())
    if (a.id == id) {
      out = a.content;
      return true;
    }
  if (const std::string* s = bpe_.id_to_token(id)) {
    out = *s;
    return true;
  }
  return false;
}

bool Tokenizer::has_id(int32_t id) const {
  return id >= 0 && id < num_ids() && known_[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return has_id(id) && special_[size_t(id)];
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string empty;
  return has_id(id) ? bytes_[size_t(id)] : empty;
}

void Tokenizer::split_specials_and_invalid(std::string_view text, const EncodeOptions& opt,
                                           std::vector<Piece>& out) const {
  thread_local std::vector<Piece> tmp;
  tmp.clear();
  added_.split(Piece{text.data(), text.size(), kTextPiece}, opt.parse_special, tmp);
  for (const Piece& pc : tmp) {
    if (pc.id >= 0) {
      out.push_back(pc);
      continue;
    }
    auto s = reinterpret_cast<const unsigned char*>(pc.p);
    size_t i = 0;
    while (i < pc.n) {
      const size_t v = utf8_valid_prefix(pc.p + i, pc.n - i);
      if (v) out.push_back(Piece{pc.p + i, v, kTextPiece});
      i += v;
      if (i >= pc.n) break;
      size_t j = i;
      while (j < pc.n && utf8_valid_len(s + j, pc.n - j) == 0) ++j;
      out.push_back(Piece{pc.p + i, j - i, kRawPiece});
      i = j;
    }
  }
}

std::vector<Piece> Tokenizer::pre_tokenize(std::string_view text, Arena& arena, const EncodeOptions& opt,
                                           int threads) const {
  std::vector<Piece> pieces;
  split_specials_and_invalid(text, opt, pieces);
  pre_.run(pieces, arena, threads);
  return pieces;
}

void Tokenizer::bpe_pieces(const std::vector<Piece>& pieces, size_t begin, size_t end,
                           std::vector<int32_t>& out) const {
  for (size_t i = begin; i < end; ++i) {
    const Piece& pc = pieces[i];
    if (pc.id >= 0)
      out.push_back(pc.id);
    else
      bpe_.encode_word(pc.p, pc.n, out);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
  std::vector<int32_t> ids;
  if (opt.add_bos) {
    DSEEK_CHECK(bos_id_ >= 0, "add_bos: the tokenizer has no bos_token (tokenizer_config.json)");
    ids.push_back(bos_id_);
  }
  thread_local std::vector<Piece> pieces;
  pieces.clear();
  split_specials_and_invalid(text, opt, pieces);
  Arena arena;
  pre_.run(pieces, arena, 1);
  ids.reserve(ids.size() + text.size() / 3);
  bpe_pieces(pieces, 0, pieces.size(), ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_parallel(std::string_view text, const EncodeOptions& opt,
                                                int threads) const {
  if (threads <= 0) threads = omp_get_max_threads();
  if (threads <= 1 || text.size() < (64u << 10)) return encode(text, opt);
  std::vector<int32_t> ids;
  if (opt.add_bos) {
    DSEEK_CHECK(bos_id_ >= 0, "add_bos: the tokenizer has no bos_token (tokenizer_config.json)");
    ids.push_back(bos_id_);
  }
  std::vector<Piece> pieces;
  split_specials_and_invalid(text, opt, pieces);
  Arena arena;
  pre_.run(pieces, arena, threads);
  const size_t n_chunks = std::min<size_t>(pieces.size(), size_t(threads) * 8);
  std::vector<std::vector<int32_t>> parts(n_chunks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (size_t c = 0; c < n_chunks; ++c) {
    const size_t b = pieces.size() * c / n_chunks, e = pieces.size() * (c + 1) / n_chunks;
    parts[c].reserve((e - b) * 2);
    bpe_pieces(pieces, b, e, parts[c]);
  }
  size_t total = ids.size();
  for (auto& p : parts) total += p.size();
  ids.reserve(total);
  for (auto& p : parts) ids.insert(ids.end(), p.begin(), p.end());
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          const EncodeOptions& opt, int threads) const {
  if (threads <= 0) threads = omp_get_max_threads();
  std::vector<std::vector<int32_t>> out(texts.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], opt);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (!has_id(id) || (skip_special && special_[size_t(id)])) continue;
    bytes += bytes_[size_t(id)];
  }
  return utf8_valid_prefix(bytes.data(), bytes.size()) == bytes.size() ? bytes : utf8_lossy(bytes);
}

std::string StreamDecoder::put(int32_t id) {
  if (!t_.has_id(id) || (skip_special_ && t_.is_special(id))) return "";
  pending_ += t_.token_bytes(id);
  const size_t hold = utf8_incomplete_tail(pending_.data(), pending_.size());
  std::string ready = utf8_lossy(std::string_view(pending_.data(), pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return ready;
}

std::string StreamDecoder::finish() {
  std::string rest = utf8_lossy(pending_);
  pending_.clear();
  return rest;
}

}  // namespace dseek::tok
