#include "data/shard.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/atomic_file.h"
#include "data/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are little-endian; so must the host be");

namespace pgolf {

MappedShard::MappedShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open shard: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < kShardHeaderBytes) {
    ::close(fd);
    fail(path, "truncated shard: " + std::to_string(bytes) + " bytes, smaller than the 1024-byte header");
  }
  void* m = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) fail(path, std::string("mmap failed: ") + std::strerror(errno));
  map_ = m;
  map_bytes_ = bytes;

  int32_t header[kShardHeaderInts];
  std::memcpy(header, m, sizeof(header));
  auto bail = [&](const std::string& problem) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    fail(path, problem);
  };
  if (header[0] != kShardMagic)
    bail("wrong magic " + std::to_string(header[0]) + " (expected " + std::to_string(kShardMagic) +
         "): not a token shard");
  if (header[1] != kShardVersion)
    bail("unsupported shard version " + std::to_string(header[1]) + " (expected 1)");
  if (header[2] < 0) bail("negative token count " + std::to_string(header[2]) + " in header");
  const uint64_t n = static_cast<uint64_t>(header[2]);
  const uint64_t expect = kShardHeaderBytes + 2 * n;
  if (bytes != expect) {
    std::string kind = bytes < expect ? "truncated shard" : "shard has trailing bytes";
    if ((bytes - kShardHeaderBytes) % 2 != 0) kind = "odd-sized shard";
    bail(kind + ": " + std::to_string(bytes) + " bytes, header says " + std::to_string(n) + " tokens (" +
         std::to_string(expect) + " bytes)");
  }
  n_ = static_cast<size_t>(n);
  tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(m) + kShardHeaderBytes);
  ::madvise(m, bytes, MADV_SEQUENTIAL);
}

MappedShard::MappedShard(MappedShard&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_bytes_(o.map_bytes_), tokens_(o.tokens_), n_(o.n_) {
  o.map_ = nullptr;
  o.tokens_ = nullptr;
  o.n_ = 0;
}

MappedShard::~MappedShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

void write_shard(const std::string& path, const uint16_t* tokens, size_t n) {
  if (n > static_cast<size_t>(INT32_MAX)) fail(path, "too many tokens for one shard: " + std::to_string(n));
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(n);
  AtomicFile f(path);
  f.write(header, sizeof(header));
  f.write(tokens, n * sizeof(uint16_t));
  f.commit();
}

}  // namespace pgolf
