#include "quant/context_coder.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "data/error.h"

namespace pgolf::quant {
namespace {

// Model constants; docs/ARTIFACT_FORMAT.md repeats them, and changing one
// changes the format.
constexpr int kSpreadBuckets = 32;  // column spread, 1/8 octave each, +-2 octaves around the tensor's mean |v|
constexpr int kMeanBuckets = 7;     // round(2 x column mean in this row's steps), clamped to +-3
constexpr int kNeutralMean = 3;     // the middle mean bucket (no mean known)
constexpr int kSlots = 40;          // decisions: 0 zero?, 1 sign, 1+k |v| == k? (slot capped at kSlots-1)
constexpr int kCountLimit = 1024;   // a counter adapts at 1/(n+2), never slower than 1/kCountLimit
constexpr int kInherit = 16;        // a mean counter starts from its spread counter, as if seen <= 16 times
constexpr int kMixShift = 17;       // mixer learning rate 2^-9 (weights 16.16, stretch in 1/256 nat)
constexpr int32_t kMaxWeight = 1 << 22;  // weights stay within +-64
constexpr uint64_t kMaxColumns = uint64_t{1} << 20;

// The linear model (ContextModel::Linear); docs/ARTIFACT_FORMAT.md section 2.3 (context+linear).
constexpr uint64_t kMaxLinearColumns = 1024;  // its covariance takes 16 C^2 bytes
constexpr uint64_t kFirstFit = 32;            // rows before the first fit (the prediction is 0 until then)
constexpr double kShrinkRows = 1500;          // off-diagonal covariances are scaled by n / (n + 1500)
constexpr double kRidge = 1.0 / 64;           // added to the diagonal (a constant column has variance 0)
constexpr int kFractionSteps = 6;             // mean bucket = round(6 x (prediction - its rounding))

static_assert(std::numeric_limits<double>::is_iec559, "the linear model needs IEEE-754 binary64");
#if defined(__FP_FAST_FMA) && !defined(PGOLF_FP_CONTRACT_OFF)
#error "compile quant/context_coder.cpp with -ffp-contract=off (see CMakeLists.txt): fused multiply-adds change the linear model's predictions"
#endif

// ---- integer logistic functions -------------------------------------------------------
// squash(x) = 65536 / (1 + e^-x), x in 1/256 nat, by linear interpolation
// between these knots at x = -8, -7.5, ..., 8 nats.
constexpr int kKnots[33] = {22,    36,    60,    98,    162,   267,   439,   720,   1179,  1921,  3108,
                            4971,  7812,  11955, 17625, 24743, 32768, 40793, 47911, 53581, 57724, 60565,
                            62428, 63615, 64357, 64816, 65097, 65269, 65374, 65438, 65476, 65500, 65514};

int squash_by_knots(int x) {
  x = std::clamp(x, -2047, 2047) + 2048;
  const int i = x >> 7, w = x & 127;
  return (kKnots[i] * (128 - w) + kKnots[i + 1] * w) >> 7;
}

struct Tables {
  std::array<uint16_t, 4095> squash;  // squash(x) for x in -2047..2047, at x + 2047
  std::array<int16_t, 4096> stretch;  // inverse of squash, indexed by P(1) >> 4
  std::array<uint8_t, 256> log8;      // floor(8 log2(1 + i/256))
  std::array<uint32_t, kCountLimit + 1> reciprocal;  // 2^16 / d
  Tables() {
    for (int x = -2047; x <= 2047; ++x) squash[x + 2047] = static_cast<uint16_t>(squash_by_knots(x));
    int next = 0;
    for (int x = -2047; x <= 2047; ++x) {
      const int p = squash[x + 2047] >> 4;
      for (; next <= p; ++next) stretch[next] = static_cast<int16_t>(x);
    }
    for (; next < 4096; ++next) stretch[next] = 2047;
    // (256 + i)^8 >= 2^j 256^8, exactly in 128-bit integers.
    for (int i = 0; i < 256; ++i) {
      unsigned __int128 a = 1, b = 1;
      for (int k = 0; k < 8; ++k) a *= static_cast<unsigned>(256 + i), b *= 256u;
      int j = 0;
      while (j < 7 && a >= (b << (j + 1))) ++j;
      log8[i] = static_cast<uint8_t>(j);
    }
    reciprocal[0] = reciprocal[1] = 0;
    for (int d = 2; d <= kCountLimit; ++d) reciprocal[d] = (1u << 16) / static_cast<uint32_t>(d);
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

// About 8 log2(x) for x >= 1: 8 floor(log2 x) + the next 8 bits' log8.
int log8(uint64_t x) {
  const int e = 63 - __builtin_clzll(x);
  const uint64_t top = e >= 8 ? x >> (e - 8) : x << (8 - e);
  return 8 * e + tables().log8[top & 255];
}

// The fp16 scale times 2^24: an exact integer for every finite fp16; 0 for
// infinities and NaN (which the artifact rejects anyway).
int64_t scale_units(uint16_t h) {
  const int e = (h >> 10) & 31, f = h & 1023;
  if (e == 31) return 0;
  const int64_t mag = e == 0 ? f : int64_t{1024 + f} << (e - 1);
  return (h & 0x8000) ? -mag : mag;
}

// ---- adaptive probabilities -----------------------------------------------------------------

struct Counter {
  uint32_t p = 1u << 21;  // P(1) in 2^-22
  uint32_t n = 1;         // updates + 1, at most kCountLimit; 0 = never used (mean counters)
  void update(int bit, const Tables& t) {
    const uint32_t d = std::min<uint32_t>(n + 1, kCountLimit);  // n + 1 = updates + 2
    const int64_t diff = (static_cast<int64_t>(bit) << 22) - static_cast<int64_t>(p);
    p = static_cast<uint32_t>(static_cast<int64_t>(p) + ((diff * t.reciprocal[d]) >> 16));
    if (n < kCountLimit) ++n;
  }
};

struct Model {
  const Tables& t = tables();
  std::vector<Counter> spread;     // [kSpreadBuckets][kSlots]
  std::vector<Counter> with_mean;  // [kSpreadBuckets][kMeanBuckets][kSlots]
  std::vector<int32_t> weights;    // [kMeanBuckets][kSlots][2], 16.16
  Model()
      : spread(kSpreadBuckets * kSlots),
        with_mean(kSpreadBuckets * kMeanBuckets * kSlots, Counter{1u << 21, 0}),
        weights(kMeanBuckets * kSlots * 2, 1 << 15) {}

  // Codes one decision through `coder` (encoder: writes `bit`; decoder:
  // returns the decoded bit) and adapts.
  template <class Coder>
  int code(Coder& coder, int slot, int sb, int ob, int bit) {
    Counter& a = spread[sb * kSlots + slot];
    Counter& b = with_mean[(sb * kMeanBuckets + ob) * kSlots + slot];
    if (b.n == 0) b.p = a.p, b.n = std::min<uint32_t>(a.n, kInherit + 1);
    int32_t* w = &weights[(ob * kSlots + slot) * 2];
    const int s0 = t.stretch[a.p >> 10], s1 = t.stretch[b.p >> 10];
    const int64_t dot = (static_cast<int64_t>(w[0]) * s0 + static_cast<int64_t>(w[1]) * s1) >> 16;
    const int p = t.squash[std::clamp<int64_t>(dot, -2047, 2047) + 2047];
    bit = coder.bit(static_cast<uint32_t>(p), bit);
    const int err = (bit << 16) - p;
    w[0] = std::clamp(w[0] + ((s0 * err) >> kMixShift), -kMaxWeight, kMaxWeight);
    w[1] = std::clamp(w[1] + ((s1 * err) >> kMixShift), -kMaxWeight, kMaxWeight);
    a.update(bit, t);
    b.update(bit, t);
    return bit;
  }
};

// ---- binary range coder (32-bit range, carries through a cached byte) -----------------------
// P(1) = p / 2^16, 1 <= p < 2^16.

struct Encoder {
  std::string out;
  uint64_t low = 0;
  uint32_t range = 0xFFFFFFFFu;
  uint8_t cache = 0;
  uint64_t pending = 1;  // bytes held back: cache, then pending - 1 bytes of 0xFF

  void shift_low() {
    if (static_cast<uint32_t>(low) < 0xFF000000u || (low >> 32) != 0) {
      const uint8_t carry = static_cast<uint8_t>(low >> 32);
      uint8_t b = cache;
      do {
        out += static_cast<char>(static_cast<uint8_t>(b + carry));
        b = 0xFF;
      } while (--pending != 0);
      cache = static_cast<uint8_t>(low >> 24);
    }
    ++pending;
    low = (low & 0x00FFFFFFu) << 8;
  }
  int bit(uint32_t p, int bit) {
    const uint32_t bound = (range >> 16) * p;
    if (bit) {
      range = bound;
    } else {
      low += bound;
      range -= bound;
    }
    while (range < (1u << 24)) range <<= 8, shift_low();
    return bit;
  }
  std::string finish() {
    for (int i = 0; i < 5; ++i) shift_low();
    return std::move(out);
  }
};

struct Decoder {
  const std::string& in;
  const std::string& what;
  size_t at = 0;
  uint32_t range = 0xFFFFFFFFu;
  uint32_t code = 0;

  Decoder(const std::string& bytes, const std::string& w) : in(bytes), what(w) {
    if (next() != 0) fail(what, "context stream: first byte is not 0 (corrupt)");
    for (int i = 0; i < 4; ++i) code = (code << 8) | next();
  }
  uint32_t next() {
    if (at >= in.size()) fail(what, "context stream ends early (truncated or corrupt)");
    return static_cast<uint8_t>(in[at++]);
  }
  int bit(uint32_t p, int) {
    const uint32_t bound = (range >> 16) * p;
    int b;
    if (code < bound) {
      range = bound, b = 1;
    } else {
      code -= bound, range -= bound, b = 0;
    }
    while (range < (1u << 24)) range <<= 8, code = (code << 8) | next();
    return b;
  }
  void finish() const {
    if (at != in.size())
      fail(what, "context stream has " + std::to_string(in.size() - at) + " bytes after its end (corrupt)");
  }
};

// ---- the linear model: each value predicted from the ones to its left --------------------------
// A conditional-Gaussian predictor: the columns' mean and covariance are
// estimated from the rows above (exact integer sums), shrunk toward the
// diagonal, and factored (Cholesky, refitted on a schedule). Within a row,
// value k's prediction is the mean plus what the values left of it say under
// that covariance. Why: embeddings have low-rank structure (directions shared
// by many tokens) that per-column statistics cannot see; this takes about
// 1.7% off a trained embedding's context-coded size.
//
// The arithmetic is IEEE binary64 with every operation in the order written
// here and no fused multiply-add (this file is built with -ffp-contract=off),
// so encoder and decoder agree on every platform; the loops that run over i
// only ever update element i, so vectorising them changes nothing.
class LinearPredictor {
 public:
  explicit LinearPredictor(uint64_t cols)
      : C_(cols),
        s1_(cols, 0),
        s2_(cols * cols, 0),
        s2_block_(cols * cols, 0),
        mean_(cols, 0),
        l_(cols * cols, 0),
        acc_(cols, 0) {}

  // Before a row: refits when due, clears the running prediction.
  void start_row() {
    if (n_ == next_fit_) {
      fit();
      next_fit_ = n_ + kFirstFit * std::max<uint64_t>(1, n_ / 256);
    }
    std::fill(acc_.begin(), acc_.end(), 0.0);
  }
  // The prediction for column k of this row (0 before the first fit).
  double predict(uint64_t k) const { return fitted_ ? mean_[k] + acc_[k] : 0.0; }
  // After column k's value v is known: carries what it says to the columns right of it.
  void observe(uint64_t k, int v) {
    if (!fitted_) return;
    const double* lk = &l_[k * C_];
    const double z = ((static_cast<double>(v) - mean_[k]) - acc_[k]) / lk[k];
    for (uint64_t i = k + 1; i < C_; ++i) acc_[i] += lk[i] * z;
  }
  // After a row: adds it to the sums.
  void end_row(const int8_t* row) {
    const uint64_t C = C_;
    int32_t* block = s2_block_.data();
    for (uint64_t j = 0; j < C; ++j) {
      const int32_t vj = row[j];
      s1_[j] += vj;
      if (vj == 0) continue;
      int32_t* col = block + j * C;
      for (uint64_t i = j; i < C; ++i) col[i] += vj * row[i];
    }
    ++n_;
    if (++block_rows_ == kBlockRows) flush();
  }

 private:
  // Moves the int32 block sums (|sum| <= 2^16 x 127^2 < 2^31) into s2_.
  void flush() {
    for (size_t k = 0; k < s2_.size(); ++k) s2_[k] += s2_block_[k], s2_block_[k] = 0;
    block_rows_ = 0;
  }

  void fit() {
    flush();
    const double n = static_cast<double>(n_), f = n / (n + kShrinkRows);
    for (uint64_t j = 0; j < C_; ++j) mean_[j] = static_cast<double>(s1_[j]) / n;
    for (uint64_t j = 0; j < C_; ++j)
      for (uint64_t i = j; i < C_; ++i) {
        const __int128 x = static_cast<__int128>(n_) * s2_[j * C_ + i] - static_cast<__int128>(s1_[i]) * s1_[j];
        const double cov = static_cast<double>(x) / (n * n);
        l_[j * C_ + i] = i == j ? cov + kRidge : cov * f;
      }
    for (uint64_t k = 0; k < C_; ++k) {  // right-looking Cholesky, in place
      double* lk = &l_[k * C_];
      const double d = std::sqrt(std::max(lk[k], kRidge));  // the max only ever matters for rounding
      lk[k] = d;
      for (uint64_t i = k + 1; i < C_; ++i) lk[i] = lk[i] / d;
      for (uint64_t j = k + 1; j < C_; ++j) {
        double* lj = &l_[j * C_];
        const double x = lk[j];
        for (uint64_t i = j; i < C_; ++i) lj[i] = lj[i] - lk[i] * x;
      }
    }
    fitted_ = true;
  }

  static constexpr uint64_t kBlockRows = 1 << 16;
  uint64_t C_, n_ = 0, next_fit_ = kFirstFit, block_rows_ = 0;
  bool fitted_ = false;
  // Lower triangles (s2_, s2_block_, l_) are stored by column: element (i, j), i >= j, at [j C + i].
  std::vector<int64_t> s1_;        // [C] sum of v
  std::vector<int64_t> s2_;        // [C][C] sum of v_i v_j
  std::vector<int32_t> s2_block_;  // the same over the rows since the last flush
  std::vector<double> mean_, l_, acc_;  // [C] column means, [C][C] Cholesky factor, [C] this row's prediction
};

// ---- the row walk shared by both directions ---------------------------------------------------

// Walks the matrix in row-major order, giving each value its contexts, and
// codes it through `coder`. `values` is read (encoding) or written (decoding).
template <class Coder>
void walk(Coder& coder, int8_t* values, uint64_t rows, uint64_t cols, int bits, const std::vector<uint16_t>& scales,
          ContextModel how, const std::string& what) {
  const int m = (1 << (bits - 1)) - 1;
  const bool linear = how == ContextModel::Linear;
  Model model;
  std::vector<uint64_t> col_abs(cols, 0);   // sum of |v| (linear: |v - shift|) over the rows above
  std::vector<__int128> col_sum(cols, 0);   // sum of v x scale units over the rows above
  std::unique_ptr<LinearPredictor> predictor;
  if (linear) predictor = std::make_unique<LinearPredictor>(cols);
  uint64_t all_abs = 0, seen = 0;
  for (uint64_t r = 0; r < rows; ++r) {
    // The tensor's mean |v| so far in 16.16, with m/8 as a prior worth 8 values.
    const uint64_t mean_q = std::max<uint64_t>(((all_abs + static_cast<uint64_t>(m)) << 16) / (seen + 8), 1);
    const int row_log = log8(r + 2) + log8(mean_q);
    const int64_t s = scale_units(scales[r]);
    __int128 edge[3] = {0, 0, 0};  // (2t + 1) r s: where round(2 x mean / s) steps past t
    const bool has_mean = !linear && r > 0 && s > 0;
    if (has_mean)
      for (int k = 0; k < 3; ++k) edge[k] = static_cast<__int128>(2 * k + 1) * static_cast<__int128>(r) * s;
    if (linear) predictor->start_row();
    int8_t* row = values + r * cols;
    for (uint64_t c = 0; c < cols; ++c) {
      const int sb = std::clamp(log8((col_abs[c] << 16) + 2 * mean_q) - row_log + kSpreadBuckets / 2, 0,
                                kSpreadBuckets - 1);
      int ob = kNeutralMean;
      int shift = 0;  // linear: the value is coded as v - shift
      if (linear) {
        const double mu = std::clamp(predictor->predict(c), static_cast<double>(-m), static_cast<double>(m));
        const double rounded = std::floor(mu + 0.5);
        shift = static_cast<int>(rounded);
        const int fraction = static_cast<int>(std::floor((mu - rounded) * kFractionSteps + 0.5));
        ob += std::clamp(fraction, -kNeutralMean, kNeutralMean);
      } else if (has_mean) {
        const __int128 x = 4 * col_sum[c];
        for (int k = 0; k < 3; ++k) ob += (x >= edge[k]) - (x < -edge[k]);
      }
      // zero?, then the sign relative to the mean's side, then |v| in unary.
      const int top = linear ? 2 * m : m;  // the largest |v - shift|
      const int v = row[c] - shift;
      const int a0 = std::abs(v);
      const bool flip = ob < kNeutralMean;
      int a = 0, u = 0;
      if (!model.code(coder, 0, sb, ob, a0 == 0)) {
        const int positive = model.code(coder, 1, sb, ob, (flip ? -v : v) > 0);
        a = 1;
        for (; a < top; ++a)
          if (model.code(coder, std::min(1 + a, kSlots - 1), sb, ob, a0 == a)) break;
        u = positive ? a : -a;
        if (flip) u = -u;
      }
      const int value = u + shift;
      if (value < -m || value > m)  // only a corrupt linear stream gets here
        fail(what, "context stream decodes a value outside +-" + std::to_string(m) + " (corrupt)");
      row[c] = static_cast<int8_t>(value);
      if (linear) predictor->observe(c, value);
      col_abs[c] += static_cast<uint64_t>(a);
      if (!linear) col_sum[c] += static_cast<__int128>(row[c]) * s;
      all_abs += static_cast<uint64_t>(a);
    }
    if (linear) predictor->end_row(row);
    seen += cols;
  }
}

void check_shape(uint64_t count, uint64_t rows, int bits, size_t n_scales, ContextModel how, const std::string& what) {
  if (bits < 2 || bits > 8) fail(what, "context coding needs 2..8 bits, got " + std::to_string(bits));
  if (count == 0) return;
  if (rows == 0 || count % rows != 0)
    fail(what, std::to_string(count) + " values do not make " + std::to_string(rows) + " equal rows");
  if (n_scales != rows)
    fail(what, std::to_string(n_scales) + " scales for " + std::to_string(rows) + " rows");
  // The column statistics take 24 bytes a column: bounded, so a hostile
  // shape (one row of a billion values) cannot make the decoder allocate
  // 24 times the values' size.
  if (count / rows > kMaxColumns)
    fail(what, "context coding allows at most " + std::to_string(kMaxColumns) + " columns, got " +
                   std::to_string(count / rows));
  if (how == ContextModel::Linear && count / rows > kMaxLinearColumns)
    fail(what, "context+linear coding allows at most " + std::to_string(kMaxLinearColumns) + " columns, got " +
                   std::to_string(count / rows));
}

}  // namespace

bool context_codable(uint64_t count, uint64_t rows, ContextModel how) {
  const uint64_t limit = how == ContextModel::Linear ? kMaxLinearColumns : kMaxColumns;
  return count == 0 || (rows > 0 && count % rows == 0 && count / rows <= limit);
}

std::string context_encode(const std::vector<int8_t>& values, uint64_t rows, int bits,
                           const std::vector<uint16_t>& scales, ContextModel how) {
  check_shape(values.size(), rows, bits, scales.size(), how, "context_encode");
  if (values.empty()) return {};
  const int m = (1 << (bits - 1)) - 1;
  for (int8_t v : values)
    if (v < -m || v > m) fail("context_encode", "value " + std::to_string(v) + " outside +-" + std::to_string(m));
  std::vector<int8_t> copy = values;  // walk() writes back what it codes (the same values)
  Encoder e;
  walk(e, copy.data(), rows, values.size() / rows, bits, scales, how, "context_encode");
  return e.finish();
}

std::vector<int8_t> context_decode(const std::string& bytes, uint64_t count, uint64_t rows, int bits,
                                   const std::vector<uint16_t>& scales, ContextModel how, const std::string& what) {
  check_shape(count, rows, bits, scales.size(), how, what);
  if (count == 0) {
    if (!bytes.empty()) fail(what, "context stream for 0 values is not empty (corrupt)");
    return {};
  }
  // Every value costs at least one decision, and a decision at the most
  // probable squash output (65514/65536) narrows the range by at least
  // 4.8e-4 bits; a stream of n bytes narrows it by at most 8(n - 4) bits. So a
  // count over 16,600 n cannot be this stream's: refused before allocating.
  if (count / 16600 >= bytes.size())
    fail(what, "context stream of " + std::to_string(bytes.size()) + " bytes cannot hold " + std::to_string(count) +
                   " values (corrupt)");
  std::vector<int8_t> v(count, 0);
  Decoder d(bytes, what);
  walk(d, v.data(), rows, count / rows, bits, scales, how, what);
  d.finish();
  return v;
}

}  // namespace pgolf::quant
