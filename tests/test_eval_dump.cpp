// Eval dumps (eval/eval_dump.h) and `pgolf report` (eval/report.h): writer and
// reader round trip, the evaluator's per-target capture against its own sums,
// and the report's SVGs and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "data/byte_counter.h"
#include "data/document_index.h"
#include "data/shard.h"
#include "data/token_stream.h"
#include "eval/eval_dump.h"
#include "eval/evaluator.h"
#include "eval/report.h"
#include "model/checkpoint.h"
#include "model/h5_file.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

// A dump with every field set; D documents, `with_chunks` adds TTT data.
EvalDump synthetic_dump(size_t D, bool with_chunks, uint32_t seed = 3) {
  std::mt19937 rng(seed);
  EvalDump d;
  d.model = "model.h5";
  d.tokenizer = "tok.model";
  d.val = {"data/fineweb_val_*.bin", "other dir/x.bin"};
  d.plan = "current";
  d.precision = "f32";
  d.seq_len = 64;
  d.stride = 16;
  d.doc_mask = true;
  d.notes["ttt"] = "{\"rank\": 8}";
  uint64_t pos = 0;
  for (size_t i = 0; i < D; ++i) {
    const uint64_t len = 2 + rng() % (i % 3 == 0 ? 2000 : 120);
    d.doc_start.push_back(pos);
    d.doc_length.push_back(len);
    double nll = 0;
    uint64_t bytes = 0;
    for (uint64_t j = 1; j < len; ++j) {
      const float v = float(rng() % 1000) / 250.0f;
      const uint16_t b = uint16_t(1 + rng() % 4);
      d.token_position.push_back(pos + j);
      d.token_nll.push_back(v);
      d.token_bytes.push_back(b);
      d.token_doc.push_back(uint32_t(i));
      nll += v;
      bytes += b;
    }
    d.doc_nll.push_back(nll);
    d.doc_bytes.push_back(bytes);
    d.doc_targets.push_back(len - 1);
    d.nll_sum += nll;
    d.bytes += bytes;
    d.targets += len - 1;
    pos += len;
    if (with_chunks) {
      d.kind = "ttt";
      d.doc_nll_base.push_back(nll * 1.05);
      const uint64_t chunks = (len - 1 + 31) / 32;
      for (uint64_t c = 0; c < chunks; ++c) {
        d.chunk_doc.push_back(uint32_t(i));
        d.chunk_index.push_back(uint32_t(c));
        d.chunk_nll.push_back(nll / double(chunks));
        d.chunk_nll_base.push_back(nll / double(chunks) * (1 + 0.01 * double(c % 7)) - (c == 2 ? 5.0 : 0.0));
        d.chunk_bytes.push_back(bytes / chunks);
      }
    }
  }
  d.loss = d.nll_sum / double(d.targets);
  d.bpb = d.nll_sum / std::log(2.0) / double(d.bytes);
  d.bpb_stderr = 0.0123;
  return d;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Basic XML well-formedness: one root <svg>, tags balanced, attribute values
// quoted, no stray '<', no NaN or infinity printed as a number. Returns "" or the problem.
std::string svg_problem(const std::string& s) {
  size_t p = 0;
  if (s.compare(0, 5, "<?xml") == 0) p = s.find("?>") + 2;
  std::vector<std::string> stack;
  int roots = 0;
  while (p < s.size()) {
    const size_t lt = s.find('<', p);
    if (lt == std::string::npos) break;
    if (s.find('>', p) < lt) return "stray '>' before offset " + std::to_string(lt);
    const size_t gt = s.find('>', lt);
    if (gt == std::string::npos) return "unterminated tag";
    const std::string tag = s.substr(lt + 1, gt - lt - 1);
    if (tag.find('<') != std::string::npos) return "'<' inside a tag";
    if (std::count(tag.begin(), tag.end(), '"') % 2) return "unbalanced quotes in <" + tag + ">";
    if (tag.find("nan") != std::string::npos || tag.find("inf") != std::string::npos) return "non-finite number in <" + tag + ">";
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return "unbalanced </" + tag.substr(1) + ">";
      stack.pop_back();
    } else {
      const std::string name = tag.substr(0, tag.find_first_of(" /"));
      if (stack.empty()) {
        if (name != "svg") return "root element is <" + name + ">";
        ++roots;
      }
      if (tag.back() != '/') stack.push_back(name);
    }
    p = gt + 1;
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return std::to_string(roots) + " root elements";
  return "";
}

size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(EvalDump, RoundTripKeepsEveryField) {
  TempDir dir;
  const EvalDump d = synthetic_dump(40, true);
  write_eval_dump(dir / "run.h5", d);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"run.h5"}) << "no temporary left behind";
  const EvalDump r = read_eval_dump(dir / "run.h5");
  EXPECT_EQ(r.kind, "ttt");
  EXPECT_FALSE(r.pgolf_version.empty());
  EXPECT_EQ(r.model, d.model);
  EXPECT_EQ(r.tokenizer, d.tokenizer);
  EXPECT_EQ(r.val, d.val);
  EXPECT_EQ(r.plan, d.plan);
  EXPECT_EQ(r.precision, d.precision);
  EXPECT_EQ(r.seq_len, d.seq_len);
  EXPECT_EQ(r.stride, d.stride);
  EXPECT_EQ(r.doc_mask, d.doc_mask);
  EXPECT_EQ(r.bpb, d.bpb);
  EXPECT_EQ(r.bpb_stderr, d.bpb_stderr);
  EXPECT_EQ(r.loss, d.loss);
  EXPECT_EQ(r.nll_sum, d.nll_sum);
  EXPECT_EQ(r.targets, d.targets);
  EXPECT_EQ(r.bytes, d.bytes);
  EXPECT_EQ(r.notes, d.notes);
  EXPECT_EQ(r.token_position, d.token_position);
  EXPECT_EQ(r.token_nll, d.token_nll);
  EXPECT_EQ(r.token_bytes, d.token_bytes);
  EXPECT_EQ(r.token_doc, d.token_doc);
  EXPECT_EQ(r.doc_start, d.doc_start);
  EXPECT_EQ(r.doc_length, d.doc_length);
  EXPECT_EQ(r.doc_nll, d.doc_nll);
  EXPECT_EQ(r.doc_bytes, d.doc_bytes);
  EXPECT_EQ(r.doc_targets, d.doc_targets);
  EXPECT_EQ(r.doc_nll_base, d.doc_nll_base);
  EXPECT_EQ(r.chunk_doc, d.chunk_doc);
  EXPECT_EQ(r.chunk_index, d.chunk_index);
  EXPECT_EQ(r.chunk_nll, d.chunk_nll);
  EXPECT_EQ(r.chunk_nll_base, d.chunk_nll_base);
  EXPECT_EQ(r.chunk_bytes, d.chunk_bytes);
}

