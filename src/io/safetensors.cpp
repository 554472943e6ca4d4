// safetensors.cpp — safetensors parsing with full validation, mmap reader, atomic writer, sharded
// model directories (spec/model.md §6.1–6.2).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"

namespace dseek::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeader = 100'000'000;  // as the reference implementation

class MappedStorage : public Storage {
 public:
  MappedStorage(void* p, size_t bytes) : Storage(p, bytes, Device::CPU) {}
  ~MappedStorage() override {
    if (data_ && bytes_) ::munmap(data_, bytes_);
  }
};

// Parses JSON refusing duplicate keys in any object (nlohmann would keep the last silently).
json parse_json_strict(const char* begin, const char* end, const std::string& what) {
  std::vector<std::set<std::string>> keys;
  std::string dup;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.back().insert(parsed.get<std::string>()).second && dup.empty())
          dup = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail(what, ": not valid JSON: ", e.what());
  }
  if (!dup.empty()) fail(what, ": duplicate key \"", dup, "\"");
  return j;
}

uint64_t as_index(const json& v, const std::string& what, const std::string& name, const char* field) {
  if (!v.is_number_unsigned())
    fail(what, ": tensor \"", name, "\": ", field, " must hold non-negative integers");
  return v.get<uint64_t>();
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  if (size < 8)
    fail(what, ": truncated file (", size, " bytes; a safetensors file starts with an 8-byte length)");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);  // little-endian host
  if (n > kMaxHeader) fail(what, ": header length ", n, " exceeds the limit of ", kMaxHeader, " bytes");
  if (n > size - 8) fail(what, ": header length ", n, " runs past the end of the file (", size, " bytes)");
  if (n == 0 || data[8] != '{') fail(what, ": header does not start with '{'");
  json j = parse_json_strict(reinterpret_cast<const char*>(data + 8),
                             reinterpret_cast<const char*>(data + 8 + n), what);
  if (!j.is_object()) fail(what, ": header is not a JSON object");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const size_t buf = size - h.data_start;
  for (auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(what, ": __metadata__ must be an object of strings");
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail(what, ": __metadata__ value for \"", k, "\" is not a string");
        h.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail(what, ": tensor \"", name, "\": entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(what, ": tensor \"", name, "\": missing dtype");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(what, ": tensor \"", name, "\": missing shape");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail(what, ": tensor \"", name, "\": data_offsets must be [begin, end]");
    TensorInfo t;
    t.name = name;
    std::string dts = v["dtype"].get<std::string>();
    auto dt = dtype_from_name(dts);
    if (!dt) fail(what, ": tensor \"", name, "\": unknown or unsupported dtype \"", dts, "\"");
    t.dtype = *dt;
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      uint64_t dim = as_index(d, what, name, "shape");
      if (dim != 0 && numel > UINT64_MAX / dim) fail(what, ": tensor \"", name, "\": shape overflows");
      numel *= dim;
      if (dim > uint64_t(INT64_MAX)) fail(what, ": tensor \"", name, "\": dimension too large");
      t.shape.push_back(int64_t(dim));
    }
    t.begin = as_index(v["data_offsets"][0], what, name, "data_offsets");
    t.end = as_index(v["data_offsets"][1], what, name, "data_offsets");
    if (t.end < t.begin)
      fail(what, ": tensor \"", name, "\": data_offsets end ", t.end, " < begin ", t.begin);
    if (t.end > buf)
      fail(what, ": tensor \"", name, "\": data_offsets [", t.begin, ", ", t.end, ") out of range (data is ",
           buf, " bytes; file truncated?)");
    uint64_t esz = dtype_size(t.dtype);
    if (numel > UINT64_MAX / esz || numel * esz != t.end - t.begin)
      fail(what, ": tensor \"", name, "\": ", dts, shape_str(t.shape), " needs ", numel * esz,
           " bytes but data_offsets span ", t.end - t.begin);
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < pos)
      fail(what, ": tensor \"", t.name, "\" overlaps tensor \"", prev ? prev->name : "", "\" (bytes ",
           t.begin, "..", pos, ")");
    if (t.begin > pos)
      fail(what, ": gap in the data buffer before tensor \"", t.name, "\" (bytes ", pos, "..", t.begin, ")");
    pos = t.end;
    prev = &t;
  }
  if (pos != buf) fail(what, ": ", buf - pos, " bytes after the last tensor are not covered by the header");
  return h;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", path, ": ", std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_t size = size_t(st.st_size);
  void* p = nullptr;
  if (size > 0) {
    p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot mmap ", path, ": ", std::strerror(errno));
    }
  }
  ::close(fd);
  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->path_ = path;
  f->map_ = std::make_shared<MappedStorage>(p, size);
  static const uint8_t kEmpty[1] = {0};
  f->header_ = parse_safetensors(p ? static_cast<const uint8_t*>(p) : kEmpty, size, path);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail(path_, ": no tensor named \"", name, "\"");
  size_t off = header_.data_start + t->begin;
  if (off % dtype_size(t->dtype) == 0) return Tensor::wrap(map_, off, t->shape, t->dtype);
  Tensor copy = Tensor::empty(t->shape, t->dtype);
  std::memcpy(copy.raw(), static_cast<const uint8_t*>(map_->data()) + off, copy.nbytes());
  return copy;
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::set<std::string> seen;
  size_t pos = 0;
  for (const auto& nt : tensors) {
    DSEEK_CHECK(nt.tensor.device() == Device::CPU, "write_safetensors: tensor ", nt.name,
                " is not on the CPU");
    DSEEK_CHECK(seen.insert(nt.name).second, "write_safetensors: duplicate tensor name ", nt.name);
    size_t n = nt.tensor.nbytes();
    h[nt.name] = {{"dtype", dtype_name(nt.tensor.dtype())},
                  {"shape", nt.tensor.shape()},
                  {"data_offsets", {pos, pos + n}}};
    pos += n;
  }
  // nlohmann orders keys alphabetically; offsets follow `tensors` order, which the format allows.
  std::string hs = h.dump();
  while ((8 + hs.size()) % 8) hs.push_back(' ');
  uint64_t n = hs.size();
  atomic_write(path, [&](FileWriter& w) {
    w.write(&n, 8);
    w.write(hs.data(), hs.size());
    for (const auto& nt : tensors) w.write(nt.tensor.raw(), nt.tensor.nbytes());
  });
}

