// safetensors.h — read (mmap, zero-copy) and write (atomic) safetensors files, and open a model
// directory's tensors whether in one file or sharded behind model.safetensors.index.json
// (spec/model.md §6.1–6.2). Malformed input is refused with an Error naming the file and tensor.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dseek::io {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin = 0, end = 0;  // byte range within the data buffer
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;  // file offset of the data buffer (8 + header length)
};

// Parses and validates the header of an in-memory safetensors image of `size` bytes. `what` names
// the source in error messages (a path).
SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& what);

class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorInfo* find(const std::string& name) const;
  // A view into the mapping (copied only when its bytes are misaligned for the dtype).
  Tensor get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<Storage> map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// Writes `tensors` (CPU) to `path` atomically, in the given order, header padded to 8 bytes.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The tensors of a model directory: `model.safetensors.index.json` with its shards, or a single
// `model.safetensors`.
class TensorSource {
 public:
  static TensorSource open_dir(const std::string& dir);
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  Tensor get(const std::string& name) const;  // throws naming the tensor and directory if absent
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Writes a model directory's weights: one `model.safetensors` when they fit in `max_shard_bytes`, else
// shards `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`. Each file atomic.
void write_model_weights(const std::string& dir, const std::vector<NamedTensor>& tensors,
                         size_t max_shard_bytes = size_t(5) << 30);

}  // namespace dseek::io
