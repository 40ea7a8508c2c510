// The compression layer of pgolf's artifacts: the reference's byte shuffle
// ("BSHF"), brotli and zstd, and an `auto` mode that keeps whichever of them
// gives the fewest bytes.
//
// The reference artifact (final_model.int6.ptz of 2026-04-10_VarLenAttn) is
//   brotli(quality 11)( byte_shuffle(torch.save bytes, 2) )
// with nothing around it, so reading one is
//   byte_unshuffle(decompress(file, Codec::Brotli, cap, path), path).
//
// Every decoder here treats its input as hostile: bad bytes end in one
// pgolf::Error naming `what`, never a crash, and the output never grows past
// the size the caller allows.
#pragma once
#include <cstdint>
#include <string>

namespace pgolf::quant {

// ---- byte shuffle ------------------------------------------------------------
//
// Layout (the reference's): "BSHF" (4 bytes), the stride as one byte, then the
// input's bytes at offsets 0 mod stride, then those at 1 mod stride, ... up to
// stride-1 mod stride. With n bytes, group p holds n/stride + (p < n%stride)
// bytes, so a length that the stride does not divide needs no padding.
//
// Grouping the low and high bytes of 16-bit values apart lets the compressor
// see the (very regular) high bytes of fp16 scales and int8-as-int6 weights
// on their own.

// Stride 1..255. Unlike the reference, which returns its input unchanged
// (without a header) when stride <= 1 or the input is shorter than the
// stride, this always writes the header; the reference's reader accepts both.
std::string byte_shuffle(const std::string& in, int stride);

// Inverse of byte_shuffle. Requires the magic and a stride of 1..255 (the
// reference also accepts 0, which it never writes); `what` names the data in
// errors.
std::string byte_unshuffle(const std::string& in, const std::string& what);

// True when `in` starts with the BSHF magic and a stride byte. The reference's
// reader unshuffles exactly such data and passes anything else through;
// importers that want its leniency test this first.
bool is_byte_shuffled(const std::string& in);

// ---- compressors ---------------------------------------------------------------

enum class Codec { None, Brotli, Zstd };

// "none", "brotli", "zstd".
const char* codec_name(Codec c);
// Inverse of codec_name; anything else is a pgolf::Error naming the string.
// (`auto` is not a codec: callers handle it with encode_best.)
Codec parse_codec(const std::string& name);

// Brotli: quality 11, window 2^24 (the largest standard one), generic mode.
//   (The reference calls Python's brotli.compress(data, quality=11), i.e.
//   window 2^22; any window <= 2^24 decodes with the same decoder.)
// Zstd: level 22, a content checksum, long-distance matching off (a level-22
//   window already spans any artifact under the 16 MB cap).
// None: a copy.
std::string compress(const std::string& in, Codec c);

// Decodes one complete stream of codec `c`. `max_size` is an upper bound on
// the decoded size: output that would exceed it is an error, and the output
// buffer never grows past max_size + 1 bytes (it starts small and doubles,
// so a small stream claiming a large size costs nothing). Truncated, corrupt
// or oversized streams, and bytes after the end of the stream, are a
// pgolf::Error naming `what`. Callers that know the exact size compare
// afterwards (decode() below does).
std::string decompress(const std::string& in, Codec c, uint64_t max_size,
                       const std::string& what);

// ---- auto mode -----------------------------------------------------------------

// What a container must record to undo an encoding.
struct Encoded {
  Codec codec = Codec::None;
  int shuffle_stride = 0;  // 0: bytes = compress(raw); k >= 1: compress(byte_shuffle(raw, k))
  uint64_t raw_size = 0;   // size of the original bytes
  std::string bytes;       // the encoded bytes
};

// One specific encoding.
Encoded encode(const std::string& in, Codec c, int shuffle_stride);

// Tries brotli and zstd, each on the raw bytes and on their 2-byte shuffle,
// plus storing them as they are, and keeps the smallest (ties go to the
// earlier of: brotli+shuffle, brotli, zstd+shuffle, zstd, none). Costs two
// brotli quality-11 runs, the slow part.
Encoded encode_best(const std::string& in);

// Inverse of encode: decompresses with cap raw_size (+ the shuffle header),
// unshuffles when shuffle_stride > 0 (the header's stride must match), and
// requires exactly raw_size bytes. `raw_size` usually comes from a file, so
// callers bound it first: it caps the output buffer.
std::string decode(Codec codec, int shuffle_stride, uint64_t raw_size,
                   const std::string& bytes, const std::string& what);
inline std::string decode(const Encoded& e, const std::string& what) {
  return decode(e.codec, e.shuffle_stride, e.raw_size, e.bytes, what);
}

// The best of brotli, zstd and none on the raw bytes only (no shuffle), for
// callers that can record a codec but not a stride. Writes the bytes to *out.
Codec pick_smallest(const std::string& in, std::string* out);

}  // namespace pgolf::quant
