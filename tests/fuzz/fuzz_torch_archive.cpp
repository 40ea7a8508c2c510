// libFuzzer target: the torch.save reader (quant/torch_archive.h) on hostile
// bytes. The first input byte picks the entry point, the rest is its input:
//   0: parse_pickle (the interpreter alone: most of the attack surface)
//   1: TorchArchive::from_bytes (zip + pickle + storages), then every tensor read
//   2: zlib_inflate + from_bytes (final_model.int8.ptz)
//   3: brotli + BSHF unshuffle + from_bytes (final_model.int6.ptz)
// A pgolf::Error is the expected outcome; anything else is a bug.
//
// PGOLF_FUZZ_WRITE_SEEDS=DIR writes a seed corpus (a small state dict in each
// wrapping) into DIR and exits.
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/atomic_file.h"
#include "data/error.h"
#include "quant/codec.h"
#include "quant/torch_archive.h"

namespace {

using namespace pgolf::quant;

constexpr uint64_t kMaxBytes = 16u << 20;

ArchiveLimits fuzz_limits() {
  ArchiveLimits lim;  // every budget small enough for the fuzzer's memory and time limits
  lim.max_file = kMaxBytes;
  lim.max_inflated = kMaxBytes;
  lim.max_tensor_bytes = kMaxBytes;
  lim.max_entries = 1024;
  lim.pickle.max_program = 1u << 20;
  lim.pickle.max_values = 1u << 16;
  lim.pickle.max_items = 1u << 18;
  lim.pickle.max_string_bytes = kMaxBytes;
  lim.pickle.max_tree = 1u << 18;
  return lim;
}

// Reads every tensor reachable from the root (at most a few, to bound time).
void read_tensors(const TorchArchive& a, const PickleValue& v, int depth, int* budget) {
  if (depth > 64 || *budget <= 0) return;
  --*budget;
  if (v.is(PickleValue::Kind::Tensor)) {
    a.tensor_bytes(v.tensor);
    a.contiguous_bytes(v.tensor);
    return;
  }
  for (const PickleValue* item : v.items) read_tensors(a, *item, depth + 1, budget);
  for (const auto& [k, val] : v.entries) {
    read_tensors(a, *k, depth + 1, budget);
    read_tensors(a, *val, depth + 1, budget);
  }
}

void open_and_read(std::string bytes) {
  const TorchArchive a = TorchArchive::from_bytes(std::move(bytes), "fuzz", fuzz_limits());
  int budget = 256;
  read_tensors(a, a.root(), 0, &budget);
}

// ---- seeds: a pickle, a stored zip around it, and the two .ptz wrappings ----------

struct Bytes {
  std::string b;
  Bytes& op(char c) { b += c; return *this; }
  Bytes& raw(const std::string& s) { b += s; return *this; }
  Bytes& le(uint64_t v, int n) {
    for (int k = 0; k < n; ++k) b += static_cast<char>((v >> (8 * k)) & 0xFF);
    return *this;
  }
  Bytes& str(const std::string& s) { return op('X').le(s.size(), 4).raw(s); }    // BINUNICODE
  Bytes& small_int(int v) { return op('K').le(static_cast<uint64_t>(v), 1); }     // BININT1
  Bytes& global(const std::string& m, const std::string& n) { return op('c').raw(m + "\n" + n + "\n"); }
  Bytes& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  Bytes& tensor(const std::string& storage_type, const std::string& key, int numel, std::vector<int> sizes,
                std::vector<int> strides) {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_type).str(key).str("cpu").small_int(numel).op('t').op('Q');
    small_int(0).op('(');
    for (int s : sizes) small_int(s);
    op('t').op('(');
    for (int s : strides) small_int(s);
    op('t').op('\x89');  // NEWFALSE: requires_grad
    return ordered_dict().op('t').op('R');
  }
};

