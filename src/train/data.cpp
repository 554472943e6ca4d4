// data.cpp — token shards, data preparation and the deterministic packing loader.
#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/atomic_file.h"

namespace dseek::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t eos) {
  uint32_t mx = eos;
  for (uint32_t t : tokens) mx = std::max(mx, t);
  const uint32_t width = mx < 65536 ? 2 : 4;
  io::atomic_write(path, [&](io::FileWriter& w) {
    uint8_t h[32] = {};
    std::memcpy(h, kShardMagic, 8);
    const uint32_t version = 1;
    const uint64_t count = tokens.size();
    std::memcpy(h + 8, &version, 4);
    std::memcpy(h + 12, &width, 4);
    std::memcpy(h + 16, &count, 8);
    std::memcpy(h + 24, &eos, 4);
    w.write(h, 32);
    std::vector<uint8_t> buf;
    const size_t chunk = 1 << 20;
    for (size_t i = 0; i < tokens.size(); i += chunk) {
      const size_t n = std::min(chunk, tokens.size() - i);
      buf.resize(n * width);
      for (size_t j = 0; j < n; ++j) {
        if (width == 2) {
          const uint16_t v = uint16_t(tokens[i + j]);
          std::memcpy(buf.data() + 2 * j, &v, 2);
        } else {
          std::memcpy(buf.data() + 4 * j, &tokens[i + j], 4);
        }
      }
      w.write(buf.data(), buf.size());
    }
  });
}

namespace {
class MappedFile : public Storage {
 public:
  MappedFile(void* p, size_t n) : Storage(p, n, Device::CPU) {}
  ~MappedFile() override {
    if (data_) ::munmap(data_, bytes_);
  }
};
}  // namespace

std::shared_ptr<Shard> Shard::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", path);
  }
  const size_t size = size_t(st.st_size);
  if (size < 32) {
    ::close(fd);
    fail(path, ": truncated token shard (", size, " bytes, header is 32)");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot mmap ", path);
  auto s = std::shared_ptr<Shard>(new Shard());
  s->path_ = path;
  s->map_ = std::make_shared<MappedFile>(p, size);
  const uint8_t* h = static_cast<const uint8_t*>(p);
  if (std::memcmp(h, kShardMagic, 8) != 0) fail(path, ": not a dseek token shard (bad magic)");
  uint32_t version, width;
  uint64_t count;
  std::memcpy(&version, h + 8, 4);
  std::memcpy(&width, h + 12, 4);
  std::memcpy(&count, h + 16, 8);
  std::memcpy(&s->eos_, h + 24, 4);
  if (version != 1) fail(path, ": token shard version ", version, " is not supported (1)");
  if (width != 2 && width != 4) fail(path, ": token width ", width, " bytes is invalid (2 or 4)");
  if (count > (size - 32) / width || 32 + count * width != size)
    fail(path, ": header says ", count, " tokens of ", width, " bytes but the file holds ", size - 32,
         " data bytes");
  s->width_ = width;
  s->count_ = int64_t(count);
  s->data_ = h + 32;
  return s;
}

uint32_t Shard::at(int64_t i) const {
  if (width_ == 2) {
    uint16_t v;
    std::memcpy(&v, data_ + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, data_ + 4 * i, 4);
  return v;
}

std::vector<std::string> read_documents(const std::string& path, const std::string& format) {
  std::string fmt = format;
  if (fmt == "auto") fmt = fs::path(path).extension() == ".jsonl" ? "jsonl" : "text";
  DSEEK_CHECK(fmt == "text" || fmt == "jsonl", "--format: \"", format, "\" is not auto, text or jsonl");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open ", path, ": ", std::strerror(errno));
  std::vector<std::string> docs;
  std::string line, cur;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (fmt == "jsonl") {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        fail(path, ":", lineno, ": not valid JSON: ", e.what());
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        fail(path, ":", lineno, ": each line must be an object with a string \"text\" field");
      docs.push_back(j["text"].get<std::string>());
    } else {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) {
        if (!cur.empty()) docs.push_back(std::move(cur));
        cur.clear();
      } else {
        if (!cur.empty()) cur += '\n';
        cur += line;
      }
    }
  }
  if (!cur.empty()) docs.push_back(std::move(cur));
  return docs;
}

