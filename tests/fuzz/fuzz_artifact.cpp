// libFuzzer target: decode_artifact on hostile bytes. A pgolf::Error is the
// expected outcome; any other exception, a crash or a sanitizer report is a
// bug. Each input is decoded as given and again after reseal_artifact, so
// mutations reach the checks behind the checksums (the JSON table, the
// section decoders).
//
// PGOLF_FUZZ_WRITE_SEEDS=DIR makes the binary write a seed corpus (valid
// artifacts of every coding) into DIR and exit: nothing binary is committed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/artifact.h"

namespace {

using namespace pgolf::quant;

ArtifactLimits fuzz_limits() {
  ArtifactLimits lim;  // small enough that no input can exhaust the fuzzer's memory or time
  lim.max_decoded = 16u << 20;
  lim.max_json = 1u << 20;
  lim.max_tensors = 4096;
  return lim;
}

void decode(const std::string& bytes) {
  try {
    ArtifactLayout layout;
    decode_artifact(bytes, "fuzz", &layout, fuzz_limits());
  } catch (const pgolf::Error&) {
  }
}

ArtifactTensor quantized(const std::string& name, int64_t rows, int64_t cols, int bits) {
  ArtifactTensor t;
  t.name = name;
  t.shape = {rows, cols};
  t.kind = ArtifactTensor::Kind::Quantized;
  t.bits = bits;
  t.method = "gptq";
  const int m = (1 << (bits - 1)) - 1;
  uint32_t s = 12345u * static_cast<uint32_t>(bits);
  for (int64_t i = 0; i < rows * cols; ++i) {
    s = s * 1103515245u + 12345u;
    // Sum of two uniforms: peaked at zero like real weights.
    const int v = static_cast<int>((s >> 16) % (m + 1)) - static_cast<int>((s >> 24) % (m + 1));
    t.values.push_back(static_cast<int8_t>(v));
  }
  for (int64_t r = 0; r < rows; ++r) t.scales.push_back(static_cast<uint16_t>(0x2400 + r));
  return t;
}

ArtifactTensor raw(const std::string& name, int64_t n, const std::string& dtype, int esize) {
  ArtifactTensor t;
  t.name = name;
  t.shape = {n};
  t.kind = ArtifactTensor::Kind::Raw;
  t.dtype = dtype;
  for (int64_t i = 0; i < n * esize; ++i) t.data += static_cast<char>(dtype == "bool" ? i % 2 : (i * 7) % 13);
  return t;
}

void write_seeds(const std::string& dir) {
  Artifact a;
  a.config_json = R"({"vocab_size":64,"num_layers":1})";
  a.meta_json = R"({"bits":{"mlp":6}})";
  for (int bits = 2; bits <= 8; bits += 2) a.tensors.push_back(quantized("q" + std::to_string(bits), 4, 24, bits));
  a.tensors.push_back(quantized("q3", 3, 5, 3));
  a.tensors.push_back(raw("norm", 8, "float16", 2));
  a.tensors.push_back(raw("mask", 5, "bool", 1));
  a.tensors.push_back(raw("ids", 2, "int64", 8));
  int k = 0;
  for (ValueCoding c : {ValueCoding::Auto, ValueCoding::Entropy, ValueCoding::PackedBrotli, ValueCoding::PackedZstd,
                        ValueCoding::Context}) {
    const std::string bytes = encode_artifact(a, {c});
    pgolf::write_file_atomic(dir + "/seed" + std::to_string(k++), bytes);
    pgolf::write_file_atomic(dir + "/seed" + std::to_string(k++), reseal_artifact(bytes));  // plain JSON
  }
  pgolf::write_file_atomic(dir + "/seed" + std::to_string(k++), encode_artifact(Artifact{}));
  Artifact one;
  one.tensors.push_back(quantized("w", 2, 3, 4));
  pgolf::write_file_atomic(dir + "/seed" + std::to_string(k++), reseal_artifact(encode_artifact(one)));
  std::fprintf(stderr, "fuzz_artifact: wrote %d seeds to %s\n", k, dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("PGOLF_FUZZ_WRITE_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  decode(in);
  if (is_artifact(in)) decode(reseal_artifact(in));
  return 0;
}
