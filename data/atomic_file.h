// Writes a file (creating missing parent directories) so that readers see either the old file or the complete new
// one: bytes go to a temporary file in the same directory, which commit()
// flushes and renames over the target. Without commit() (an exception, an
// early return) the temporary is removed and nothing is left behind.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pgolf {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates PATH.tmp.XXXXXX
  ~AtomicFile();                          // removes the temporary unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  uint64_t bytes_written() const { return written_; }
  void commit();  // fsync + rename into place
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Whole-file helpers.
void write_file_atomic(const std::string& path, const std::string& bytes);
// The whole file; files over max_size bytes are refused (untrusted inputs).
// Throws pgolf::Error naming the path.
std::string read_file(const std::string& path, uint64_t max_size = UINT64_MAX);

}  // namespace pgolf
