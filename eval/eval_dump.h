// Per-token and per-document scores of an evaluation (`pgolf eval --dump`,
// and the TTT command's dump), as an HDF5 file h5py reads. docs/DUMP_FORMAT.md
// is the schema; this struct mirrors it field by field.
//
// Documents: in stream order (a BOS starts one; a target belongs to the
// document its context ends in). `pgolf eval` adds one last entry, as in
// EvalResult::docs, for targets whose context starts before the first BOS
// (usually none); TTT dumps may leave it out. Optional arrays are written only
// when non-empty and read back empty when absent.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace pgolf {

class DocumentIndex;
struct EvalResult;

inline constexpr const char* kEvalDumpFormat = "pgolf-eval-dump";
inline constexpr int64_t kEvalDumpFormatVersion = 1;

struct EvalDump {
  // ---- root attributes
  std::string kind = "eval";  // "eval" (pgolf eval) or "ttt"
  std::string pgolf_version;  // read back; the writer always stamps its own
  std::string model, tokenizer, plan, precision;
  std::vector<std::string> val;  // the --val files or globs as given
  uint32_t seq_len = 0, stride = 0;
  bool doc_mask = false;
  double bpb = 0, bpb_stderr = 0, loss = 0, nll_sum = 0;
  uint64_t targets = 0, bytes = 0;
  std::map<std::string, std::string> notes;  // extra string attributes (e.g. TTT settings as JSON)

  // ---- tokens/: one entry per scoring of a target, in evaluation order
  // (optional as a group: all four or none). A sliding legacy plan scores some
  // targets several times: each scoring is its own entry.
  std::vector<uint64_t> token_position;  // stream position of the predicted token
  std::vector<float> token_nll;          // nats
  std::vector<uint16_t> token_bytes;
  std::vector<uint32_t> token_doc;  // index into docs/

  // ---- docs/: one entry per document (required)
  std::vector<uint64_t> doc_start;   // stream position of its BOS (the leading entry: 0)
  std::vector<uint64_t> doc_length;  // tokens, its BOS included
  std::vector<double> doc_nll;       // nats, summed over its scorings
  std::vector<uint64_t> doc_bytes, doc_targets;
  std::vector<double> doc_nll_base;  // optional (TTT): the same without adaptation

  // ---- chunks/: TTT chunks (optional as a group; chunk_nll_base may be absent)
  std::vector<uint32_t> chunk_doc;    // index into docs/
  std::vector<uint32_t> chunk_index;  // 0-based chunk number inside its document
  std::vector<double> chunk_nll, chunk_nll_base;
  std::vector<uint64_t> chunk_bytes;
};

// Writes atomically (data/atomic_file.h); checks array lengths and indices
// first. Throws pgolf::Error "PATH: problem".
void write_eval_dump(const std::string& path, const EvalDump& dump);
// Reads and validates (format, version, required datasets, lengths, indices).
EvalDump read_eval_dump(const std::string& path);

// The totals, docs/ and (when captured) tokens/ of an evaluation; the caller
// fills the run's description (model, val, plan, ...). `docs` is the index the
// evaluator used (same stream, same BOS id).
EvalDump eval_dump_from(const EvalResult& result, const DocumentIndex& docs);

}  // namespace pgolf