std::string state_dict_pickle() {
  Bytes p;
  p.op('\x80').op('\x02');  // PROTO 2
  p.ordered_dict().op('q').op('\0').op('(');
  p.str("w").tensor("FloatStorage", "0", 6, {2, 3}, {3, 1});
  p.str("wt").tensor("FloatStorage", "0", 6, {3, 2}, {1, 3});
  p.str("h").tensor("HalfStorage", "1", 4, {4}, {1});
  p.str("meta").op('}').op('(').str("scheme").str("per_row").str("axis").small_int(0);
  p.str("f").op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8));  // BINFLOAT (big-endian) 1.5
  p.str("n").op('N').op('u');
  p.op('u').op('.');
  return p.b;
}

uint32_t crc_of(const std::string& s) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(s.data()),
                                     static_cast<uInt>(s.size())));
}

std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& files) {
  Bytes out, cd;
  for (const auto& [name, data] : files) {
    const uint64_t offset = out.b.size();
    const uint32_t crc = crc_of(data);
    out.le(0x04034b50, 4).le(20, 2).le(0, 2).le(0, 2).le(0, 4).le(crc, 4).le(data.size(), 4).le(data.size(), 4);
    out.le(name.size(), 2).le(0, 2).raw(name).raw(data);
    cd.le(0x02014b50, 4).le(20, 2).le(20, 2).le(0, 2).le(0, 2).le(0, 4).le(crc, 4).le(data.size(), 4);
    cd.le(data.size(), 4).le(name.size(), 2).le(0, 2).le(0, 2).le(0, 2).le(0, 2).le(0, 4).le(offset, 4).raw(name);
  }
  const uint64_t cd_at = out.b.size();
  out.raw(cd.b);
  out.le(0x06054b50, 4).le(0, 2).le(0, 2).le(files.size(), 2).le(files.size(), 2).le(cd.b.size(), 4).le(cd_at, 4).le(0, 2);
  return out.b;
}

std::string zlib_of(const std::string& in) {
  uLongf n = compressBound(static_cast<uLong>(in.size()));
  std::string out(n, '\0');
  compress2(reinterpret_cast<Bytef*>(&out[0]), &n, reinterpret_cast<const Bytef*>(in.data()),
            static_cast<uLong>(in.size()), 9);
  out.resize(n);
  return out;
}

void write_seeds(const std::string& dir) {
  const std::string pkl = state_dict_pickle();
  std::string floats, halves;
  for (int i = 0; i < 6; ++i) floats += std::string("\x00\x00\x80\x3f", 4);
  for (int i = 0; i < 4; ++i) halves += std::string("\x00\x3c", 2);
  const std::string zip = stored_zip({{"archive/data.pkl", pkl},
                                      {"archive/byteorder", "little"},
                                      {"archive/data/0", floats},
                                      {"archive/data/1", halves},
                                      {"archive/version", "3\n"}});
  // The seeds must be accepted, or the corpus starts in the error paths.
  open_and_read(zip);
  const std::string seeds[] = {std::string(1, '\0') + pkl, std::string(1, '\1') + zip,
                               std::string(1, '\2') + zlib_of(zip),
                               std::string(1, '\3') + compress(byte_shuffle(zip, 2), Codec::Brotli)};
  int k = 0;
  for (const std::string& s : seeds) pgolf::write_file_atomic(dir + "/seed" + std::to_string(k++), s);
  std::fprintf(stderr, "fuzz_torch_archive: wrote %d seeds to %s\n", k, dir.c_str());
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
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 4) {
      case 0: parse_pickle(body, "fuzz", fuzz_limits().pickle); break;
      case 1: open_and_read(body); break;
      case 2: open_and_read(zlib_inflate(body, kMaxBytes, "fuzz")); break;
      case 3: {
        std::string raw = decompress(body, Codec::Brotli, kMaxBytes + 5, "fuzz");
        if (is_byte_shuffled(raw)) raw = byte_unshuffle(raw, "fuzz");
        open_and_read(std::move(raw));
        break;
      }
    }
  } catch (const pgolf::Error&) {
  }
  return 0;
}
