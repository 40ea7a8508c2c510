#include "quant/rans.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "data/error.h"

namespace pgolf::quant {
namespace {

constexpr int kMaxScale = 16;              // frequencies sum to 2^scale, scale in 0..16
constexpr uint64_t kLow = uint64_t{1} << 31;  // the state lives in [kLow, 2^63)
constexpr uint64_t kHigh = uint64_t{1} << 63;

using Freqs = std::array<uint32_t, 256>;

int symbol_of(int8_t v) { return static_cast<int>(static_cast<uint8_t>(v) ^ 0x80); }  // v + 128
int8_t value_of(int s) { return static_cast<int8_t>(static_cast<uint8_t>(s ^ 0x80)); }

int varint_size(uint32_t v) { return v < 0x80 ? 1 : v < 0x4000 ? 2 : 3; }

void put_varint(std::string& out, uint32_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

// Counts scaled to frequencies summing to 2^scale, every present symbol at
// least 1. Rounding leaves the sum off by at most a few hundred; the
// difference goes, one unit at a time, where it costs the fewest bits.
Freqs normalize(const std::array<uint64_t, 256>& counts, uint64_t n, int scale) {
  const uint64_t total = uint64_t{1} << scale;
  Freqs f{};
  int64_t sum = 0;
  for (int s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    const double ideal = static_cast<double>(counts[s]) * static_cast<double>(total) / static_cast<double>(n);
    f[s] = static_cast<uint32_t>(std::max(1.0, std::floor(ideal + 0.5)));
    sum += f[s];
  }
  while (sum != static_cast<int64_t>(total)) {
    const bool up = sum < static_cast<int64_t>(total);
    int best = -1;
    double best_gain = 0;
    for (int s = 0; s < 256; ++s) {
      if (counts[s] == 0 || (!up && f[s] <= 1)) continue;
      // Bits saved by +1 (up) or bits lost by -1 (down).
      const double c = static_cast<double>(counts[s]);
      const double g = up ? c * std::log2((f[s] + 1.0) / f[s]) : -c * std::log2(f[s] / (f[s] - 1.0));
      if (best < 0 || g > best_gain) best = s, best_gain = g;
    }
    f[best] += up ? 1 : -1;  // best >= 0: scale is large enough for every present symbol
    sum += up ? 1 : -1;
  }
  return f;
}

struct Table {
  int scale = 0;
  int lo = 0, hi = -1;  // symbols with a stored frequency
  Freqs freq{};
};

size_t table_bytes(const Table& t) {
  size_t b = 3;
  for (int s = t.lo; s <= t.hi; ++s) b += varint_size(t.freq[s]);
  return b;
}

// The scale whose table plus code is smallest (estimated from the counts).
Table choose_table(const std::array<uint64_t, 256>& counts, uint64_t n) {
  int distinct = 0, lo = 256, hi = -1;
  for (int s = 0; s < 256; ++s)
    if (counts[s]) ++distinct, lo = std::min(lo, s), hi = std::max(hi, s);
  int min_scale = 0;
  while ((1 << min_scale) < distinct) ++min_scale;
  Table best;
  double best_bits = 0;
  for (int scale = min_scale; scale <= kMaxScale; ++scale) {
    Table t;
    t.scale = scale;
    t.lo = lo;
    t.hi = hi;
    t.freq = normalize(counts, n, scale);
    double bits = 8.0 * static_cast<double>(table_bytes(t));
    for (int s = lo; s <= hi; ++s)
      if (counts[s]) bits -= static_cast<double>(counts[s]) * std::log2(std::ldexp(t.freq[s], -scale));
    if (scale == min_scale || bits < best_bits) best = t, best_bits = bits;
  }
  return best;
}

void put_le(std::string& out, uint64_t v, int n) {
  for (int k = 0; k < n; ++k) out += static_cast<char>((v >> (8 * k)) & 0xFF);
}

uint64_t get_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
  return v;
}

}  // namespace

double order0_entropy_bits(const std::vector<int8_t>& values) {
  std::array<uint64_t, 256> counts{};
  for (int8_t v : values) ++counts[symbol_of(v)];
  const double n = static_cast<double>(values.size());
  double bits = 0;
  for (uint64_t c : counts)
    if (c) bits -= static_cast<double>(c) * std::log2(static_cast<double>(c) / n);
  return bits;
}

std::string rans_encode(const std::vector<int8_t>& values) {
  if (values.empty()) return {};
  std::array<uint64_t, 256> counts{};
  for (int8_t v : values) ++counts[symbol_of(v)];
  const Table t = choose_table(counts, values.size());

  std::string out;
  out += static_cast<char>(t.scale);
  out += static_cast<char>(t.lo);
  out += static_cast<char>(t.hi);
  for (int s = t.lo; s <= t.hi; ++s) put_varint(out, t.freq[s]);

  std::array<uint32_t, 256> start{};
  for (int s = 1; s < 256; ++s) start[s] = start[s - 1] + t.freq[s - 1];

  // rANS codes in reverse: the decoder reads the last-written word first.
  std::vector<uint32_t> words;
  words.reserve(values.size() / 8 + 16);
  uint64_t x = kLow;
  for (size_t i = values.size(); i-- > 0;) {
    const int s = symbol_of(values[i]);
    const uint64_t f = t.freq[s];
    // Keep x below the bound from which coding s lands back in [kLow, 2^63).
    const uint64_t x_max = ((kLow >> t.scale) << 32) * f;
    if (x >= x_max) {
      words.push_back(static_cast<uint32_t>(x));
      x >>= 32;
    }
    x = ((x / f) << t.scale) + (x % f) + start[s];
  }
  put_le(out, x, 8);
  const size_t at = out.size();
  out.resize(at + 4 * words.size());
  for (size_t k = 0; k < words.size(); ++k) {
    const uint32_t w = words[words.size() - 1 - k];
    for (int b = 0; b < 4; ++b) out[at + 4 * k + b] = static_cast<char>((w >> (8 * b)) & 0xFF);
  }
  return out;
}

std::vector<int8_t> rans_decode(const std::string& bytes, uint64_t count, const std::string& what) {
  if (count == 0) {
    if (!bytes.empty()) fail(what, "entropy-coded stream of 0 values has " + std::to_string(bytes.size()) + " bytes");
    return {};
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t pos = 0;
  if (n < 3) fail(what, "entropy-coded stream is truncated (no frequency table)");
  const int scale = p[0], lo = p[1], hi = p[2];
  pos = 3;
  if (scale > kMaxScale) fail(what, "entropy table scale " + std::to_string(scale) + " is over " + std::to_string(kMaxScale));
  if (lo > hi) fail(what, "entropy table symbol range " + std::to_string(lo) + ".." + std::to_string(hi) + " is empty");
  const uint32_t total = 1u << scale;
  Freqs freq{};
  uint64_t sum = 0;
  for (int s = lo; s <= hi; ++s) {
    uint32_t v = 0;
    for (int k = 0;; ++k) {
      if (pos >= n) fail(what, "entropy table is truncated");
      if (k == 3) fail(what, "entropy table frequency varint is longer than 3 bytes");
      const uint32_t b = p[pos++];
      if (k > 0 && b == 0) fail(what, "entropy table frequency varint is not minimal");
      v |= (b & 0x7F) << (7 * k);
      if (!(b & 0x80)) break;
    }
    if (v > total) fail(what, "entropy table frequency " + std::to_string(v) + " exceeds the total " + std::to_string(total));
    freq[s] = v;
    sum += v;
  }
  if (freq[lo] == 0 || freq[hi] == 0) fail(what, "entropy table range does not start and end at used symbols");
  if (sum != total)
    fail(what, "entropy table frequencies sum to " + std::to_string(sum) + ", not " + std::to_string(total));
  if (n - pos < 8) fail(what, "entropy-coded stream is truncated (no state)");
  if ((n - pos - 8) % 4 != 0) fail(what, "entropy-coded stream length is not a whole number of 32-bit words");

  // Before allocating `count` values: each costs at least log2(total / max f)
  // bits, and the stream holds at most 32 bits per word plus 32 in the state
  // (plus rounding losses under 1e-4 bits per value), so a short stream
  // cannot claim a huge count unless one symbol takes every slot.
  const uint32_t fmax = *std::max_element(freq.begin(), freq.end());
  const double min_bits = std::log2(static_cast<double>(total) / fmax);
  if (min_bits > 1e-2) {
    const double words = static_cast<double>((n - pos - 8) / 4);
    const double cap = 32.0 * (words + 2) / (min_bits - 1e-4) * 1.01 + 64;
    if (static_cast<double>(count) > cap)
      fail(what, "entropy-coded stream of " + std::to_string(n) + " bytes cannot hold " + std::to_string(count) +
                     " values");
  }

  // slot -> symbol; every slot is covered since the frequencies sum to the total.
  std::array<uint32_t, 256> start{};
  std::vector<uint8_t> sym(total);
  for (int s = lo, at = 0; s <= hi; ++s) {
    start[s] = static_cast<uint32_t>(at);
    std::memset(sym.data() + at, s, freq[s]);
    at += static_cast<int>(freq[s]);
  }

  uint64_t x = get_le(p + pos, 8);
  pos += 8;
  if (x < kLow || x >= kHigh) fail(what, "entropy-coded stream has an initial state out of range");
  std::vector<int8_t> out(count);
  const uint64_t mask = total - 1;
  for (uint64_t i = 0; i < count; ++i) {
    const uint32_t slot = static_cast<uint32_t>(x & mask);
    const int s = sym[slot];
    out[i] = value_of(s);
    x = freq[s] * (x >> scale) + slot - start[s];  // stays below 2^63 (see ARTIFACT_FORMAT.md)
    if (x < kLow) {
      if (n - pos < 4)
        fail(what, "entropy-coded stream ends after " + std::to_string(i + 1) + " of " + std::to_string(count) +
                       " values");
      x = (x << 32) | get_le(p + pos, 4);
      pos += 4;
    }
  }
  if (pos != n) fail(what, "entropy-coded stream has " + std::to_string(n - pos) + " bytes after its last value");
  if (x != kLow) fail(what, "entropy-coded stream does not end in its initial state (corrupt)");
  return out;
}

}  // namespace pgolf::quant
