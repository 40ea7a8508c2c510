#include "data/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "data/error.h"

namespace pgolf {

static std::string errno_text() { return std::strerror(errno); }

// mkdir -p of the directory part of path.
static void make_parent_dirs(const std::string& path) {
  for (size_t p = path.find('/', 1); p != std::string::npos; p = path.find('/', p + 1)) {
    const std::string dir = path.substr(0, p);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail(path, "cannot create directory " + dir + ": " + errno_text());
  }
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  make_parent_dirs(path_);
  std::vector<char> templ(path_.begin(), path_.end());
  const char suffix[] = ".tmp.XXXXXX";
  templ.insert(templ.end(), suffix, suffix + sizeof(suffix));  // includes NUL
  fd_ = ::mkstemp(templ.data());
  if (fd_ < 0) fail(path_, "cannot create temporary file: " + errno_text());
  tmp_ = templ.data();
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path_, "write failed: " + errno_text());
    }
    p += w;
    n -= static_cast<size_t>(w);
    written_ += static_cast<uint64_t>(w);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail(path_, "fsync failed: " + errno_text());
  if (::close(fd_) != 0) { fd_ = -1; fail(path_, "close failed: " + errno_text()); }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(path_, "rename failed: " + errno_text());
  committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

std::string read_file(const std::string& path, uint64_t max_size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_size) {
    ::close(fd);
    fail(path, "file of " + std::to_string(st.st_size) + " bytes is over the limit of " + std::to_string(max_size));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::read(fd, &out[got], out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ::close(fd);
      fail(path, "read failed");
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return out;
}

}  // namespace pgolf