TEST(EvalDump, OptionalGroupsAreLeftOutWhenEmpty) {
  TempDir dir;
  EvalDump d = synthetic_dump(5, false);
  d.token_position.clear(), d.token_nll.clear(), d.token_bytes.clear(), d.token_doc.clear();
  d.notes.clear();
  write_eval_dump(dir / "docs_only.h5", d);
  {
    H5Reader h(dir / "docs_only.h5");
    EXPECT_FALSE(h.has("tokens"));
    EXPECT_FALSE(h.has("chunks"));
    EXPECT_FALSE(h.has("docs/nll_base"));
    EXPECT_TRUE(h.has("docs/nll"));
    EXPECT_EQ(h.attr_string("format"), kEvalDumpFormat);
  }
  const EvalDump r = read_eval_dump(dir / "docs_only.h5");
  EXPECT_TRUE(r.token_nll.empty());
  EXPECT_TRUE(r.chunk_doc.empty());
  EXPECT_EQ(r.doc_nll, d.doc_nll);
}

TEST(EvalDump, WriterRefusesInconsistentArraysAndWritesNothing) {
  TempDir dir;
  EvalDump d = synthetic_dump(4, true);
  d.token_doc[3] = 4;
  EXPECT_EQ(error_of([&] { write_eval_dump(dir / "bad.h5", d); }),
            dir / "bad.h5" + ": tokens/doc[3] = 4 but there are 4 documents");
  d = synthetic_dump(4, true);
  d.chunk_nll.pop_back();
  EXPECT_NE(error_of([&] { write_eval_dump(dir / "bad.h5", d); }).find("chunks/nll has"), std::string::npos);
  d = synthetic_dump(4, false);
  d.notes["bpb"] = "1.0";
  EXPECT_NE(error_of([&] { write_eval_dump(dir / "bad.h5", d); }).find("schema attribute"), std::string::npos);
  EXPECT_TRUE(dir.list().empty());
}

