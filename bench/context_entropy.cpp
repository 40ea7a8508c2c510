// How far below their per-tensor order-0 entropy could a pgolf artifact's
// quantized values be coded with context modelling? Measures, per tensor class
// and in total, in bytes:
//   - H0: the per-tensor order-0 entropy (the floor of the `entropy` coding)
//     and what `entropy` (static rANS) actually takes;
//   - static conditional entropies H(V | context) for candidate contexts,
//     counting the side information where the context is not causal (oracle
//     column / row buckets) but NOT the cost of per-context tables (so these
//     are optimistic);
//   - a Gaussian bound: every column's mean and variance known for free;
//   - honest adaptive coders (no side information, learning cost included):
//     multi-symbol counts, and a binarized coder (zero flag, sign, unary
//     magnitude) with adaptive bit probabilities under causal contexts;
//   - the "context" coding the artifact uses (quant/context_coder.h), its
//     actual bytes.
// Built on demand (not by default):
//   cmake --build build --target pgolf_context_entropy
//   build/pgolf_context_entropy model.pgz [--per-tensor]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "quant/artifact.h"
#include "quant/context_coder.h"
#include "quant/rans.h"

using pgolf::quant::Artifact;
using pgolf::quant::ArtifactTensor;

namespace {

struct Mat {
  std::string name;
  int64_t R = 0, C = 0;
  int bits = 0;
  const int8_t* v = nullptr;
  std::vector<double> scale;  // per row, as float
  int at(int64_t r, int64_t c) const { return v[r * C + c]; }
};

double fp16(uint16_t h) {
  const int e = (h >> 10) & 31;
  const double m = (h & 1023) / 1024.0;
  const double x = e ? std::ldexp(1 + m, e - 15) : std::ldexp(m, -14);
  return (h & 0x8000) ? -x : x;
}

// Static conditional entropy in bits: sum over (context, value) of -n log2(n / n_context).
// Contexts are small non-negative ints.
double h_cond(const Mat& t, const std::vector<int>& ctx) {
  int nctx = 0;
  for (int c : ctx) nctx = std::max(nctx, c + 1);
  std::vector<uint64_t> n(static_cast<size_t>(nctx) * 256, 0), nc(nctx, 0);
  const size_t N = static_cast<size_t>(t.R * t.C);
  for (size_t i = 0; i < N; ++i) ++n[static_cast<size_t>(ctx[i]) * 256 + (t.v[i] + 128)], ++nc[ctx[i]];
  double b = 0;
  for (int c = 0; c < nctx; ++c)
    for (int s = 0; s < 256; ++s)
      if (uint64_t x = n[static_cast<size_t>(c) * 256 + s]) b -= double(x) * std::log2(double(x) / double(nc[c]));
  return b;
}

// Adaptive multi-symbol counts (Krichevsky-Trofimov, a = 1/2) per context.
double h_adaptive(const Mat& t, const std::vector<int>& ctx) {
  const int m = (1 << (t.bits - 1)) - 1, K = 2 * m + 1;
  int nctx = 0;
  for (int c : ctx) nctx = std::max(nctx, c + 1);
  std::vector<double> n(static_cast<size_t>(nctx) * (K + 1), 0);
  double b = 0;
  const size_t N = static_cast<size_t>(t.R * t.C);
  for (size_t i = 0; i < N; ++i) {
    double* c = &n[static_cast<size_t>(ctx[i]) * (K + 1)];
    b -= std::log2((c[t.v[i] + m] + 0.5) / (c[K] + 0.5 * K));
    c[t.v[i] + m] += 1, c[K] += 1;
  }
  return b;
}

// Quantile bucket (0..nb-1) of each x.
std::vector<int> quantile_buckets(const std::vector<double>& x, int nb) {
  std::vector<double> s = x;
  std::sort(s.begin(), s.end());
  std::vector<int> b(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    b[i] = static_cast<int>((std::lower_bound(s.begin(), s.end(), x[i]) - s.begin()) * nb / x.size());
  return b;
}

// Causal running magnitude buckets: the column's mean |v| over the rows above
// and the row's mean |v| to the left, each relative to the tensor's mean |v|,
// in 1/4-octave steps (0..15).
void running_buckets(const Mat& t, std::vector<int>& col, std::vector<int>& row) {
  const size_t N = static_cast<size_t>(t.R * t.C);
  double g = 0;
  for (size_t i = 0; i < N; ++i) g += std::abs(t.v[i]);
  g = std::max(g / N, 1e-3);
  col.assign(N, 0), row.assign(N, 0);
  std::vector<double> cs(t.C, 0);
  auto bucket = [&](double e) { return std::clamp(static_cast<int>(std::floor(4 * std::log2(e / g + 1e-9))) + 8, 0, 15); };
  for (int64_t r = 0; r < t.R; ++r) {
    double rs = 0;
    for (int64_t c = 0; c < t.C; ++c) {
      const size_t i = static_cast<size_t>(r * t.C + c);
      col[i] = bucket((cs[c] + 2 * g) / (r + 2));
      row[i] = bucket((rs + 4 * g) / (c + 4));
      cs[c] += std::abs(t.v[i]), rs += std::abs(t.v[i]);
    }
  }
}

// Adaptive bit with a count-based rate (1/(n+2), floored at 1/limit).
struct Bit {
  double p = 0.5;
  int n = 0;
  double code(int b, int limit) {
    const double c = -std::log2(b ? p : 1 - p);
    p += ((b ? 1.0 : 0.0) - p) / std::min(n + 2, limit);
    ++n;
    return c;
  }
};

// Binarized adaptive coder: zero flag, sign, unary magnitude, each bit with
// its own adaptive probability under the context. mode 0: none; 1: column
// spread (causal running column |v|, 16 buckets); 2: + the column's running
// mean of dequantized values divided by this row's scale (an offset in
// quantization steps, 7 buckets; the sign is coded relative to it).
double h_binary(const Mat& t, int mode, int limit) {
  const int m = (1 << (t.bits - 1)) - 1, D = m + 2, NB = 16, NO = 7;
  std::vector<Bit> bits(static_cast<size_t>(NB) * NO * D);
  std::vector<double> cabs(t.C, 0), cmean(t.C, 0);
  double gabs = 0, total = 0;
  size_t seen = 0;
  for (int64_t r = 0; r < t.R; ++r) {
    const double s = t.scale[r] != 0 ? t.scale[r] : 1e-8;
    for (int64_t c = 0; c < t.C; ++c) {
      const int v = t.at(r, c);
      const double g = (gabs + 2.4 * 8) / (seen + 8);
      int sb = 0, ob = 3;
      if (mode >= 1) sb = std::clamp(static_cast<int>(std::floor(6 * std::log2((cabs[c] + 2 * g) / (r + 2) / g))) + 8, 0, NB - 1);
      if (mode >= 2 && r > 0) ob = std::clamp(static_cast<int>(std::lround(cmean[c] / r / s * 2)), -3, 3) + 3;
      Bit* b = &bits[(static_cast<size_t>(sb) * NO + ob) * D];
      const int u = ob < 3 ? -v : v, a = std::abs(u);
      total += b[0].code(a == 0, limit);
      if (a) {
        total += b[1].code(u > 0, limit);
        for (int k = 1; k < m; ++k) {
          total += b[1 + k].code(a == k, limit);
          if (a == k) break;
        }
      }
      cabs[c] += std::abs(v), cmean[c] += v * s, gabs += std::abs(v), ++seen;
    }
  }
  return total;
}

// Entropy reduction (bits) if every column's mean and variance were known, for
// Gaussian values: sum_c R/2 log2(var / var_c). An optimistic bound for any
// column context.
double gaussian_column_bound(const Mat& t) {
  const size_t N = static_cast<size_t>(t.R * t.C);
  double m = 0, m2 = 0;
  for (size_t i = 0; i < N; ++i) m += t.v[i], m2 += double(t.v[i]) * t.v[i];
  m /= N;
  const double var = m2 / N - m * m;
  double g = 0;
  for (int64_t c = 0; c < t.C; ++c) {
    double a = 0, b = 0;
    for (int64_t r = 0; r < t.R; ++r) a += t.at(r, c), b += double(t.at(r, c)) * t.at(r, c);
    a /= t.R;
    const double vc = b / t.R - a * a;
    if (vc > 0 && var > 0) g += 0.5 * t.R * std::log2(var / vc);
  }
  return g;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: context_entropy ARTIFACT.pgz [--per-tensor]\n");
    return 2;
  }
  const bool per_tensor = argc > 2 && std::strcmp(argv[2], "--per-tensor") == 0;
  const Artifact a = pgolf::quant::load_artifact(argv[1]);
  const std::vector<std::string> cols = {
      "H0",           "rANS (actual)",       "oracle col16+side", "oracle row8+side", "row scale b8",
      "left |v|",     "above |v|",           "run col |v|",       "run row |v|",      "run col x row",
      "oracle mean+col8", "Gauss col bnd", "adapt none",         "adapt run col",     "bin none",         "bin col spread",
      "bin +offset",  "bin +offset slow", "context (actual)"};
  std::map<std::string, std::vector<double>> by_class;
  std::vector<double> all(cols.size(), 0);
  for (const ArtifactTensor& x : a.tensors) {
    if (x.kind != ArtifactTensor::Kind::Quantized || x.values.empty()) continue;
    Mat t;
    t.name = x.name;
    t.R = x.shape[0];
    t.C = static_cast<int64_t>(x.values.size()) / t.R;
    t.bits = x.bits;
    t.v = x.values.data();
    for (uint16_t s : x.scales) t.scale.push_back(fp16(s));
    const size_t N = x.values.size();
    std::vector<double> res;
    res.push_back(pgolf::quant::order0_entropy_bits(x.values));
    res.push_back(8.0 * pgolf::quant::rans_encode(x.values).size());
    std::vector<int> ctx(N);
    auto per_col = [&](const std::vector<int>& b) {
      for (size_t i = 0; i < N; ++i) ctx[i] = b[i % t.C];
    };
    auto per_row = [&](const std::vector<int>& b) {
      for (size_t i = 0; i < N; ++i) ctx[i] = b[i / t.C];
    };
    std::vector<double> cm(t.C, 0), rm(t.R, 0);
    for (size_t i = 0; i < N; ++i) cm[i % t.C] += std::abs(t.v[i]), rm[i / t.C] += std::abs(t.v[i]);
    per_col(quantile_buckets(cm, 16));
    res.push_back(h_cond(t, ctx) + 4.0 * t.C);  // 4 bits of side information per column
    per_row(quantile_buckets(rm, 8));
    res.push_back(h_cond(t, ctx) + 3.0 * t.R);
    std::vector<double> absscale(t.R);
    for (int64_t r = 0; r < t.R; ++r) absscale[r] = std::abs(t.scale[r]);
    per_row(quantile_buckets(absscale, 8));
    res.push_back(h_cond(t, ctx));  // the scales are in the file already
    for (size_t i = 0; i < N; ++i) ctx[i] = i % t.C ? std::min(std::abs(t.v[i - 1]), 12) : 13;
    res.push_back(h_cond(t, ctx));
    for (size_t i = 0; i < N; ++i) ctx[i] = i >= size_t(t.C) ? std::min(std::abs(t.v[i - t.C]), 12) : 13;
    res.push_back(h_cond(t, ctx));
    std::vector<int> run_col, run_row;
    running_buckets(t, run_col, run_row);
    res.push_back(h_cond(t, run_col));
    res.push_back(h_cond(t, run_row));
    for (size_t i = 0; i < N; ++i) ctx[i] = run_col[i] * 4 + run_row[i] / 4;
    res.push_back(h_cond(t, ctx));
    // Oracle column mean (of dequantized values; 512 fp16 of side information) as an offset in
    // quantization steps for this row (quarter steps), times an oracle column-spread bucket (3 bits).
    {
      std::vector<double> mu(t.C, 0), dev(t.C, 0);
      for (size_t i = 0; i < N; ++i) mu[i % t.C] += t.v[i] * t.scale[i / t.C] / t.R;
      auto off = [&](size_t i) { const double s = t.scale[i / t.C]; return s != 0 ? mu[i % t.C] / s : 0.0; };
      for (size_t i = 0; i < N; ++i) dev[i % t.C] += std::abs(t.v[i] - off(i));
      const std::vector<int> sb = quantile_buckets(dev, 8);
      for (size_t i = 0; i < N; ++i)
        ctx[i] = (std::clamp(static_cast<int>(std::lround(off(i) * 4)), -24, 24) + 24) * 8 + sb[i % t.C];
      res.push_back(h_cond(t, ctx) + 19.0 * t.C);
    }
    res.push_back(res[0] - gaussian_column_bound(t));
    std::fill(ctx.begin(), ctx.end(), 0);
    res.push_back(h_adaptive(t, ctx));
    res.push_back(h_adaptive(t, run_col));
    res.push_back(h_binary(t, 0, 256));
    res.push_back(h_binary(t, 1, 256));
    res.push_back(h_binary(t, 2, 256));
    res.push_back(h_binary(t, 2, 1024));
    res.push_back(8.0 * pgolf::quant::context_encode(x.values, static_cast<uint64_t>(t.R), t.bits, x.scales, pgolf::quant::ContextModel::Columns).size());
    const std::string cls = t.name.find("tok_emb") != std::string::npos ? "embed"
                            : t.name.find("attn") != std::string::npos  ? "attn"
                            : t.name.find("mlp.fc") != std::string::npos ? "mlp.fc"
                            : t.name.find("mlp.proj") != std::string::npos ? "mlp.proj"
                                                                           : "other";
    std::vector<double>& acc = by_class[cls];
    acc.resize(cols.size(), 0);
    for (size_t k = 0; k < res.size(); ++k) acc[k] += res[k] / 8, all[k] += res[k] / 8;
    if (per_tensor) {
      std::printf("%-32s %10.0f", t.name.c_str(), res[0] / 8);
      for (size_t k = 1; k < res.size(); ++k) std::printf(" %+6.2f%%", 100 * (res[k] / res[0] - 1));
      std::printf("\n");
    }
  }
  by_class["all"] = all;
  std::printf("bytes (and %% against H0), per class; static conditional rows exclude table costs\n%-18s", "context");
  for (const auto& [k, v] : by_class) std::printf(" %22s", k.c_str());
  std::printf("\n");
  for (size_t i = 0; i < cols.size(); ++i) {
    std::printf("%-18s", cols[i].c_str());
    for (const auto& [k, v] : by_class) std::printf(" %12.0f (%+6.2f%%)", v[i], 100 * (v[i] / v[0] - 1));
    std::printf("\n");
  }
}
