#include "quant/fit.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf::quant {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double value_entropy_bits(const at::Tensor& q) {
  const at::Tensor counts = at::bincount(q.reshape({-1}).to(at::kLong) + 128, {}, 256).to(at::kDouble);
  const double n = double(q.numel());
  if (n == 0) return 0;
  const at::Tensor p = counts.masked_select(counts > 0) / n;
  return -(p * at::log2(p)).sum().item<double>();
}

FitResult quantize_to_fit(const GptWeights& w, const QuantizeOptions& o, const ArtifactWriteOptions& wo,
                          uint64_t artifact_cap, bool fit) {
  using clock = std::chrono::steady_clock;
  FitResult f;
  f.plans = plan_tensors(w, o.policy);
  auto t0 = clock::now();
  f.results = quantize_tensors(w, f.plans, o);
  f.quantize_seconds += seconds_since(t0);
  // While fitting, sections are entropy-coded (fast). The caller's coding
  // can be a few percent smaller (`auto`, through the context coding) or
  // larger (a single codec), so a fit, or a miss by under 5%, is coded again
  // the caller's way and judged by that before any bits are lowered; the
  // final write is always that way.
  ArtifactWriteOptions fast = wo;
  fast.values = ValueCoding::Entropy;
  bool final_coding = false;  // f.bytes coded with wo
  auto encode = [&](const ArtifactWriteOptions& opts) {
    const auto e0 = clock::now();
    f.artifact = build_artifact(w, f.plans, f.results, o);
    f.bytes = encode_artifact(f.artifact, opts, &f.layout);
    f.encode_seconds += seconds_since(e0);
    f.fits = artifact_cap == 0 || f.bytes.size() <= artifact_cap;
    final_coding = opts.values == wo.values;
  };
  auto encode_for_fit = [&] {
    encode(fast);
    if (!final_coding && (f.fits || f.bytes.size() - artifact_cap <= artifact_cap / 20)) encode(wo);
  };
  if (fit) encode_for_fit();
  else encode(wo);
  std::map<std::pair<std::string, int>, TensorResult> trials;  // (name, bits) -> that tensor at those bits
  while (!f.fits && fit) {
    // Candidates: each group one bit lower.
    std::map<std::string, std::vector<size_t>> groups;  // group -> indices of the plans it lowers
    for (size_t i = 0; i < f.plans.size(); ++i)
      if (f.plans[i].action == TensorAction::Quantize && f.plans[i].bits > 2) groups[f.plans[i].group].push_back(i);
    std::string best;
    double best_score = std::numeric_limits<double>::infinity(), best_err = 0, best_bytes = 0;
    t0 = clock::now();
    for (const auto& [g, idx] : groups) {
      std::vector<TensorPlan> todo;
      for (size_t i : idx) {
        TensorPlan p = f.plans[i];
        p.bits -= 1;
        if (!trials.count({p.name, p.bits})) todo.push_back(p);
      }
      if (!todo.empty())
        for (auto& [n, r] : quantize_tensors(w, todo, o)) trials[{n, r.plan.bits}] = r;
      double derr = 0, dbytes = 0;
      for (size_t i : idx) {
        const TensorResult& cur = f.results.at(f.plans[i].name);
        const TensorResult& low = trials.at({f.plans[i].name, f.plans[i].bits - 1});
        derr += low.error - cur.error;
        dbytes += double(cur.numel) * (value_entropy_bits(cur.qm.q) - value_entropy_bits(low.qm.q)) / 8.0;
      }
      const double score = derr / std::max(dbytes, 1.0);
      if (dbytes > 0 && score < best_score) {
        best = g;
        best_score = score;
        best_err = derr;
        best_bytes = dbytes;
      }
    }
    f.quantize_seconds += seconds_since(t0);
    if (best.empty()) break;  // nothing left that saves bytes
    std::string from, to;
    for (size_t i : groups.at(best)) {
      TensorPlan& p = f.plans[i];
      if (from.empty()) from = std::to_string(p.bits), to = std::to_string(p.bits - 1);
      p.bits -= 1;
      f.results[p.name] = trials.at({p.name, p.bits});
    }
    encode_for_fit();
    f.steps.push_back({best, from + "->" + to, best_err, best_bytes, f.bytes.size()});
    if (o.log) o.log("fit: " + best + " " + from + "->" + to + " bits: " + std::to_string(f.bytes.size()) + " bytes");
  }
  if (!final_coding) encode(wo);
  return f;
}

}  // namespace pgolf::quant
