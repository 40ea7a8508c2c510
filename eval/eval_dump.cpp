#include "eval/eval_dump.h"

#include <set>

#include "data/document_index.h"
#include "data/error.h"
#include "eval/evaluator.h"
#include "model/h5_file.h"

#ifndef PGOLF_VERSION
#define PGOLF_VERSION "unknown"
#endif

namespace pgolf {

namespace {

// Root attributes the schema names; any other string attribute is a note.
const std::set<std::string> kKnownAttrs = {
    "format", "format_version", "pgolf_version", "kind", "model", "tokenizer", "val", "plan", "precision",
    "seq_len", "stride", "doc_mask", "bpb", "bpb_stderr", "loss", "nll_sum", "targets", "bytes"};

template <class T>
uint64_t bytes_of(const std::vector<T>& v) {
  return v.size() * sizeof(T);
}

// Lengths agree inside each group and every index points at a document.
void validate(const std::string& path, const EvalDump& d) {
  const size_t D = d.doc_start.size();
  auto same = [&](size_t n, size_t want, const char* name, const char* of) {
    if (n != want)
      fail(path, std::string(name) + " has " + std::to_string(n) + " entries, " + of + " has " + std::to_string(want));
  };
  same(d.doc_length.size(), D, "docs/length", "docs/start");
  same(d.doc_nll.size(), D, "docs/nll", "docs/start");
  same(d.doc_bytes.size(), D, "docs/bytes", "docs/start");
  same(d.doc_targets.size(), D, "docs/targets", "docs/start");
  if (!d.doc_nll_base.empty()) same(d.doc_nll_base.size(), D, "docs/nll_base", "docs/start");
  const size_t T = d.token_position.size();
  same(d.token_nll.size(), T, "tokens/nll", "tokens/position");
  same(d.token_bytes.size(), T, "tokens/bytes", "tokens/position");
  same(d.token_doc.size(), T, "tokens/doc", "tokens/position");
  const size_t C = d.chunk_doc.size();
  same(d.chunk_index.size(), C, "chunks/index", "chunks/doc");
  same(d.chunk_nll.size(), C, "chunks/nll", "chunks/doc");
  same(d.chunk_bytes.size(), C, "chunks/bytes", "chunks/doc");
  if (!d.chunk_nll_base.empty()) same(d.chunk_nll_base.size(), C, "chunks/nll_base", "chunks/doc");
  for (size_t i = 0; i < T; ++i)
    if (d.token_doc[i] >= D)
      fail(path, "tokens/doc[" + std::to_string(i) + "] = " + std::to_string(d.token_doc[i]) + " but there are " +
                     std::to_string(D) + " documents");
  for (size_t i = 0; i < C; ++i)
    if (d.chunk_doc[i] >= D)
      fail(path, "chunks/doc[" + std::to_string(i) + "] = " + std::to_string(d.chunk_doc[i]) + " but there are " +
                     std::to_string(D) + " documents");
}

}  // namespace

void write_eval_dump(const std::string& path, const EvalDump& d) {
  validate(path, d);
  for (const auto& [k, v] : d.notes)
    if (kKnownAttrs.count(k)) fail(path, "note '" + k + "' would replace a schema attribute");
  const uint64_t payload = bytes_of(d.token_position) + bytes_of(d.token_nll) + bytes_of(d.token_bytes) +
                           bytes_of(d.token_doc) + 6 * 8 * d.doc_start.size() + 5 * 8 * d.chunk_doc.size();
  H5Writer w(path, payload);
  w.attr_string("format", kEvalDumpFormat);
  w.attr_int("format_version", kEvalDumpFormatVersion);
  w.attr_string("pgolf_version", PGOLF_VERSION);
  w.attr_string("kind", d.kind);
  w.attr_string("model", d.model);
  w.attr_string("tokenizer", d.tokenizer);
  w.attr_strings("val", d.val);
  w.attr_string("plan", d.plan);
  w.attr_string("precision", d.precision);
  w.attr_int("seq_len", d.seq_len);
  w.attr_int("stride", d.stride);
  w.attr_int("doc_mask", d.doc_mask);
  w.attr_float("bpb", d.bpb);
  w.attr_float("bpb_stderr", d.bpb_stderr);
  w.attr_float("loss", d.loss);
  w.attr_float("nll_sum", d.nll_sum);
  w.attr_int("targets", int64_t(d.targets));
  w.attr_int("bytes", int64_t(d.bytes));
  for (const auto& [k, v] : d.notes) w.attr_string(k, v);

  if (!d.token_position.empty()) {
    w.group("tokens");
    w.dataset("tokens/position", d.token_position);
    w.dataset("tokens/nll", d.token_nll);
    w.dataset("tokens/bytes", d.token_bytes);
    w.dataset("tokens/doc", d.token_doc);
  }
  w.group("docs");
  w.dataset("docs/start", d.doc_start);
  w.dataset("docs/length", d.doc_length);
  w.dataset("docs/nll", d.doc_nll);
  w.dataset("docs/bytes", d.doc_bytes);
  w.dataset("docs/targets", d.doc_targets);
  if (!d.doc_nll_base.empty()) w.dataset("docs/nll_base", d.doc_nll_base);
  if (!d.chunk_doc.empty()) {
    w.group("chunks");
    w.dataset("chunks/doc", d.chunk_doc);
    w.dataset("chunks/index", d.chunk_index);
    w.dataset("chunks/nll", d.chunk_nll);
    w.dataset("chunks/bytes", d.chunk_bytes);
    if (!d.chunk_nll_base.empty()) w.dataset("chunks/nll_base", d.chunk_nll_base);
  }
  w.commit();
}

EvalDump read_eval_dump(const std::string& path) {
  H5Reader r(path);
  if (!r.has_attr("format")) fail(path, "not a pgolf eval dump (no 'format' attribute)");
  const std::string format = r.attr_string("format");
  if (format != kEvalDumpFormat) fail(path, "not a pgolf eval dump (format is '" + format + "')");
  const int64_t version = r.attr_int("format_version");
  if (version != kEvalDumpFormatVersion)
    fail(path, "eval dump format_version " + std::to_string(version) + " is not supported (this pgolf reads " +
                   std::to_string(kEvalDumpFormatVersion) + ")");
  EvalDump d;
  d.pgolf_version = r.attr_string("pgolf_version");
  d.kind = r.attr_string("kind");
  d.model = r.attr_string("model");
  d.tokenizer = r.attr_string("tokenizer");
  d.val = r.attr_strings("val");
  d.plan = r.attr_string("plan");
  d.precision = r.attr_string("precision");
  d.seq_len = uint32_t(r.attr_int("seq_len"));
  d.stride = uint32_t(r.attr_int("stride"));
  d.doc_mask = r.attr_int("doc_mask") != 0;
  d.bpb = r.attr_float("bpb");
  d.bpb_stderr = r.attr_float("bpb_stderr");
  d.loss = r.attr_float("loss");
  d.nll_sum = r.attr_float("nll_sum");
  d.targets = uint64_t(r.attr_int("targets"));
  d.bytes = uint64_t(r.attr_int("bytes"));
  for (const std::string& k : r.attr_names())
    if (!kKnownAttrs.count(k) && r.attr_is_string(k)) d.notes[k] = r.attr_string(k);  // other extras: skipped

  if (r.has("tokens")) {
    d.token_position = r.read<uint64_t>("tokens/position");
    d.token_nll = r.read<float>("tokens/nll");
    d.token_bytes = r.read<uint16_t>("tokens/bytes");
    d.token_doc = r.read<uint32_t>("tokens/doc");
  }
  d.doc_start = r.read<uint64_t>("docs/start");
  d.doc_length = r.read<uint64_t>("docs/length");
  d.doc_nll = r.read<double>("docs/nll");
  d.doc_bytes = r.read<uint64_t>("docs/bytes");
  d.doc_targets = r.read<uint64_t>("docs/targets");
  if (r.has("docs/nll_base")) d.doc_nll_base = r.read<double>("docs/nll_base");
  if (r.has("chunks")) {
    d.chunk_doc = r.read<uint32_t>("chunks/doc");
    d.chunk_index = r.read<uint32_t>("chunks/index");
    d.chunk_nll = r.read<double>("chunks/nll");
    d.chunk_bytes = r.read<uint64_t>("chunks/bytes");
    if (r.has("chunks/nll_base")) d.chunk_nll_base = r.read<double>("chunks/nll_base");
  }
  validate(path, d);
  return d;
}

EvalDump eval_dump_from(const EvalResult& res, const DocumentIndex& docs) {
  if (res.docs.size() != docs.size() + 1)
    throw Error("eval dump: the result has " + std::to_string(res.docs.size()) + " document entries, the index " +
                std::to_string(docs.size()) + " documents (+1 expected)");
  EvalDump d;
  d.bpb = res.bpb();
  d.bpb_stderr = res.bpb_stderr();
  d.loss = res.loss();
  d.nll_sum = res.nll_sum;
  d.targets = res.targets;
  d.bytes = res.bytes;
  for (size_t i = 0; i < res.docs.size(); ++i) {
    const bool leading = i == docs.size();  // targets before the first BOS
    d.doc_start.push_back(leading ? 0 : docs.doc(i).begin);
    d.doc_length.push_back(leading ? docs.leading_tokens() : docs.doc(i).length());
    d.doc_nll.push_back(res.docs[i].nll);
    d.doc_bytes.push_back(res.docs[i].bytes);
    d.doc_targets.push_back(res.docs[i].targets);
  }
  const size_t n = res.scored.size();
  d.token_position.resize(n);
  d.token_nll.resize(n);
  d.token_bytes.resize(n);
  d.token_doc.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const ScoredTarget& s = res.scored[i];
    if (s.bytes > UINT16_MAX) throw Error("eval dump: a target of " + std::to_string(s.bytes) + " bytes");
    d.token_position[i] = s.target + 1;  // the predicted token's position
    d.token_nll[i] = float(s.nll);       // exact for bf16/f32 evaluation (the model's output is float32)
    d.token_bytes[i] = uint16_t(s.bytes);
    d.token_doc[i] = s.doc;
  }
  return d;
}

}  // namespace pgolf
