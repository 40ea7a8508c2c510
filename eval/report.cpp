#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "data/atomic_file.h"
#include "eval/chart.h"

namespace pgolf {

namespace {

const double kLn2 = std::log(2.0);

double ratio_bpb(double nll, uint64_t bytes) { return bytes ? nll / kLn2 / double(bytes) : 0.0; }

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string run_name(const EvalDump& d) {
  std::string s = d.kind + ", " + d.plan + " L=" + std::to_string(d.seq_len);
  if (d.stride) s += " S=" + std::to_string(d.stride);
  if (d.doc_mask) s += ", doc-mask";
  return s;
}

bool scored(const EvalDump& d, size_t i) { return d.doc_bytes[i] > 0 && d.doc_targets[i] > 0; }

}  // namespace

double LengthBucket::bpb() const { return ratio_bpb(nll, bytes); }
double LengthBucket::bpb_base() const { return ratio_bpb(nll_base, bytes); }
double ChunkGain::gain_bpb() const { return ratio_bpb(nll_base - nll, bytes); }

std::vector<LengthBucket> length_buckets(const EvalDump& d) {
  std::map<int, LengthBucket> by_log2;
  for (size_t i = 0; i < d.doc_start.size(); ++i) {
    if (!scored(d, i)) continue;
    const uint64_t len = std::max<uint64_t>(1, d.doc_length[i]);
    const int k = 63 - __builtin_clzll(len);  // len in [2^k, 2^(k+1))
    LengthBucket& b = by_log2[k];
    b.lo = uint64_t(1) << k;
    b.hi = k == 63 ? UINT64_MAX : (uint64_t(1) << (k + 1)) - 1;
    b.docs += 1;
    b.targets += d.doc_targets[i];
    b.bytes += d.doc_bytes[i];
    b.nll += d.doc_nll[i];
    if (!d.doc_nll_base.empty()) b.nll_base += d.doc_nll_base[i];
  }
  std::vector<LengthBucket> out;
  for (auto& [k, b] : by_log2) out.push_back(b);
  return out;
}

std::vector<ChunkGain> chunk_gains(const EvalDump& d) {
  std::vector<ChunkGain> g;
  if (d.chunk_nll_base.empty()) return g;
  for (size_t i = 0; i < d.chunk_doc.size(); ++i) {
    const uint32_t c = d.chunk_index[i];
    if (!std::isfinite(d.chunk_nll[i]) || !std::isfinite(d.chunk_nll_base[i])) continue;  // baseline not computed
    if (c >= g.size()) {
      if (c > (1u << 24)) continue;  // not a chunk index any plan makes; keep the figure bounded
      g.resize(size_t(c) + 1);
    }
    g[c].chunks += 1;
    g[c].bytes += d.chunk_bytes[i];
    g[c].nll += d.chunk_nll[i];
    g[c].nll_base += d.chunk_nll_base[i];
  }
  for (size_t c = 0; c < g.size(); ++c) g[c].index = uint32_t(c);
  g.erase(std::remove_if(g.begin(), g.end(), [](const ChunkGain& x) { return x.chunks == 0; }), g.end());
  return g;
}

std::string doc_bpb_svg(const EvalDump& d, const std::vector<LengthBucket>& buckets) {
  std::vector<double> xs, ys;
  for (size_t i = 0; i < d.doc_start.size(); ++i)
    if (scored(d, i)) {
      xs.push_back(double(std::max<uint64_t>(1, d.doc_length[i])));
      ys.push_back(ratio_bpb(d.doc_nll[i], d.doc_bytes[i]));
    }
  Axis x{1, 10, true, false, "document length (tokens, log scale)"};
  Axis y{0, 1, false, false, "bits per byte"};
  double top = std::max(d.bpb * 1.25, 1e-3);
  if (!xs.empty()) {
    x.lo = std::pow(10.0, std::floor(std::log10(*std::min_element(xs.begin(), xs.end()))));
    x.hi = std::max(x.lo * 10, std::pow(10.0, std::ceil(std::log10(*std::max_element(xs.begin(), xs.end())))));
    // Very short documents can score far above the rest: the top is the 99.5th
    // percentile (or the buckets' and the overall bpb, if higher).
    std::vector<double> sorted = ys;
    std::sort(sorted.begin(), sorted.end());
    top = std::max(top, sorted[size_t(0.995 * double(sorted.size() - 1))]);
    for (const LengthBucket& b : buckets) top = std::max(top, b.bpb());
  }
  y.hi = top * 1.05;
  Chart c("Per-document bpb (" + run_name(d) + ")", x, y);
  c.caption(std::to_string(xs.size()) + " documents; overall " + fmt("%.5f", d.bpb) + " ± " +
            fmt("%.5f", d.bpb_stderr) + " bpb; model " + d.model);
  size_t above = 0;
  const double opacity = xs.size() > 5000 ? 0.25 : 0.5;
  for (size_t i = 0; i < xs.size(); ++i) {
    above += ys[i] > y.hi;
    c.svg().circle(c.px(xs[i]), c.py(std::min(ys[i], y.hi)), 1.8, "#1f77b4", opacity);
  }
  if (above) c.caption(std::to_string(above) + (above == 1 ? " document" : " documents") + " above " + fmt("%.3g", y.hi) + " bpb drawn at the top edge");
  // The trend: each length bucket's bpb (ratio of sums) at its geometric middle.
  std::vector<std::pair<double, double>> trend;
  for (const LengthBucket& b : buckets) trend.push_back({c.px(std::sqrt(double(b.lo) * double(b.hi + 1))), c.py(b.bpb())});
  c.svg().polyline(trend, "#ff7f0e", 2);
  for (const auto& [px, py] : trend) c.svg().circle(px, py, 3, "#ff7f0e");
  c.svg().line(c.plot_left(), c.py(d.bpb), c.plot_right(), c.py(d.bpb), "#d62728", 1.5, "6 4");
  c.legend("overall " + fmt("%.4f", d.bpb) + " bpb", "#d62728", "6 4");
  c.legend("length buckets (powers of 2): bpb of their bytes", "#ff7f0e");
  return c.str();
}

std::string ttt_gain_svg(const EvalDump& d, const std::vector<ChunkGain>& gains) {
  double lo = 0, hi = 0;
  uint64_t chunks = 0;
  for (const ChunkGain& g : gains) {
    lo = std::min(lo, g.gain_bpb());
    hi = std::max(hi, g.gain_bpb());
    chunks += g.chunks;
  }
  const double pad = hi > lo ? 0.08 * (hi - lo) : 1e-3;
  const double last = gains.empty() ? 0 : gains.back().index;
  Axis x{-0.5, last + 0.5, false, true, "chunk index within the document (0 = first chunk, scored before any update)"};
  Axis y{lo < 0 ? lo - pad : 0, hi + pad, false, false, "bpb without TTT − with TTT"};
  Chart c("Mean TTT gain by chunk (" + run_name(d) + ")", x, y);
  c.caption(std::to_string(chunks) + " chunks; per index: (Σ nll_base − Σ nll) / ln 2 / Σ bytes; overall " +
            fmt("%.5f", d.bpb) + " bpb");
  for (const ChunkGain& g : gains) {
    const double x0 = c.px(g.index - 0.4), x1 = c.px(g.index + 0.4);
    const double y0 = c.py(0), y1 = c.py(g.gain_bpb());
    c.svg().rect(x0, std::min(y0, y1), x1 - x0, std::fabs(y1 - y0), g.gain_bpb() >= 0 ? "#2ca02c" : "#d62728", 0.85);
  }
  c.svg().line(c.plot_left(), c.py(0), c.plot_right(), c.py(0), "#444");
  c.legend("TTT lowers bpb", "#2ca02c");
  c.legend("TTT raises bpb", "#d62728");
  return c.str();
}

std::string default_report_prefix(const std::string& dump_path) {
  for (const char* ext : {".h5", ".hdf5"}) {
    const std::string e = ext;
    if (dump_path.size() > e.size() && dump_path.compare(dump_path.size() - e.size(), e.size(), e) == 0)
      return dump_path.substr(0, dump_path.size() - e.size());
  }
  return dump_path;
}

Report write_report(const std::string& dump_path, const std::string& prefix) {
  Report r;
  r.dump = read_eval_dump(dump_path);
  const EvalDump& d = r.dump;
  r.buckets = length_buckets(d);
  r.gains = chunk_gains(d);

  const bool base = !d.doc_nll_base.empty();
  uint64_t docs = 0;
  double nll_base = 0;
  for (size_t i = 0; i < d.doc_start.size(); ++i) docs += scored(d, i);
  for (double v : d.doc_nll_base) nll_base += v;
  std::string& s = r.summary;
  char line[256];
  std::snprintf(line, sizeof line, "%-10s %s (%s; pgolf %s)\n", "report", dump_path.c_str(), run_name(d).c_str(),
                d.pgolf_version.c_str());
  s += line;
  std::snprintf(line, sizeof line, "%-10s %.6f ± %.6f over %llu documents, %llu targets, %llu bytes\n", "bpb", d.bpb,
                d.bpb_stderr, (unsigned long long)docs, (unsigned long long)d.targets, (unsigned long long)d.bytes);
  s += line;
  if (base) {
    const double b = ratio_bpb(nll_base, d.bytes);
    std::snprintf(line, sizeof line, "%-10s %.6f without TTT (gain %+.6f)\n", "bpb base", b, b - d.bpb);
    s += line;
  }
  std::snprintf(line, sizeof line, "%-19s %7s %7s %10s%s\n", "length (tokens)", "docs", "bytes%", "bpb",
                base ? "   no TTT      gain" : "");
  s += line;
  for (const LengthBucket& b : r.buckets) {
    const std::string range = std::to_string(b.lo) + "-" + (b.hi == UINT64_MAX ? "" : std::to_string(b.hi));
    std::snprintf(line, sizeof line, "%-19s %7llu %6.1f%% %10.5f", range.c_str(), (unsigned long long)b.docs,
                  d.bytes ? 100.0 * double(b.bytes) / double(d.bytes) : 0.0, b.bpb());
    s += line;
    if (base) {
      std::snprintf(line, sizeof line, " %9.5f %+9.5f", b.bpb_base(), b.bpb_base() - b.bpb());
      s += line;
    }
    s += "\n";
  }

  const std::string docs_svg = prefix + "_docs.svg";
  write_file_atomic(docs_svg, doc_bpb_svg(d, r.buckets));
  r.files.push_back(docs_svg);
  if (!r.gains.empty()) {
    const std::string gain_svg = prefix + "_ttt_gain.svg";
    write_file_atomic(gain_svg, ttt_gain_svg(d, r.gains));
    r.files.push_back(gain_svg);
  } else if (!d.chunk_doc.empty()) {
    s += "chunks     no chunks/nll_base in the dump: no TTT gain figure\n";
  }
  for (const std::string& f : r.files) s += "wrote      " + f + "\n";
  return r;
}

}  // namespace pgolf
