// atomic_file.h — writes that never leave a half-written file behind: write to a temporary name in the
// same directory, fsync, rename over the target, fsync the directory (DESIGN.md "Formats").
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace dseek::io {

// A file being written; every write is checked and failures name the file.
class FileWriter {
 public:
  explicit FileWriter(const std::string& path);  // creates/truncates `path` (already a temporary name)
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, size_t n);
  void sync_and_close();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Calls `fill` with a writer on "<path>.tmp-<pid>-<n>", then fsyncs and renames it to `path`. On any
// exception the temporary file is removed and `path` is untouched.
void atomic_write(const std::string& path, const std::function<void(FileWriter&)>& fill);
void atomic_write_text(const std::string& path, const std::string& text);

// fsync a directory so that a rename inside it is durable.
void fsync_dir(const std::string& dir);
// A fresh temporary sibling name for `path` (same directory), unique within this process.
std::string temp_sibling(const std::string& path);
std::string read_text_file(const std::string& path);

}  // namespace dseek::io
