// common.cpp — helpers shared by the subcommands: id lists and dtype flags.
#include <charconv>

#include "cli/commands.h"
#include "core/device.h"
#include "core/error.h"

namespace dseek::cli {

std::vector<int64_t> parse_id_list(const std::string& s, const char* flag) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      fail(flag, ": \"", item, "\" is not a token id (expected comma-separated integers like 1,2,3)");
    if (v < 0) fail(flag, ": token id ", v, " is negative");
    ids.push_back(v);
    i = j + 1;
  }
  return ids;
}

DType parse_weight_dtype(const std::string& s, const char* flag) {
  if (s == "f32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  fail(flag, ": \"", s, "\" is not a weight dtype (f32 or bf16)");
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda") return Device::CUDA;
  fail("--device: \"", s, "\" is not a device (cpu or cuda)");
}

Model load_model(const std::string& dir, const std::string& dtype_flag, const std::string& device_flag) {
  const Device dev = parse_device(device_flag.empty() ? "cpu" : device_flag);
  ModelConfig cfg = ModelConfig::load(dir);
  if (dev == Device::CPU) {
    const DType dt =
        dtype_flag.empty() ? default_weight_dtype(cfg) : parse_weight_dtype(dtype_flag, "--dtype");
    return Model::load(dir, {.dtype = dt});
  }
  DSEEK_CHECK(cuda_built(), "--device cuda: this dseek was built without CUDA");
  DSEEK_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device is visible");
  const DType dt = dtype_flag.empty() ? DType::BF16 : parse_weight_dtype(dtype_flag, "--dtype");
  Model m = Model::load(dir, {.dtype = DType::F32, .keep_fp8 = true});  // fp8 stays fp8 on the GPU
  m.to(Device::CUDA, dt);
  return m;
}

}  // namespace dseek::cli
