#include "quant/codec.h"

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>

#include "data/error.h"

namespace pgolf::quant {
namespace {

constexpr char kMagic[4] = {'B', 'S', 'H', 'F'};
constexpr size_t kHeader = 5;  // magic + stride byte

constexpr int kBrotliQuality = 11;
constexpr int kBrotliWindow = BROTLI_MAX_WINDOW_BITS;  // 24
constexpr int kZstdLevel = 22;
// zstd's window-log bounds on 64-bit hosts (ZSTD_WINDOWLOG_MIN / _MAX_64;
// those macros sit behind ZSTD_STATIC_LINKING_ONLY).
constexpr int kZstdMinWindowLog = 10;
constexpr int kZstdMaxWindowLog = 31;

// ---- output buffer -------------------------------------------------------------

// A decoder's output: grows by doubling up to a hard limit, with exact
// allocations (std::string::reserve may round up to twice the old capacity,
// which would overshoot the limit).
class Sink {
 public:
  Sink(size_t limit, size_t first) : limit_(limit) { grow_to(std::min(limit, first)); }
  char* data() { return &buf_[0]; }
  size_t size() const { return buf_.size(); }  // bytes allocated
  char* free_ptr() { return data() + used_; }
  size_t free_bytes() const { return buf_.size() - used_; }
  size_t used() const { return used_; }
  void advance(size_t n) { used_ += n; }
  void set_used(size_t n) { used_ = n; }
  // False when the buffer already has `limit` bytes.
  bool grow() {
    if (buf_.size() >= limit_) return false;
    grow_to(buf_.size() > limit_ / 2 ? limit_ : std::max<size_t>(buf_.size() * 2, 1));
    return true;
  }
  std::string take() {
    buf_.resize(used_);
    // Give back a mostly unused buffer (the first allocation is at least 64 KiB).
    if (buf_.capacity() - used_ > used_ / 4 + 4096) buf_.shrink_to_fit();
    return std::move(buf_);
  }

