// The compression layer: the reference's BSHF byte shuffle, brotli and zstd
// round trips, and that hostile streams end in pgolf::Error, never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "data/error.h"
#include "quant/codec.h"

namespace pgolf::quant {
namespace {

const Codec kAllCodecs[] = {Codec::None, Codec::Brotli, Codec::Zstd};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

// Little-endian fp16 bit patterns of N(0, 0.02) samples: the shape of a
// passthrough tensor, where the shuffle should pay off.
std::string fp16_like(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::string s;
  for (size_t i = 0; i < count; ++i) {
    float f = dist(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    // Truncating float -> half (exact rounding does not matter here).
    uint32_t sign = (bits >> 16) & 0x8000, exp = (bits >> 23) & 0xFF, man = (bits >> 13) & 0x3FF;
    int e = static_cast<int>(exp) - 127 + 15;
    uint16_t h = e <= 0 ? static_cast<uint16_t>(sign) : static_cast<uint16_t>(sign | (e << 10) | man);
    s.push_back(static_cast<char>(h & 0xFF));
    s.push_back(static_cast<char>(h >> 8));
  }
  return s;
}

// int6 values stored one per int8, as the reference's GPTQ output is.
std::string int6_like(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 8.0f);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(std::max(-31, std::min(31, static_cast<int>(std::lround(dist(rng))))));
  return s;
}

std::string text_like(size_t n) {
  const std::string words = "the quick brown fox jumps over the lazy dog; ";
  std::string s;
  for (size_t i = 0; s.size() < n; ++i) s += words.substr(i % 7, words.size() - i % 7);
  s.resize(n);
  return s;
}

// Named inputs, including empty and odd lengths.
std::vector<std::pair<std::string, std::string>> datasets() {
  return {{"empty", ""},
          {"one", "x"},
          {"seven", "abcdefg"},
          {"random1001", random_bytes(1001, 1)},
          {"random4096", random_bytes(4096, 2)},
          {"fp16_x4999", fp16_like(4999, 3)},
          {"fp16_odd", fp16_like(3000, 4) + "z"},
          {"int6_20011", int6_like(20011, 5)},
          {"text_10007", text_like(10007)},
          {"zeros_65537", std::string(65537, '\0')}};
}

// Runs fn and reports whether it threw pgolf::Error whose message starts
// with "what: " (one line). Any other exception fails the test.
template <class Fn>
bool rejects(Fn&& fn, const std::string& what) {
  try {
    fn();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(what + ": ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return true;
  }
  return false;
}

// ---- byte shuffle ------------------------------------------------------------

TEST(Codec, ShuffleLayoutByHand) {
  // Offsets 0 mod 3 (a d g), then 1 mod 3 (b e), then 2 mod 3 (c f).
  EXPECT_EQ(byte_shuffle("abcdefg", 3), std::string("BSHF\x03" "adgbecf", 12));
  // The reference's stride 2: even offsets, then odd ones; odd length fine.
  EXPECT_EQ(byte_shuffle("012345678", 2), std::string("BSHF\x02" "02468" "1357", 14));
  EXPECT_EQ(byte_shuffle("0123", 4), std::string("BSHF\x04" "0123", 9));
  EXPECT_EQ(byte_shuffle("abc", 1), std::string("BSHF\x01" "abc", 8));
  // Shorter than the stride: still a header (the reference would skip it).
  EXPECT_EQ(byte_shuffle("ab", 4), std::string("BSHF\x04" "ab", 7));
  EXPECT_EQ(byte_shuffle("", 2), std::string("BSHF\x02", 5));
  EXPECT_EQ(byte_unshuffle(std::string("BSHF\x03" "adgbecf", 12), "t"), "abcdefg");
  EXPECT_EQ(byte_unshuffle(std::string("BSHF\x02" "02468" "1357", 14), "t"), "012345678");
}

TEST(Codec, ShuffleRoundTrips) {
  for (int stride : {1, 2, 3, 4, 7, 255})
    for (size_t n = 0; n < 40; ++n) {
      std::string in = random_bytes(n, static_cast<uint32_t>(n * 31 + stride));
      std::string sh = byte_shuffle(in, stride);
      ASSERT_EQ(sh.size(), n + 5);
      ASSERT_EQ(byte_unshuffle(sh, "t"), in) << "stride " << stride << " n " << n;
    }
  std::string big = fp16_like(10001, 9);
  for (int stride = 1; stride <= 4; ++stride) EXPECT_EQ(byte_unshuffle(byte_shuffle(big, stride), "t"), big);
}

TEST(Codec, UnshuffleRejectsBadHeaders) {
  for (const std::string& bad : {std::string(), std::string("BSH"), std::string("BSHF"), std::string("BSHX\x02xy", 7),
                                 std::string("PK\x03\x04\x02xy", 7), std::string("BSHF\x00xy", 7)}) {
    EXPECT_TRUE(rejects([&] { byte_unshuffle(bad, "model.ptz"); }, "model.ptz")) << bad.size();
  }
}

TEST(Codec, RecognisesShuffledData) {
  EXPECT_TRUE(is_byte_shuffled(byte_shuffle("", 2)));
  EXPECT_TRUE(is_byte_shuffled(byte_shuffle("abc", 2)));
  EXPECT_FALSE(is_byte_shuffled("BSHF"));
  EXPECT_FALSE(is_byte_shuffled(std::string("PK\x03\x04\x00", 5)));  // a torch.save zip
}

TEST(Codec, ShuffleRejectsBadStride) {
  EXPECT_TRUE(rejects([] { byte_shuffle("abc", 0); }, "byte shuffle"));
  EXPECT_TRUE(rejects([] { byte_shuffle("abc", 256); }, "byte shuffle"));
  EXPECT_TRUE(rejects([] { byte_shuffle("abc", -1); }, "byte shuffle"));
}

// ---- names -------------------------------------------------------------------------

TEST(Codec, NamesRoundTrip) {
  for (Codec c : kAllCodecs) EXPECT_EQ(parse_codec(codec_name(c)), c);
  EXPECT_STREQ(codec_name(Codec::Brotli), "brotli");
  EXPECT_TRUE(rejects([] { parse_codec("lzma"); }, "lzma"));
  EXPECT_TRUE(rejects([] { parse_codec(""); }, ""));
  EXPECT_TRUE(rejects([] { parse_codec("auto"); }, "auto"));  // a mode, not a codec
}

// ---- round trips -------------------------------------------------------------------

TEST(Codec, RoundTripEveryCodecAndStride) {
  for (const auto& [name, in] : datasets())
    for (Codec c : kAllCodecs) {
      std::string z = compress(in, c);
      EXPECT_EQ(decompress(z, c, in.size(), name), in) << name << " " << codec_name(c);
      EXPECT_EQ(decompress(z, c, in.size() + 1000, name), in) << name << " " << codec_name(c);
      for (int stride = 0; stride <= 4; ++stride) {
        Encoded e = encode(in, c, stride);
        EXPECT_EQ(e.raw_size, in.size());
        EXPECT_EQ(decode(e, name), in) << name << " " << codec_name(c) << " stride " << stride;
      }
    }
}

TEST(Codec, ShuffleHelpsFp16) {
  // Not a contract, a sanity check that the shuffle is applied the intended way.
  std::string in = fp16_like(50000, 11);
  EXPECT_LT(encode(in, Codec::Zstd, 2).bytes.size(), encode(in, Codec::Zstd, 0).bytes.size());
}

TEST(Codec, DecodeChecksStrideAndSize) {
  std::string in = text_like(1234);
  Encoded e = encode(in, Codec::Zstd, 2);
  EXPECT_TRUE(rejects([&] { decode(e.codec, 3, e.raw_size, e.bytes, "w"); }, "w"));  // header says 2
  EXPECT_TRUE(rejects([&] { decode(e.codec, 0, e.raw_size, e.bytes, "w"); }, "w"));  // 5 bytes too many
  EXPECT_TRUE(rejects([&] { decode(e.codec, 2, e.raw_size - 1, e.bytes, "w"); }, "w"));
  EXPECT_TRUE(rejects([&] { decode(e.codec, 2, e.raw_size + 1, e.bytes, "w"); }, "w"));
  EXPECT_TRUE(rejects([&] { decode(e.codec, 256, e.raw_size, e.bytes, "w"); }, "w"));
  Encoded plain = encode(in, Codec::Brotli, 0);
  EXPECT_TRUE(rejects([&] { decode(plain.codec, 2, plain.raw_size, plain.bytes, "w"); }, "w"));  // no BSHF
}

// ---- hostile input ------------------------------------------------------------------

TEST(Codec, SmallerCapIsRejected) {
  std::string in = int6_like(3001, 12);
  for (Codec c : kAllCodecs) {
    std::string z = compress(in, c);
    EXPECT_TRUE(rejects([&] { decompress(z, c, in.size() - 1, "cap"); }, "cap")) << codec_name(c);
    EXPECT_TRUE(rejects([&] { decompress(z, c, 0, "cap"); }, "cap")) << codec_name(c);
  }
}

TEST(Codec, DecompressionBombIsStoppedAtTheCap) {
  std::string zeros(8 << 20, '\0');
  for (Codec c : {Codec::Brotli, Codec::Zstd}) {
    std::string z = compress(zeros, c);
    EXPECT_LT(z.size(), 4096u);
    EXPECT_TRUE(rejects([&] { decompress(z, c, 1 << 20, "bomb"); }, "bomb")) << codec_name(c);
    EXPECT_EQ(decompress(z, c, zeros.size(), "bomb").size(), zeros.size());
  }
}

TEST(Codec, TrailingGarbageIsRejected) {
  std::string in = text_like(500);
  for (Codec c : {Codec::Brotli, Codec::Zstd}) {
    std::string z = compress(in, c);
    EXPECT_TRUE(rejects([&] { decompress(z + "x", c, 10000, "tail"); }, "tail")) << codec_name(c);
    EXPECT_TRUE(rejects([&] { decompress(z + z, c, 10000, "tail"); }, "tail")) << codec_name(c);
  }
}

TEST(Codec, EveryTruncationIsRejected) {
  std::string in = fp16_like(150, 13) + text_like(101);
  for (Codec c : {Codec::Brotli, Codec::Zstd}) {
    std::string z = compress(in, c);
    for (size_t len = 0; len < z.size(); ++len) {
      EXPECT_TRUE(rejects([&] { decompress(z.substr(0, len), c, in.size(), "trunc"); }, "trunc"))
          << codec_name(c) << " prefix " << len << " of " << z.size();
    }
  }
}

// Flips every bit of a small stream. Zstd carries a checksum, so a flip
// must either be rejected or (rarely) still give the original. Raw brotli has
// no checksum: a flip in a literal can decode to other bytes of the same
// shape, which only a container checksum can catch; those are counted, and
// the cap must still hold.
TEST(Codec, EveryBitFlipIsRejectedOrHarmless) {
  std::string in = int6_like(200, 14) + text_like(77);
  for (Codec c : {Codec::Brotli, Codec::Zstd}) {
    std::string z = compress(in, c);
    int rejected = 0, same = 0, silent = 0;
    for (size_t bit = 0; bit < z.size() * 8; ++bit) {
      std::string bad = z;
      bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
      std::string out;
      if (rejects([&] { out = decompress(bad, c, in.size(), "flip"); }, "flip")) {
        ++rejected;
      } else if (out == in) {
        ++same;
      } else {
        ++silent;
        EXPECT_LE(out.size(), in.size());
      }
    }
    if (c == Codec::Zstd) {
      EXPECT_EQ(silent, 0);
    }
    EXPECT_GT(rejected, 0);
    std::printf("[          ] %s: %zu bits flipped: %d rejected, %d still original, %d decoded to other bytes\n",
                codec_name(c), z.size() * 8, rejected, same, silent);
  }
}

TEST(Codec, RandomJunkNeverCrashes) {
  std::mt19937 rng(15);
  std::string valid_z = compress(text_like(300), Codec::Zstd);
  for (int i = 0; i < 3000; ++i) {
    std::string junk = random_bytes(rng() % 80, rng());
    // Every third one starts like a real zstd frame, to get past the magic.
    if (i % 3 == 0) junk = valid_z.substr(0, 4 + rng() % 8) + junk;
    for (Codec c : {Codec::Brotli, Codec::Zstd}) {
      std::string out;
      if (!rejects([&] { out = decompress(junk, c, 4096, "junk"); }, "junk")) {
        EXPECT_LE(out.size(), 4096u);
      }
    }
    if (!junk.empty()) {
      std::string out;
      if (!rejects([&] { out = decode(Codec::Brotli, 2, 100, junk, "junk"); }, "junk")) {
        EXPECT_EQ(out.size(), 100u);
      }
    }
  }
}

// ---- auto mode ------------------------------------------------------------------------

TEST(Codec, EncodeBestIsNeverBiggerThanAnySingleCodec) {
  for (const auto& [name, in] : datasets()) {
    Encoded best = encode_best(in);
    for (Codec c : kAllCodecs)
      for (int stride : {0, 2}) {
        EXPECT_LE(best.bytes.size(), encode(in, c, stride).bytes.size()) << name << " " << codec_name(c);
      }
    EXPECT_EQ(decode(best, name), in) << name;

    std::string picked;
    Codec c = pick_smallest(in, &picked);
    for (Codec other : kAllCodecs) EXPECT_LE(picked.size(), compress(in, other).size()) << name;
    EXPECT_EQ(decompress(picked, c, in.size(), name), in) << name;
  }
  // Incompressible bytes are stored as they are.
  EXPECT_EQ(encode_best(random_bytes(4096, 16)).codec, Codec::None);
}

}  // namespace
}  // namespace pgolf::quant
