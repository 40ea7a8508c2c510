#include "ttt/ttt_audit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "data/byte_counter.h"
#include "data/error.h"

namespace pgolf {

namespace {

// A stream of whole documents cut from the validation stream: each sample
// document keeps its tokens and ends, as there, with the next document's BOS.
struct Sample {
  std::vector<uint16_t> tok;
  std::vector<uint64_t> starts;  // BOS position of each sample document, plus the final BOS
};

Sample make_sample(const std::vector<uint16_t>& tokens, uint64_t n, uint16_t bos, uint32_t chunk, uint32_t want) {
  std::vector<uint64_t> starts;
  for (uint64_t i = 0; i < n; ++i)
    if (tokens[i] == bos) starts.push_back(i);
  std::vector<size_t> chosen;
  // Short documents first (2-3 chunks: an update happens, the runs stay cheap), then longer, then single-chunk.
  for (auto [kmin, kmax] : {std::pair<uint64_t, uint64_t>{2, 3}, {4, UINT64_MAX}, {1, 1}})
    for (size_t i = 0; i + 1 < starts.size() && chosen.size() < want; ++i) {
      const uint64_t k = (starts[i + 1] - starts[i] + chunk - 1) / chunk;  // targets include the next BOS
      if (starts[i + 1] - starts[i] >= 2 && k >= kmin && k <= kmax && std::find(chosen.begin(), chosen.end(), i) == chosen.end()) chosen.push_back(i);
    }
  if (chosen.size() < 2) throw Error("ttt --audit: the validation stream has fewer than 2 complete documents");
  std::sort(chosen.begin(), chosen.end());
  Sample s;
  for (size_t i : chosen) {
    s.starts.push_back(s.tok.size());
    s.tok.insert(s.tok.end(), tokens.begin() + int64_t(starts[i]), tokens.begin() + int64_t(starts[i + 1]));
  }
  s.starts.push_back(s.tok.size());
  s.tok.push_back(bos);
  return s;
}

// Replaces tok[from, to) by other ids (never BOS, never the same id).
void edit_tokens(std::vector<uint16_t>& tok, uint64_t from, uint64_t to, int vocab, uint16_t bos) {
  for (uint64_t i = from; i < to; ++i) {
    int y = (int(tok[i]) + 1 + int(i % 5)) % vocab;
    while (y == bos || y == tok[i]) y = (y + 1) % vocab;
    tok[i] = uint16_t(y);
  }
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Positions in [lo, hi) where the two runs' scores (with and without TTT) differ.
uint64_t differing(const TttResult& a, const TttResult& b, uint64_t lo, uint64_t hi) {
  uint64_t d = 0;
  for (uint64_t t = lo; t < hi; ++t)
    d += !same_bits(a.target_nll[t], b.target_nll[t]) || !same_bits(a.target_base_nll[t], b.target_base_nll[t]);
  return d;
}

std::string num(uint64_t v) { return std::to_string(v); }

}  // namespace

bool TttAudit::ok() const {
  for (const TttAuditCheck& c : checks)
    if (!c.ok) return false;
  return !checks.empty();
}

TttAudit audit_ttt(const GptWeights& w, const std::vector<uint16_t>& tokens, const ByteCounter& bc,
                   const TttOptions& opt, uint32_t sample_docs, uint32_t batch_docs) {
  TttOptions o = opt;
  o.max_docs = 0;
  const uint64_t n_used = ttt_used_tokens(tokens, o);  // the documents the real run sees (after 0410's trim)
  const Sample s = make_sample(tokens, n_used, o.bos_id, o.chunk, sample_docs);
  o.trim = 0;
  o.batch_docs = batch_docs;
  o.rank = 0;
  o.world = 1;
  o.base = true;
  o.record_targets = true;
  o.progress = nullptr;
  auto run = [&](const std::vector<uint16_t>& tok, double lr) {
    TttOptions r = o;
    r.lr = lr;
    return run_ttt(w, tok, bc, r);
  };
  const uint64_t n = s.tok.size(), first = s.starts.front(), docs = s.starts.size() - 1;
  TttAudit audit;
  audit.sample_docs = docs;
  audit.sample_targets = n - 1 - first;
  const TttResult a = run(s.tok, o.lr);

  {  // coverage
    uint64_t wrong = 0;
    for (uint64_t t = 0; t < n; ++t) wrong += a.target_times[t] != (t > first ? 1 : 0);
    uint64_t doc_wrong = 0;
    for (uint64_t d = 0; d < docs; ++d) doc_wrong += a.docs[d].targets != s.starts[d + 1] - s.starts[d];
    const bool ok = wrong == 0 && doc_wrong == 0 && a.targets == n - 1 - first;
    audit.checks.push_back({"coverage", ok,
                            num(a.targets) + " targets of " + num(docs) + " documents scored; " + num(wrong) +
                                " positions not scored exactly once, " + num(doc_wrong) + " documents with wrong counts"});
  }
  // The batch of sample document 0, and a batch-mate of it.
  const TttPlan plan = make_ttt_plan(s.tok.data(), n, o.bos_id, o.chunk, o.context, o.batch_docs, 0, 1,
                                     TttSchedule{o.split, 0});
  uint32_t doc_a = 0, doc_b = 1;
  for (const TttBatch& b : plan.batches)
    if (std::find(b.docs.begin(), b.docs.end(), doc_a) != b.docs.end() && b.docs.size() > 1)
      doc_b = b.docs[0] == doc_a ? b.docs[1] : b.docs[0];
  {  // causality: edit document A after p (inside its second chunk when it has one)
    const uint64_t bos_a = s.starts[doc_a], end_a = s.starts[doc_a + 1];  // end_a: its last target (next BOS)
    const uint64_t P = end_a - bos_a;
    uint64_t p = P > o.chunk ? bos_a + o.chunk + std::max<uint64_t>(1, std::min<uint64_t>(o.chunk, P - o.chunk) / 2)
                             : bos_a + std::max<uint64_t>(1, P / 2);
    p = std::min(p, end_a - 2);
    std::vector<uint16_t> edited = s.tok;
    edit_tokens(edited, p + 1, end_a, w.config.vocab_size, o.bos_id);
    const TttResult c = run(edited, o.lr);
    const uint64_t before = differing(a, c, bos_a + 1, p + 1), others = differing(a, c, 0, bos_a + 1) +
                                                                        differing(a, c, end_a + 1, n);
    const bool changed = !same_bits(a.target_nll[p + 1], c.target_nll[p + 1]);
    audit.checks.push_back({"causality", before == 0 && others == 0 && changed,
                            "document " + num(doc_a) + " edited after position " + num(p) + ": " + num(before) +
                                " of its " + num(p - bos_a) + " targets <= p changed, " + num(others) +
                                " targets of other documents changed, the edited target " +
                                (changed ? "changed" : "did not change (inconclusive)")});
  }
  {  // independence: edit document B, a batch-mate of A when there is one
    const uint64_t bos_b = s.starts[doc_b], end_b = s.starts[doc_b + 1];
    std::vector<uint16_t> edited = s.tok;
    edit_tokens(edited, bos_b + 1, end_b, w.config.vocab_size, o.bos_id);
    const TttResult c = run(edited, o.lr);
    bool same_batch = false;
    for (const TttBatch& b : plan.batches)
      same_batch |= std::count(b.docs.begin(), b.docs.end(), doc_a) && std::count(b.docs.begin(), b.docs.end(), doc_b);
    const uint64_t others = differing(a, c, 0, bos_b + 1) + differing(a, c, end_b + 1, n);
    audit.checks.push_back({"independence", others == 0,
                            "document " + num(doc_b) + (same_batch ? " (same batch as document " + num(doc_a) + ")" : "") +
                                " edited: " + num(others) + " targets of other documents changed"});
  }
  {  // lr 0: adapters at their initialisation (B = 0) change nothing
    // Exact on the CPU. On CUDA the forward without autograd (the last step
    // of a batch) runs fused kernels for the plain model's logits but ATen
    // ops for the float32 sum with the head adapter: a reduction-order
    // difference, so float rounding is allowed there.
    const TttResult z = run(s.tok, 0.0);
    uint64_t diff = 0, base_diff = 0;
    double worst = 0;
    for (uint64_t t = first + 1; t < n; ++t) {
      diff += !same_bits(z.target_nll[t], z.target_base_nll[t]);
      worst = std::max(worst, std::abs(z.target_nll[t] - z.target_base_nll[t]) / (1.0 + std::abs(z.target_base_nll[t])));
      base_diff += !same_bits(z.target_base_nll[t], a.target_base_nll[t]);
    }
    char w[64];
    std::snprintf(w, sizeof w, "%.2g", worst);
    audit.checks.push_back({"no-op at lr 0", worst <= 1e-5 && base_diff == 0,
                            num(diff) + " targets not bit-identical to the plain model's scores (largest relative "
                                "difference " + w + "), " + num(base_diff) + " plain scores differ between runs"});
  }
  {  // the updates take effect after a document's first chunk
    uint64_t later = 0, moved = 0;
    for (const TttChunkTotals& ch : a.chunks)
      if (ch.index > 0)
        for (uint64_t t = ch.target_begin; t < ch.target_begin + ch.targets; ++t) {
          ++later;
          moved += !same_bits(a.target_nll[t], a.target_base_nll[t]);
        }
    const bool ok = later == 0 || o.lr == 0 || moved > 0;
    audit.checks.push_back({"updates", ok,
                            num(moved) + " of " + num(later) + " targets after a first chunk score differently with TTT" +
                                (later == 0 ? " (no document has a second chunk)" : "")});
  }
  return audit;
}

}  // namespace pgolf