 private:
  void grow_to(size_t n) {
    std::string bigger;
    bigger.reserve(n);
    bigger.assign(buf_, 0, used_);
    bigger.resize(n);
    buf_.swap(bigger);
  }
  std::string buf_;
  size_t used_ = 0;
  size_t limit_;
};

// The buffer limit for a cap: one byte of slack, so that "exactly max_size"
// and "more than max_size" are told apart without asking the decoder.
size_t sink_limit(uint64_t max_size) {
  const uint64_t top = std::numeric_limits<size_t>::max() / 2;
  return static_cast<size_t>(std::min<uint64_t>(max_size, top) + 1);
}

// First allocation: enough for typical ratios, small enough that a tiny
// stream claiming a huge size costs little.
size_t first_alloc(size_t in_size) {
  const size_t floor = 64 << 10;
  return in_size > (std::numeric_limits<size_t>::max() / 8) ? in_size : std::max(floor, in_size * 4);
}

[[noreturn]] void too_big(const std::string& what, uint64_t max_size) {
  fail(what, "decompresses to more than " + std::to_string(max_size) + " bytes");
}

// ---- brotli ----------------------------------------------------------------------

std::string brotli_compress(const std::string& in) {
  size_t cap = BrotliEncoderMaxCompressedSize(in.size());
  if (cap == 0) fail("brotli", "input of " + std::to_string(in.size()) + " bytes is too large");
  std::string out(cap, '\0');
  if (!BrotliEncoderCompress(kBrotliQuality, kBrotliWindow, BROTLI_MODE_GENERIC, in.size(),
                             reinterpret_cast<const uint8_t*>(in.data()), &cap,
                             reinterpret_cast<uint8_t*>(&out[0]))) {
    fail("brotli", "compression failed");
  }
  out.resize(cap);
  return out;
}

struct BrotliDecoderFree {
  void operator()(BrotliDecoderState* s) const { BrotliDecoderDestroyInstance(s); }
};

std::string brotli_decompress(const std::string& in, uint64_t max_size, const std::string& what) {
  std::unique_ptr<BrotliDecoderState, BrotliDecoderFree> st(BrotliDecoderCreateInstance(nullptr, nullptr, nullptr));
  if (!st) fail(what, "out of memory for the brotli decoder");
  Sink sink(sink_limit(max_size), first_alloc(in.size()));
  const uint8_t* next_in = reinterpret_cast<const uint8_t*>(in.data());
  size_t avail_in = in.size();
  for (;;) {
    size_t avail_out = sink.free_bytes();
    uint8_t* next_out = reinterpret_cast<uint8_t*>(sink.free_ptr());
    const size_t before_in = avail_in, before_out = avail_out;
    BrotliDecoderResult r =
        BrotliDecoderDecompressStream(st.get(), &avail_in, &next_in, &avail_out, &next_out, nullptr);
    sink.advance(before_out - avail_out);
    if (sink.used() > max_size) too_big(what, max_size);
    switch (r) {
      case BROTLI_DECODER_RESULT_SUCCESS:
        // Brotli itself ignores what follows the stream; we do not.
        if (avail_in != 0) fail(what, std::to_string(avail_in) + " bytes after the end of the brotli stream");
        return sink.take();
      case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
        fail(what, "brotli stream is truncated");
      case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
        if (avail_out == 0) {
          if (!sink.grow()) too_big(what, max_size);
        } else if (avail_in == before_in && avail_out == before_out) {
          fail(what, "brotli decoder made no progress");  // defensive: never seen
        }
        break;
      default:
        fail(what, std::string("corrupt brotli stream (") +
                       BrotliDecoderErrorString(BrotliDecoderGetErrorCode(st.get())) + ")");
    }
  }
}

// ---- zstd ------------------------------------------------------------------------

struct ZstdCFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct ZstdDFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

void zstd_check(size_t rc, const std::string& what, const char* doing) {
  if (ZSTD_isError(rc)) fail(what, std::string(doing) + ": " + ZSTD_getErrorName(rc));
}

std::string zstd_compress(const std::string& in) {
  std::unique_ptr<ZSTD_CCtx, ZstdCFree> cc(ZSTD_createCCtx());
  if (!cc) fail("zstd", "out of memory for the compressor");
  zstd_check(ZSTD_CCtx_setParameter(cc.get(), ZSTD_c_compressionLevel, kZstdLevel), "zstd", "level");
  // 4 bytes buy corruption detection, which raw brotli lacks.
  zstd_check(ZSTD_CCtx_setParameter(cc.get(), ZSTD_c_checksumFlag, 1), "zstd", "checksum");
  zstd_check(ZSTD_CCtx_setParameter(cc.get(), ZSTD_c_contentSizeFlag, 1), "zstd", "content size");
  std::string out(ZSTD_compressBound(in.size()), '\0');
  size_t n = ZSTD_compress2(cc.get(), &out[0], out.size(), in.data(), in.size());
  zstd_check(n, "zstd", "compression failed");
  out.resize(n);
  return out;
}

// Smallest window log whose window holds max_size bytes: zstd sizes a
// frame's window to its content, so a larger window is a hostile header.
int zstd_window_log_for(uint64_t max_size) {
  int lg = kZstdMinWindowLog;
  while (lg < kZstdMaxWindowLog && (uint64_t{1} << lg) < max_size) ++lg;
  return lg;
}

std::string zstd_decompress(const std::string& in, uint64_t max_size, const std::string& what) {
  // Reject a declared size over the cap before allocating anything for it.
  unsigned long long declared = ZSTD_getFrameContentSize(in.data(), in.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) fail(what, "not a zstd frame (or a truncated one)");
  if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared > max_size) too_big(what, max_size);

  std::unique_ptr<ZSTD_DCtx, ZstdDFree> dc(ZSTD_createDCtx());
  if (!dc) fail(what, "out of memory for the zstd decoder");
  zstd_check(ZSTD_DCtx_setParameter(dc.get(), ZSTD_d_windowLogMax, zstd_window_log_for(max_size)), what,
             "zstd window");
  size_t first = declared == ZSTD_CONTENTSIZE_UNKNOWN ? first_alloc(in.size()) : static_cast<size_t>(declared) + 1;
  Sink sink(sink_limit(max_size), first);
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  for (;;) {
    ZSTD_outBuffer ob{sink.data(), sink.size(), sink.used()};
    size_t rc = ZSTD_decompressStream(dc.get(), &ob, &ib);
    sink.set_used(ob.pos);
    if (ZSTD_isError(rc)) fail(what, std::string("corrupt zstd stream (") + ZSTD_getErrorName(rc) + ")");
    if (sink.used() > max_size) too_big(what, max_size);
    if (rc == 0) {  // the frame is complete and flushed
      if (ib.pos != ib.size) fail(what, std::to_string(ib.size - ib.pos) + " bytes after the end of the zstd frame");
      return sink.take();
    }
    if (ob.pos == ob.size) {
      if (!sink.grow()) too_big(what, max_size);
    } else if (ib.pos == ib.size) {
      fail(what, "zstd stream is truncated");  // output space left, input gone, frame unfinished
    }
  }
}

}  // namespace

// ---- byte shuffle ------------------------------------------------------------------

std::string byte_shuffle(const std::string& in, int stride) {
  if (stride < 1 || stride > 255) fail("byte shuffle", "stride " + std::to_string(stride) + " is not in 1..255");
  const size_t n = in.size(), s = static_cast<size_t>(stride);
  std::string out(kHeader + n, '\0');
  std::memcpy(&out[0], kMagic, 4);
  out[4] = static_cast<char>(stride);
  size_t o = kHeader;
  for (size_t p = 0; p < s; ++p)
    for (size_t i = p; i < n; i += s) out[o++] = in[i];
  return out;
}