PrepareStats prepare_data(const std::vector<std::string>& inputs, const std::string& out_dir,
                          const Encoder& encode, int64_t eos, int64_t vocab_size,
                          const std::string& tokenizer_dir, const PrepareOptions& opt) {
  DSEEK_CHECK(!inputs.empty(), "data prepare: no input files");
  DSEEK_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction must be in [0, 1)");
  DSEEK_CHECK(eos >= 0 && eos < vocab_size, "data prepare: eos id ", eos, " outside the vocabulary");
  std::vector<std::string> docs;
  for (const auto& p : inputs) {
    auto d = read_documents(p, opt.format);
    for (auto& x : d) docs.push_back(std::move(x));
  }
  DSEEK_CHECK(!docs.empty(), "data prepare: the inputs hold no documents");
  std::vector<std::vector<int64_t>> ids(docs.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < int64_t(docs.size()); ++i) ids[size_t(i)] = encode(docs[size_t(i)]);
  PrepareStats st;
  st.documents = int64_t(docs.size());
  std::vector<char> is_val(docs.size(), 0);
  for (size_t i = 0; i < docs.size(); ++i) {
    const double u = Philox::uniform(Philox(opt.seed, 0x7661).at(i)[0]);
    is_val[i] = u < opt.val_fraction;
  }
  if (opt.val_fraction > 0 && docs.size() >= 2 && std::count(is_val.begin(), is_val.end(), 1) == 0)
    is_val.back() = 1;
  fs::create_directories(out_dir);
  std::vector<uint32_t> train, val;
  std::vector<std::string> shard_names;
  auto flush = [&](bool force) {
    if (train.empty() || (!force && int64_t(train.size()) < opt.shard_tokens)) return;
    char name[64];
    std::snprintf(name, sizeof name, "train-%05zu.tok", shard_names.size());
    write_shard((fs::path(out_dir) / name).string(), train, uint32_t(eos));
    shard_names.push_back(name);
    st.train_tokens += int64_t(train.size());
    train.clear();
  };
  for (size_t i = 0; i < docs.size(); ++i) {
    auto& dst = is_val[i] ? val : train;
    for (int64_t t : ids[i]) {
      DSEEK_CHECK(t >= 0 && t < vocab_size, "data prepare: token ", t, " outside the vocabulary");
      dst.push_back(uint32_t(t));
    }
    dst.push_back(uint32_t(eos));
    st.val_documents += is_val[i];
    flush(false);
  }
  flush(true);
  DSEEK_CHECK(!shard_names.empty(), "data prepare: every document went to the validation split");
  st.val_tokens = int64_t(val.size());
  if (!val.empty()) write_shard((fs::path(out_dir) / "val.tok").string(), val, uint32_t(eos));
  json meta = {{"version", 1},
               {"tokenizer", tokenizer_dir},
               {"vocab_size", vocab_size},
               {"eos_id", eos},
               {"documents", st.documents},
               {"val_documents", st.val_documents},
               {"train_tokens", st.train_tokens},
               {"val_tokens", st.val_tokens},
               {"train_shards", shard_names},
               {"val_shard", val.empty() ? json(nullptr) : json("val.tok")}};
  io::atomic_write_text((fs::path(out_dir) / "meta.json").string(), meta.dump(2) + "\n");
  return st;
}

Loader::Loader(const std::string& dir, const std::string& split, int64_t seq_len, int64_t batch,
               uint64_t seed)
    : seq_len_(seq_len), batch_(batch), seed_(seed) {
  DSEEK_CHECK(seq_len >= 1 && batch >= 1, "loader: seq_len and batch must be positive");
  const std::string mp = (fs::path(dir) / "meta.json").string();
  json meta;
  try {
    meta = json::parse(io::read_text_file(mp));
  } catch (const json::exception& e) {
    fail(mp, ": not valid JSON: ", e.what());
  }
  DSEEK_CHECK(meta.value("version", 0) == 1, mp, ": unsupported data version");
  vocab_size_ = meta.at("vocab_size").get<int64_t>();
  eos_ = meta.at("eos_id").get<int64_t>();
  std::vector<std::string> names;
  if (split == "train") {
    names = meta.at("train_shards").get<std::vector<std::string>>();
  } else {
    DSEEK_CHECK(split == "val", "loader: split must be train or val");
    DSEEK_CHECK(!meta.at("val_shard").is_null(), mp, ": the data has no validation split");
    names = {meta.at("val_shard").get<std::string>()};
  }
  for (const auto& n : names) {
    starts_.push_back(total_);
    shards_.push_back(Shard::open((fs::path(dir) / n).string()));
    total_ += shards_.back()->size();
  }
  windows_ = total_ > seq_len ? (total_ - 1) / seq_len : 0;
  DSEEK_CHECK(windows_ >= 1, dir, ": the ", split, " split has ", total_,
              " tokens, too few for one window of ", seq_len + 1);
  shuffle();
}

uint32_t Loader::token(int64_t i) const {
  const size_t s = size_t(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin() - 1);
  return shards_[s]->at(i - starts_[s]);
}

void Loader::shuffle() {
  order_.resize(size_t(windows_));
  for (int64_t i = 0; i < windows_; ++i) order_[size_t(i)] = i;
  Rng rng(seed_, 0x5eed0000ull + uint64_t(pos_.epoch));
  for (int64_t i = windows_ - 1; i > 0; --i) {
    const int64_t j = int64_t(rng.uniform() * double(i + 1)) % (i + 1);
    std::swap(order_[size_t(i)], order_[size_t(j)]);
  }
}

void Loader::seek(Position p) {
  DSEEK_CHECK(p.epoch >= 0 && p.cursor >= 0 && p.cursor <= windows_, "loader: invalid position");
  pos_ = p;
  shuffle();
}

void Loader::next(Tensor& ids, Tensor& targets) {
  ids = Tensor::empty({batch_, seq_len_}, DType::I64);
  targets = Tensor::empty({batch_, seq_len_}, DType::I64);
  for (int64_t b = 0; b < batch_; ++b) {
    if (pos_.cursor >= windows_) {
      ++pos_.epoch;
      pos_.cursor = 0;
      shuffle();
    }
    const int64_t w0 = order_[size_t(pos_.cursor++)] * seq_len_;
    for (int64_t t = 0; t < seq_len_; ++t) {
      ids.data<int64_t>()[b * seq_len_ + t] = token(w0 + t);
      targets.data<int64_t>()[b * seq_len_ + t] = token(w0 + t + 1);
    }
  }
}

}  // namespace dseek::train
