// generate.cpp — one prompt through the inference engine (infer/engine.h).
#include "infer/generate.h"

#include "infer/engine.h"

namespace dseek::infer {

GenerateResult generate(const Model& m, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(int64_t)>& on_token) {
  Engine engine(m);
  auto cb = on_token ? std::function<void(size_t, int64_t)>([&](size_t, int64_t t) { on_token(t); })
                     : std::function<void(size_t, int64_t)>();
  return engine.generate({prompt}, opt, cb).front();
}

}  // namespace dseek::infer