bool is_byte_shuffled(const std::string& in) {
  return in.size() >= kHeader && std::memcmp(in.data(), kMagic, 4) == 0;
}

std::string byte_unshuffle(const std::string& in, const std::string& what) {
  if (!is_byte_shuffled(in)) fail(what, "not byte-shuffled data (no BSHF header)");
  const size_t s = static_cast<unsigned char>(in[4]);
  if (s == 0) fail(what, "byte shuffle stride 0");
  const size_t n = in.size() - kHeader;
  std::string out(n, '\0');
  size_t o = kHeader;
  for (size_t p = 0; p < s; ++p)
    for (size_t i = p; i < n; i += s) out[i] = in[o++];
  return out;
}

// ---- codecs -----------------------------------------------------------------------

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::None: return "none";
    case Codec::Brotli: return "brotli";
    case Codec::Zstd: return "zstd";
  }
  return "?";
}

Codec parse_codec(const std::string& name) {
  for (Codec c : {Codec::None, Codec::Brotli, Codec::Zstd})
    if (name == codec_name(c)) return c;
  fail(name, "unknown codec (expected none, brotli or zstd)");
}

std::string compress(const std::string& in, Codec c) {
  switch (c) {
    case Codec::None: return in;
    case Codec::Brotli: return brotli_compress(in);
    case Codec::Zstd: return zstd_compress(in);
  }
  fail("compress", "unknown codec " + std::to_string(static_cast<int>(c)));
}

std::string decompress(const std::string& in, Codec c, uint64_t max_size, const std::string& what) {
  switch (c) {
    case Codec::None:
      if (in.size() > max_size) too_big(what, max_size);
      return in;
    case Codec::Brotli: return brotli_decompress(in, max_size, what);
    case Codec::Zstd: return zstd_decompress(in, max_size, what);
  }
  fail(what, "unknown codec " + std::to_string(static_cast<int>(c)));
}

// ---- auto mode ----------------------------------------------------------------------

Encoded encode(const std::string& in, Codec c, int shuffle_stride) {
  Encoded e;
  e.codec = c;
  e.shuffle_stride = shuffle_stride;
  e.raw_size = in.size();
  e.bytes = compress(shuffle_stride > 0 ? byte_shuffle(in, shuffle_stride) : in, c);
  return e;
}

Encoded encode_best(const std::string& in) {
  const std::pair<Codec, int> order[] = {
      {Codec::Brotli, 2}, {Codec::Brotli, 0}, {Codec::Zstd, 2}, {Codec::Zstd, 0}, {Codec::None, 0}};
  Encoded best;
  bool have = false;
  for (const auto& [codec, stride] : order) {
    Encoded e = encode(in, codec, stride);
    if (!have || e.bytes.size() < best.bytes.size()) best = std::move(e);
    have = true;
  }
  return best;
}

std::string decode(Codec codec, int shuffle_stride, uint64_t raw_size, const std::string& bytes,
                   const std::string& what) {
  if (shuffle_stride < 0 || shuffle_stride > 255)
    fail(what, "byte shuffle stride " + std::to_string(shuffle_stride) + " is not in 0..255");
  if (shuffle_stride == 0) {
    std::string out = decompress(bytes, codec, raw_size, what);
    if (out.size() != raw_size)
      fail(what, "decompresses to " + std::to_string(out.size()) + " bytes, expected " + std::to_string(raw_size));
    return out;
  }
  const uint64_t cap = raw_size > std::numeric_limits<uint64_t>::max() - kHeader ? raw_size : raw_size + kHeader;
  std::string shuffled = decompress(bytes, codec, cap, what);
  std::string out = byte_unshuffle(shuffled, what);  // checks the magic
  const int stored = static_cast<unsigned char>(shuffled[4]);
  if (stored != shuffle_stride)
    fail(what, "byte shuffle stride " + std::to_string(stored) + ", expected " + std::to_string(shuffle_stride));
  if (out.size() != raw_size)
    fail(what, "decompresses to " + std::to_string(out.size()) + " bytes, expected " + std::to_string(raw_size));
  return out;
}

Codec pick_smallest(const std::string& in, std::string* out) {
  Codec best = Codec::None;
  std::string best_bytes = in;
  for (Codec c : {Codec::Zstd, Codec::Brotli}) {  // ties: brotli, then zstd, then none
    std::string b = compress(in, c);
    if (b.size() <= best_bytes.size()) {
      best = c;
      best_bytes = std::move(b);
    }
  }
  if (out) *out = std::move(best_bytes);
  return best;
}

}  // namespace pgolf::quant
