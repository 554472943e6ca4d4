// safetensors_test.cpp — round trips of every dtype, sharded directories, and malformed files: each
// defect refused with an Error naming the file and tensor, never a crash (run under ASan/UBSan in CI),
// random byte flips and truncations included (spec/model.md §6.1–6.2).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace dseek::io {
namespace {

namespace fs = std::filesystem;

class TmpDir {
 public:
  TmpDir() {
    path_ = fs::temp_directory_path() /
            ("dseek-st-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TmpDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& f) const { return (path_ / f).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

std::string image(const std::string& header, size_t data_bytes, bool pad = true) {
  std::string h = header;
  while (pad && (8 + h.size()) % 8) h.push_back(' ');
  uint64_t n = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  out += h;
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(char(i * 37 + 11));
  return out;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Expects opening `bytes` as a file to throw an Error whose message contains every `parts` item.
void expect_refused(const std::string& bytes, std::initializer_list<std::string> parts) {
  TmpDir d;
  std::string p = d / "bad.safetensors";
  write_file(p, bytes);
  try {
    SafetensorsFile::open(p);
    ADD_FAILURE() << "accepted a malformed file";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    for (const auto& s : parts)
      EXPECT_NE(msg.find(s), std::string::npos) << "missing \"" << s << "\" in: " << msg;
  }
}

TEST(Safetensors, RoundTripAllDtypes) {
  TmpDir d;
  std::vector<NamedTensor> ts;
  int k = 0;
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2, DType::I32,
                   DType::I64, DType::U8, DType::BOOL}) {
    Tensor t = Tensor::empty({3, 5}, dt);
    auto p = static_cast<uint8_t*>(t.raw());
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(i * 7 + k);
    if (dt == DType::BOOL)
      for (size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
    ts.push_back({std::string("t.") + dtype_name(dt), t});
    ++k;
  }
  ts.push_back({"scalar", Tensor::zeros({}, DType::F32)});
  ts.push_back({"empty", Tensor::zeros({0, 4}, DType::BF16)});
  std::string path = d / "a.safetensors";
  write_safetensors(path, ts, {{"format", "pt"}, {"note", "x"}});
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata().at("note"), "x");
  EXPECT_EQ(f->tensors().size(), ts.size());
  for (const auto& nt : ts) {
    Tensor g = f->get(nt.name);
    EXPECT_EQ(g.dtype(), nt.tensor.dtype()) << nt.name;
    EXPECT_EQ(g.shape(), nt.tensor.shape()) << nt.name;
    EXPECT_EQ(std::memcmp(g.raw(), nt.tensor.raw(), g.nbytes()), 0) << nt.name;
  }
  // No temporary files left behind.
  for (auto& e : fs::directory_iterator(d.path())) EXPECT_EQ(e.path().filename(), "a.safetensors");
}

TEST(Safetensors, ReadsFixtureModel) {
  auto f = SafetensorsFile::open(test::data("tiny-v3/model.safetensors"));
  const TensorInfo* t = f->find("model.layers.0.self_attn.kv_b_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (Shape{4 * 32, 32}));
  auto q = SafetensorsFile::open(test::data("tiny-v3-fp8/model.safetensors"));
  EXPECT_EQ(q->find("model.layers.0.self_attn.q_a_proj.weight")->dtype, DType::F8E4M3);
}

TEST(Safetensors, MalformedFilesAreRefused) {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  {  // control: the good image opens
    TmpDir d;
    write_file(d / "g.safetensors", image(good, 16));
    EXPECT_NO_THROW(SafetensorsFile::open(d / "g.safetensors"));
  }
  expect_refused("", {"truncated"});
  expect_refused("abc", {"truncated"});
  {  // header length past the end
    std::string b = image(good, 16);
    uint64_t n = 1000;
    std::memcpy(b.data(), &n, 8);
    expect_refused(b, {"header length", "past the end"});
  }
  {
    std::string b = image(good, 16);
    uint64_t n = uint64_t(1) << 40;
    std::memcpy(b.data(), &n, 8);
    expect_refused(b, {"exceeds the limit"});
  }
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})", 16),
                 {"not valid JSON"});
  expect_refused(image(R"(["a"])", 0), {"does not start with '{'"});
  expect_refused(image(R"({"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", 8),
                 {"\"a\"", "unknown", "F31"});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                 {"\"a\"", "12 bytes"});
  expect_refused(
      image(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12),
      {"overlaps"});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12),
                 {"\"a\"", "out of range"});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16), {"gap", "\"a\""});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12), {"not covered"});
  expect_refused(
      image(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
          16),
      {"duplicate", "\"a\""});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), {"\"a\"", "end"});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), {"\"a\"", "shape"});
  expect_refused(image(R"({"a":{"dtype":"F32","shape":[2]}})", 8), {"\"a\"", "data_offsets"});
  expect_refused(image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), {"\"a\"", "dtype"});
  expect_refused(
      image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
      {"\"a\""});
  expect_refused(image(R"({"__metadata__":{"k":1}})", 0), {"__metadata__"});
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  TmpDir d;
  std::vector<NamedTensor> ts;
  for (int i = 0; i < 4; ++i)
    ts.push_back({"w" + std::to_string(i), Tensor::zeros({3, int64_t(i + 1)}, DType::F32)});
  std::string path = d / "ok.safetensors";
  write_safetensors(path, ts);
  std::string bytes = read_text_file(path);
  std::mt19937 rng(7);
  int refused = 0, accepted = 0;
  std::string p = d / "flip.safetensors";
  for (int it = 0; it < 3000; ++it) {
    std::string b = bytes;
    int flips = 1 + int(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      size_t pos = rng() % std::min(b.size(), size_t(8 + 200));  // mostly the length and header
      b[pos] = char(rng());
    }
    write_file(p, b);
    try {
      auto f = SafetensorsFile::open(p);
      for (const auto& t : f->tensors()) (void)f->get(t.name);
      ++accepted;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 100);
  for (size_t n = 0; n < bytes.size(); ++n) {  // every truncation
    write_file(p, bytes.substr(0, n));
    EXPECT_THROW(SafetensorsFile::open(p), Error) << "truncated to " << n;
  }
}

