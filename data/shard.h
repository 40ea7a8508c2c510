// Token shards in the parameter-golf layout (SPEC §1): a 256 x int32
// little-endian header (magic 20240520, version 1, token count n) followed by
// n little-endian uint16 tokens. The file size must be exactly 1024 + 2n.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pgolf {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * 4;

// A validated, read-only, memory-mapped shard. Opening checks magic, version
// and size against the header; any mismatch throws pgolf::Error naming the file.
class MappedShard {
 public:
  explicit MappedShard(const std::string& path);
  ~MappedShard();
  MappedShard(MappedShard&& o) noexcept;
  MappedShard& operator=(MappedShard&&) = delete;
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const { return n_; }
  // Tokens in file order. The host is little-endian (checked at compile time).
  const uint16_t* tokens() const { return tokens_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t n_ = 0;
};

// Writes a shard atomically (temp file + rename).
void write_shard(const std::string& path, const uint16_t* tokens, size_t n);
inline void write_shard(const std::string& path, const std::vector<uint16_t>& t) {
  write_shard(path, t.data(), t.size());
}

}  // namespace pgolf
