// SHA-256 (FIPS 180-4), for checksums of downloads and fingerprints of files.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pgolf {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::array<uint8_t, 32> digest();  // finishes; call once
  static std::string hex(const void* data, size_t n);  // one-shot, lowercase hex
 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_file_hex(const std::string& path);

}  // namespace pgolf
