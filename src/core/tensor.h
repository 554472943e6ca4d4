// tensor.h — the Tensor: dtype, shape, device, shared storage and a byte offset (DESIGN.md core/).
// Tensors are always contiguous (row-major); views share storage (reshape, slices along dim 0).
// Storage may be owned memory or a read-only file mapping kept alive by whoever holds a view.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace dseek {

enum class Device : uint8_t { CPU, CUDA };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Storage {
 public:
  Storage(void* data, size_t bytes, Device device) : data_(data), bytes_(bytes), device_(device) {}
  virtual ~Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 protected:
  void* data_;
  size_t bytes_;
  Device device_;
};

// 64-byte aligned host memory.
std::shared_ptr<Storage> host_storage(size_t bytes);

template <typename T>
constexpr bool dtype_matches(DType t) {
  if constexpr (std::is_same_v<T, float>) return t == DType::F32;
  if constexpr (std::is_same_v<T, double>) return t == DType::F64;
  if constexpr (std::is_same_v<T, int32_t>) return t == DType::I32;
  if constexpr (std::is_same_v<T, int64_t>) return t == DType::I64;
  if constexpr (std::is_same_v<T, uint16_t>) return t == DType::BF16 || t == DType::F16;
  if constexpr (std::is_same_v<T, uint8_t>) return dtype_size(t) == 1;
  return false;
}

class Tensor;

// Block scales of an fp8 matrix (DeepSeek's `weight_scale_inv`, spec/model.md §6.4): value[r][c] =
// fp8[r][c] · scale[(row0 + r) / block_rows][c / block_cols], row0 being where a row-slice view starts.
struct BlockScale;

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor wrap(std::shared_ptr<Storage> storage, size_t offset, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t size(int d) const { return shape_.at(d < 0 ? shape_.size() + d : d); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset() const { return offset_; }

  void* raw() const { return static_cast<uint8_t*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    DSEEK_CHECK(dtype_matches<T>(dtype_), "tensor of dtype ", dtype_name(dtype_),
                " accessed as another type");
    return static_cast<T*>(raw());
  }

  // Same storage, another shape of the same element count.
  Tensor view(const Shape& shape) const;
  // Rows [start, start + len) along dim 0, sharing storage.
  Tensor slice(int64_t start, int64_t len) const;
  // Row i along dim 0 with that dim dropped.
  Tensor operator[](int64_t i) const;

  // fp8 matrices that keep their block scales (GPU weights): attach, query, and the value as `dtype`.
  Tensor with_block_scale(const Tensor& scale, int64_t block_rows, int64_t block_cols) const;
  const BlockScale* block_scale() const { return qscale_.get(); }
  int64_t block_row0() const { return qrow0_; }
  Tensor dequantize(DType dtype) const;  // scale applied (the same tensor converted if it has none)

  Tensor clone() const;               // deep copy, same dtype and device
  Tensor to(DType dtype) const;       // converted copy on the same device; itself if already that dtype
                                      // (a block-scaled fp8 tensor converts to its scaled values)
  Tensor to(Device device) const;     // copy on another device; itself if already there
  void copy_from(const Tensor& src);  // same element count; converts dtype; any devices
  void fill(double value);            // float dtypes and integers; any device
  std::string str() const;            // "F32[2, 3]"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
  std::shared_ptr<const BlockScale> qscale_;
  int64_t qrow0_ = 0;
};

struct BlockScale {
  Tensor scale;  // [ceil(rows / block_rows), ceil(cols / block_cols)] f32, same device as the data
  int64_t block_rows = 128, block_cols = 128;
};

}  // namespace dseek
