// error.h — the one exception type dseek throws at its edges (files, configs, flags, requests), and
// the check macros that build its message. DESIGN.md "Conventions": errors name the file, tensor or field.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dseek {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Concatenate anything that streams into an ostream.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str_cat(args...));
}

}  // namespace dseek

// DSEEK_CHECK(cond, parts...): throws dseek::Error with the concatenated parts when cond is false.
#define DSEEK_CHECK(cond, ...)               \
  do {                                       \
    if (!(cond)) ::dseek::fail(__VA_ARGS__); \
  } while (0)