TensorSource TensorSource::open_dir(const std::string& dir) {
  TensorSource src;
  src.dir_ = dir;
  fs::path d(dir);
  if (!fs::is_directory(d)) fail(dir, ": not a directory");
  fs::path index = d / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::string text = read_text_file(index.string());
    json j = parse_json_strict(text.data(), text.data() + text.size(), index.string());
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string(), ": missing \"weight_map\" object");
    std::map<std::string, size_t> shard_idx;
    for (auto& [name, v] : j["weight_map"].items()) {
      if (!v.is_string()) fail(index.string(), ": weight_map entry for \"", name, "\" is not a file name");
      std::string shard = v.get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fail(index.string(), ": weight_map entry for \"", name, "\" names an invalid shard \"", shard, "\"");
      auto it = shard_idx.find(shard);
      if (it == shard_idx.end()) {
        fs::path sp = d / shard;
        if (!fs::exists(sp))
          fail(index.string(), ": shard \"", shard, "\" (holding \"", name, "\") is missing");
        src.files_.push_back(SafetensorsFile::open(sp.string()));
        it = shard_idx.emplace(shard, src.files_.size() - 1).first;
      }
      if (!src.files_[it->second]->find(name))
        fail(index.string(), ": tensor \"", name, "\" is mapped to ", shard, " which does not contain it");
      src.where_[name] = it->second;
    }
    return src;
  }
  fs::path single = d / "model.safetensors";
  if (!fs::exists(single)) fail(dir, ": no model.safetensors or model.safetensors.index.json");
  src.files_.push_back(SafetensorsFile::open(single.string()));
  for (const auto& t : src.files_[0]->tensors()) src.where_[t.name] = 0;
  return src;
}

Tensor TensorSource::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": checkpoint has no tensor \"", name, "\"");
  return files_[it->second]->get(name);
}

const TensorInfo& TensorSource::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, ": checkpoint has no tensor \"", name, "\"");
  return *files_[it->second]->find(name);
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> v;
  for (auto& [n, i] : where_) v.push_back(n);
  return v;
}

void write_model_weights(const std::string& dir, const std::vector<NamedTensor>& tensors,
                         size_t max_shard_bytes) {
  fs::create_directories(dir);
  std::vector<std::vector<NamedTensor>> shards(1);
  size_t cur = 0, total = 0;
  for (const auto& nt : tensors) {
    size_t n = nt.tensor.nbytes();
    if (cur > 0 && cur + n > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(nt);
    cur += n;
    total += n;
  }
  fs::path d(dir);
  // Remove stale weight files of another layout so the directory has exactly one.
  auto remove_if_exists = [](const fs::path& p) {
    std::error_code ec;
    fs::remove(p, ec);
  };
  if (shards.size() == 1) {
    write_safetensors((d / "model.safetensors").string(), shards[0]);
    remove_if_exists(d / "model.safetensors.index.json");
    return;
  }
  json wm = json::object();
  char buf[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors((d / buf).string(), shards[i]);
    for (const auto& nt : shards[i]) wm[nt.name] = buf;
  }
  json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
  atomic_write_text((d / "model.safetensors.index.json").string(), idx.dump(2) + "\n");
  remove_if_exists(d / "model.safetensors");
}

}  // namespace dseek::io