TEST(Safetensors, ShardedDirectories) {
  TmpDir d;
  std::vector<NamedTensor> ts;
  for (int i = 0; i < 6; ++i) {
    Tensor t = Tensor::empty({64}, DType::F32);
    t.fill(double(i));
    ts.push_back({"p" + std::to_string(i), t});
  }
  write_model_weights(d.path().string(), ts, /*max_shard_bytes=*/600);
  EXPECT_TRUE(fs::exists(d / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors"));
  TensorSource src = TensorSource::open_dir(d.path().string());
  EXPECT_EQ(src.names().size(), 6u);
  EXPECT_EQ(src.get("p4").data<float>()[10], 4.0f);
  EXPECT_THROW(src.get("nope"), Error);
  // Rewriting small goes back to one file and removes the index.
  write_model_weights(d.path().string(), ts);
  EXPECT_TRUE(fs::exists(d / "model.safetensors"));
  EXPECT_FALSE(fs::exists(d / "model.safetensors.index.json"));
}

TEST(Safetensors, BrokenIndexIsRefused) {
  auto refused = [](const std::string& index_json, const std::vector<std::string>& parts,
                    bool with_shard = true) {
    TmpDir d;
    if (with_shard) write_safetensors(d / "s1.safetensors", {{"a", Tensor::zeros({2}, DType::F32)}});
    write_file(d / "model.safetensors.index.json", index_json);
    try {
      TensorSource::open_dir(d.path().string());
      ADD_FAILURE() << "accepted " << index_json;
    } catch (const Error& e) {
      for (const auto& s : parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  };
  refused(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})",
          {"s2.safetensors", "missing", "\"b\""});
  refused(R"({"weight_map":{"zz":"s1.safetensors"}})", {"\"zz\"", "does not contain"});
  refused(R"({"weight_map":{"a":"../s1.safetensors"}})", {"invalid shard"});
  refused(R"({"weight_map":{"a":"s1.safetensors"})", {"not valid JSON"});
  refused(R"({"metadata":{}})", {"weight_map"});
  refused(R"({"weight_map":{"a":5}})", {"\"a\""});
  TmpDir empty;
  EXPECT_THROW(TensorSource::open_dir(empty.path().string()), Error);
}

TEST(AtomicWrite, FailureLeavesTargetUntouched) {
  TmpDir d;
  std::string p = d / "f.txt";
  atomic_write_text(p, "first");
  EXPECT_THROW(atomic_write(p,
                            [](FileWriter& w) {
                              w.write("partial", 7);
                              throw Error("simulated failure");
                            }),
               Error);
  EXPECT_EQ(read_text_file(p), "first");
  size_t n = 0;
  for (auto& e : fs::directory_iterator(d.path())) n += e.is_regular_file();
  EXPECT_EQ(n, 1u);
}

}  // namespace
}  // namespace dseek::io