// ---- capture in the evaluator ---------------------------------------------------

struct Stream {
  ModelConfig cfg = tiny_config();
  GptWeights w = random_weights(cfg, 21);
  std::vector<uint16_t> tok;
  ByteCounter bc{{0, 0, 0, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}};
  TempDir dir;
  Stream() {
    // starts mid-document: targets before the first BOS
    tok = synthetic_bos_stream({9, 14, 22}, 230, cfg.vocab_size, 7);
    bc = synthetic_byte_counter(cfg.vocab_size);
    write_shard(dir / "fineweb_val_000000.bin", tok);
  }
};

EvalOptions opts(PlanKind k, uint32_t S, bool capture) {
  EvalOptions o;
  o.plan = k;
  o.seq_len = 16;
  o.stride = S;
  o.batch_tokens = 48;
  o.precision = Precision::F32;  // the model's output is float32: the dump's float32 NLL is exact
  o.capture_targets = capture;
  return o;
}

TEST(EvalDump, CapturedTargetsAddUpToTheResult) {
  Stream f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const DocumentIndex docs(f.tok.data(), f.tok.size(), 1);
  for (auto [kind, S] : {std::pair{PlanKind::Standard, 0u}, {PlanKind::Current, 4u}, {PlanKind::Legacy, 8u}}) {
    SCOPED_TRACE(plan_kind_name(kind));
    const EvalResult r = evaluate(f.w, s, f.bc, opts(kind, S, true));
    const EvalResult off = evaluate(f.w, s, f.bc, opts(kind, S, false));
    EXPECT_TRUE(off.scored.empty());
    EXPECT_EQ(off.nll_sum, r.nll_sum);
    ASSERT_EQ(r.scored.size(), r.targets);

    // In evaluation order the captured values sum to the same float64 totals, bit for bit.
    double nll = 0;
    uint64_t bytes = 0;
    std::vector<DocumentTotals> per_doc(r.docs.size());
    for (const ScoredTarget& t : r.scored) {
      nll += t.nll;
      bytes += t.bytes;
      ASSERT_LT(t.doc, per_doc.size());
      per_doc[t.doc].nll += t.nll;
      per_doc[t.doc].bytes += t.bytes;
      per_doc[t.doc].targets += 1;
      EXPECT_EQ(t.bytes, f.bc.bytes(f.tok[t.target], f.tok[t.target + 1]));
    }
    EXPECT_EQ(nll, r.nll_sum);
    EXPECT_EQ(bytes, r.bytes);
    for (size_t i = 0; i < r.docs.size(); ++i) {
      EXPECT_EQ(per_doc[i].nll, r.docs[i].nll) << "doc " << i;
      EXPECT_EQ(per_doc[i].bytes, r.docs[i].bytes) << "doc " << i;
      EXPECT_EQ(per_doc[i].targets, r.docs[i].targets) << "doc " << i;
    }

    // Each target is recorded as often as the plan scores it (legacy repeats the tail).
    const std::vector<uint32_t> want = target_counts(make_eval_plan(f.tok.size(), opts(kind, S, true)));
    std::vector<uint32_t> got(want.size());
    for (const ScoredTarget& t : r.scored) got.at(t.target) += 1;
    EXPECT_EQ(got, want);
    if (kind == PlanKind::Legacy) {
      EXPECT_GT(*std::max_element(got.begin(), got.end()), 1u);
    }

    // Through the file: float32 per target, float64 per document.
    const std::string path = f.dir / (std::string(plan_kind_name(kind)) + ".h5");
    write_eval_dump(path, eval_dump_from(r, docs));
    const EvalDump d = read_eval_dump(path);
    ASSERT_EQ(d.token_nll.size(), r.targets);
    double file_nll = 0;
    for (size_t i = 0; i < d.token_nll.size(); ++i) {
      file_nll += d.token_nll[i];
      EXPECT_EQ(d.token_position[i], r.scored[i].target + 1);
      const uint32_t doc = d.token_doc[i];
      if (doc < docs.size()) {  // inside its document: start < position <= start + length
        EXPECT_GT(d.token_position[i], d.doc_start[doc]);
        EXPECT_LE(d.token_position[i], d.doc_start[doc] + d.doc_length[doc]);
      } else {
        EXPECT_EQ(doc, docs.size());
        EXPECT_LE(d.token_position[i], docs.leading_tokens());
      }
    }
    EXPECT_EQ(file_nll, r.nll_sum);
    EXPECT_EQ(d.doc_start.size(), docs.size() + 1);
    EXPECT_EQ(d.doc_length.back(), 3u) << "the entry for targets before the first BOS";
    EXPECT_GT(d.doc_targets.back(), 0u);
    for (size_t i = 0; i < r.docs.size(); ++i) EXPECT_EQ(d.doc_nll[i], r.docs[i].nll);
    EXPECT_EQ(d.bpb, r.bpb());
    EXPECT_EQ(d.bpb_stderr, r.bpb_stderr());
  }
}

