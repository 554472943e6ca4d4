// atomic_file.cpp — temporary file + fsync + rename (DESIGN.md "Formats").
#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dseek::io {

namespace fs = std::filesystem;

FileWriter::FileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create ", path, ": ", std::strerror(errno));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, size_t n) {
  auto p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("write to ", path_, " failed: ", std::strerror(errno));
    }
    p += w;
    n -= size_t(w);
  }
}

void FileWriter::sync_and_close() {
  if (::fsync(fd_) != 0) fail("fsync of ", path_, " failed: ", std::strerror(errno));
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close of ", path_, " failed: ", std::strerror(errno));
}

std::string temp_sibling(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return str_cat(path, ".tmp-", ::getpid(), "-", counter++);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open directory ", dir, ": ", std::strerror(errno));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail("fsync of directory ", dir, " failed: ", std::strerror(errno));
}

void atomic_write(const std::string& path, const std::function<void(FileWriter&)>& fill) {
  std::string tmp = temp_sibling(path);
  try {
    FileWriter w(tmp);
    fill(w);
    w.sync_and_close();
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      fail("rename ", tmp, " -> ", path, ": ", std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(fs::path(path).parent_path().string());
}

void atomic_write_text(const std::string& path, const std::string& text) {
  atomic_write(path, [&](FileWriter& w) { w.write(text.data(), text.size()); });
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("error reading ", path);
  return ss.str();
}

}  // namespace dseek::io
