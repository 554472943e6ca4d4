// tensor.cpp — Tensor views and host storage (DESIGN.md core/).
#include "core/tensor.h"

#include "core/device.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace dseek {

const char* device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
// Activations come and go every step in blocks of megabytes: keep freed memory in the heap instead of
// returning it to the kernel (glibc would unmap blocks over its mmap threshold, and every later
// allocation would fault its pages in again).
struct HeapPolicy {
  HeapPolicy() {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
};
const HeapPolicy kHeapPolicy;

class HostStorage : public Storage {
 public:
  HostStorage(void* p, size_t bytes) : Storage(p, bytes, Device::CPU) {}
  ~HostStorage() override { std::free(data_); }
};
}  // namespace

std::shared_ptr<Storage> host_storage(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) fail("out of host memory allocating ", bytes, " bytes");
  return std::make_shared<HostStorage>(p, bytes);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) DSEEK_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  const size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  t.storage_ = device == Device::CPU ? host_storage(bytes) : device_storage(bytes, device);
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::CPU) {
    std::memset(t.raw(), 0, t.nbytes());
  } else {
    device_memset(t.raw(), 0, t.nbytes());
  }
  return t;
}

Tensor Tensor::wrap(std::shared_ptr<Storage> storage, size_t offset, const Shape& shape, DType dtype) {
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset;
  t.shape_ = shape;
  t.dtype_ = dtype;
  DSEEK_CHECK(offset + t.nbytes() <= t.storage_->bytes(), "tensor ", t.str(), " at offset ", offset,
              " exceeds its storage of ", t.storage_->bytes(), " bytes");
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  DSEEK_CHECK(shape_numel(shape) == numel(), "view ", shape_str(shape), " of ", str(),
              ": element counts differ");
  DSEEK_CHECK(!qscale_ || shape == shape_, "view of a block-scaled tensor ", str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::with_block_scale(const Tensor& scale, int64_t br, int64_t bc) const {
  DSEEK_CHECK(ndim() == 2 && dtype_ == DType::F8E4M3, "block scales belong to fp8 matrices, not ", str());
  DSEEK_CHECK(scale.dtype() == DType::F32 && scale.ndim() == 2 && scale.size(0) == (size(0) + br - 1) / br &&
                  scale.size(1) == (size(1) + bc - 1) / bc && scale.device() == device(),
              "block scale ", scale.str(), " does not fit ", str(), " with blocks ", br, "x", bc);
  Tensor t = *this;
  t.qscale_ = std::make_shared<BlockScale>(BlockScale{scale, br, bc});
  t.qrow0_ = 0;
  return t;
}

Tensor Tensor::dequantize(DType dtype) const {
  if (!qscale_) return to(dtype);
  const Tensor codes = device() == Device::CPU ? *this : to(Device::CPU);
  const Tensor sc = qscale_->scale.to(Device::CPU);
  const int64_t R = size(0), C = size(1), SC = sc.size(1), br = qscale_->block_rows, bc = qscale_->block_cols;
  Tensor v = empty({R, C}, DType::F32);
  const uint8_t* q = static_cast<const uint8_t*>(codes.raw());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      v.data<float>()[r * C + c] =
          f8e4m3_to_f32(q[r * C + c]) * sc.data<float>()[((qrow0_ + r) / br) * SC + c / bc];
  return v.to(dtype).to(device());
}

Tensor Tensor::slice(int64_t start, int64_t len) const {
  DSEEK_CHECK(ndim() >= 1 && start >= 0 && len >= 0 && start + len <= shape_[0], "slice [", start, ", ",
              start + len, ") of ", str());
  Tensor t = *this;
  t.shape_[0] = len;
  t.offset_ = offset_ + size_t(start) * (numel() / std::max<int64_t>(shape_[0], 1)) * dtype_size(dtype_);
  t.qrow0_ = qrow0_ + start;
  return t;
}

Tensor Tensor::operator[](int64_t i) const {
  Tensor t = slice(i, 1);
  t.shape_.erase(t.shape_.begin());
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  copy_bytes(t.raw(), device(), raw(), device(), nbytes());
  t.qscale_ = qscale_;
  t.qrow0_ = qrow0_;
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (qscale_) return dtype == dtype_ ? *this : dequantize(dtype);
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  copy_bytes(t.raw(), d, raw(), device(), nbytes());
  if (qscale_) {  // the whole scale travels; the view keeps its row offset into it
    t.qscale_ = std::make_shared<BlockScale>(
        BlockScale{qscale_->scale.to(d), qscale_->block_rows, qscale_->block_cols});
    t.qrow0_ = qrow0_;
  }
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  DSEEK_CHECK(src.numel() == numel(), "copy_from: ", src.str(), " into ", str());
  const Device dd = device(), sd = src.device();
  if (dd == Device::CPU && sd == Device::CPU) {
    convert(raw(), dtype_, src.raw(), src.dtype_, size_t(numel()));
  } else if (src.dtype_ == dtype_) {
    copy_bytes(raw(), dd, src.raw(), sd, nbytes());
  } else if (dd == sd) {
    device_convert(raw(), dtype_, src.raw(), src.dtype_, size_t(numel()));
  } else {  // across devices and dtypes: move first, convert where the data now is
    copy_from(src.to(dd));
  }
}

void Tensor::fill(double value) {
  if (device() != Device::CPU) {
    if (value == 0.0) {  // zero bits are zero in every dtype: set on the device (training zeroes its grads)
      device_memset(raw(), 0, nbytes());
      return;
    }
    Tensor h = empty(shape_, dtype_);
    h.fill(value);
    copy_bytes(raw(), device(), h.raw(), Device::CPU, nbytes());
    return;
  }
  size_t n = size_t(numel());
  switch (dtype_) {
    case DType::F32:
      std::fill_n(data<float>(), n, float(value));
      return;
    case DType::F64:
      std::fill_n(data<double>(), n, value);
      return;
    case DType::I32:
      std::fill_n(data<int32_t>(), n, int32_t(value));
      return;
    case DType::I64:
      std::fill_n(data<int64_t>(), n, int64_t(value));
      return;
    default: {
      // Narrow floats: convert one element and replicate its bytes.
      double v = value;
      size_t es = dtype_size(dtype_);
      uint8_t one[8];
      convert(one, dtype_, &v, DType::F64, 1);
      auto p = static_cast<uint8_t*>(raw());
      for (size_t i = 0; i < n; ++i) std::memcpy(p + i * es, one, es);
    }
  }
}

std::string Tensor::str() const {
  return str_cat(dtype_name(dtype_), shape_str(shape_));
}

}  // namespace dseek