TEST(EvalDump, RankSplitCapturesTheSameTargetsInOrder) {
  Stream f;
  TokenStream s({f.dir / "fineweb_val_*.bin"});
  const EvalResult whole = evaluate(f.w, s, f.bc, opts(PlanKind::Current, 4, true));
  EvalResult sum;
  for (int rank = 0; rank < 3; ++rank) {
    EvalOptions o = opts(PlanKind::Current, 4, true);
    o.rank = rank;
    o.world = 3;
    sum.add(evaluate(f.w, s, f.bc, o));
  }
  ASSERT_EQ(sum.scored.size(), whole.scored.size());
  for (size_t i = 0; i < whole.scored.size(); ++i) {
    EXPECT_EQ(sum.scored[i].target, whole.scored[i].target);
    EXPECT_EQ(sum.scored[i].doc, whole.scored[i].doc);
    EXPECT_EQ(sum.scored[i].bytes, whole.scored[i].bytes);
  }
}

// ---- report -----------------------------------------------------------------------

TEST(Report, WritesWellFormedSvgsAndASummary) {
  TempDir dir;
  write_eval_dump(dir / "ttt.h5", synthetic_dump(300, true));
  const Report r = write_report(dir / "ttt.h5", dir / "fig/run");
  ASSERT_EQ(r.files, (std::vector<std::string>{dir / "fig/run_docs.svg", dir / "fig/run_ttt_gain.svg"}));
  const std::string docs = slurp(r.files[0]), gain = slurp(r.files[1]);
  EXPECT_EQ(svg_problem(docs), "");
  EXPECT_EQ(svg_problem(gain), "");
  EXPECT_GE(count_of(docs, "<circle"), 300u) << "one point per document (+ trend markers)";
  EXPECT_NE(docs.find("stroke-dasharray"), std::string::npos) << "the overall bpb line";
  const std::vector<ChunkGain> gains = chunk_gains(r.dump);
  ASSERT_FALSE(gains.empty());
  EXPECT_EQ(count_of(gain, "<rect") - 1, gains.size()) << "one bar per chunk index (+ the background)";
  EXPECT_LT(gains[2].gain_bpb(), 0) << "chunk 2 made worse by construction";
  EXPECT_NE(gain.find("#d62728"), std::string::npos) << "negative gains drawn in red";
  EXPECT_EQ(list_dir(dir / "fig"), (std::vector<std::string>{"run_docs.svg", "run_ttt_gain.svg"}));

  // Buckets cover every scored document once, with the dump's bytes.
  uint64_t n = 0, bytes = 0;
  for (const LengthBucket& b : r.buckets) {
    n += b.docs;
    bytes += b.bytes;
    EXPECT_NE(r.summary.find(std::to_string(b.lo) + "-" + std::to_string(b.hi)), std::string::npos);
  }
  EXPECT_EQ(n, 300u);
  EXPECT_EQ(bytes, r.dump.bytes);
  EXPECT_NE(r.summary.find("without TTT"), std::string::npos);
}

TEST(Report, EvalDumpGivesOnlyTheDocumentFigure) {
  TempDir dir;
  write_eval_dump(dir / "eval.h5", synthetic_dump(3, false));
  const Report r = write_report(dir / "eval.h5", default_report_prefix(dir / "eval.h5"));
  EXPECT_EQ(r.files, std::vector<std::string>{dir / "eval_docs.svg"});
  EXPECT_EQ(svg_problem(slurp(r.files[0])), "");
  EXPECT_EQ(default_report_prefix("a/b.hdf5"), "a/b");
  EXPECT_EQ(default_report_prefix("dump"), "dump");
}

TEST(Report, FailsCleanlyOnFilesThatAreNotDumps) {
  TempDir dir;
  const std::string out = dir / "out";
  // Not there; not HDF5; HDF5 of another kind; a dump without its docs/ group; a truncated dump.
  EXPECT_EQ(error_of([&] { write_report(dir / "missing.h5", out); }),
            dir / "missing.h5" + ": cannot open: No such file or directory");
  write_file_atomic(dir / "text.h5", "not hdf5\n");
  EXPECT_EQ(error_of([&] { write_report(dir / "text.h5", out); }), dir / "text.h5" + ": not an HDF5 file");
  write_checkpoint(dir / "ckpt.h5", "{}", {});
  EXPECT_EQ(error_of([&] { write_report(dir / "ckpt.h5", out); }),
            dir / "ckpt.h5" + ": not a pgolf eval dump (format is 'pgolf-checkpoint')");
  {
    H5Writer w(dir / "nodocs.h5");
    w.attr_string("format", kEvalDumpFormat);
    w.attr_int("format_version", kEvalDumpFormatVersion);
    w.commit();
  }
  EXPECT_EQ(error_of([&] { write_report(dir / "nodocs.h5", out); }),
            dir / "nodocs.h5" + ": missing attribute 'pgolf_version'");
  {
    const EvalDump good = synthetic_dump(3, false);
    H5Writer w(dir / "partial.h5");
    for (const char* k : {"format", "pgolf_version", "kind", "model", "tokenizer", "plan", "precision"})
      w.attr_string(k, k == std::string("format") ? kEvalDumpFormat : "x");
    w.attr_strings("val", {});
    for (const char* k : {"format_version", "seq_len", "stride", "doc_mask", "targets", "bytes"}) w.attr_int(k, 1);
    for (const char* k : {"bpb", "bpb_stderr", "loss", "nll_sum"}) w.attr_float(k, 1.0);
    w.group("docs");
    w.dataset("docs/start", good.doc_start);
    w.dataset("docs/length", good.doc_length);
    w.dataset("docs/nll", std::vector<float>(3, 1.0f));
    w.commit();
  }
  EXPECT_EQ(error_of([&] { write_report(dir / "partial.h5", out); }),
            dir / "partial.h5" + ": missing dataset 'docs/bytes'");
  write_eval_dump(dir / "full.h5", synthetic_dump(50, true));
  const std::string bytes = slurp(dir / "full.h5");
  write_file_atomic(dir / "cut.h5", bytes.substr(0, bytes.size() / 2));
  const std::string e = error_of([&] { write_report(dir / "cut.h5", out); });
  EXPECT_EQ(e.rfind(dir / "cut.h5: ", 0), 0u) << e;
  EXPECT_TRUE(!exists(out + "_docs.svg") && !exists(out + "_ttt_gain.svg")) << "no figure from a bad dump";
}

}  // namespace
}  // namespace pgolf::test
