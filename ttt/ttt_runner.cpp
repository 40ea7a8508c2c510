#include "ttt/ttt_runner.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <optional>

#include "data/byte_counter.h"
#include "data/error.h"
#include "data/lap_timer.h"
#include "model/device_clock.h"
#include "model/distributed.h"
#include "model/host_copy.h"
#include "model/pch.h"
#include "ttt/adam.h"
#include "ttt/lora_adapters.h"
#include "ttt/ttt_step.h"

#if PGOLF_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace pgolf {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One step's inputs: inputs / targets [rows, width] int64, right-padded with
// token 0 as the reference pads (finished rows all 0); 1 for each row with a
// next chunk (trained on), else 0.
TttStepInputs step_inputs(const std::vector<uint16_t>& tok, const TttStep& st, const std::vector<int64_t>& rows,
                          at::ScalarType weight_type) {
  const int64_t n = int64_t(rows.size()), W = int64_t(st.width);
  at::Tensor in = at::zeros({n, W}, at::kLong), tg = at::zeros({n, W}, at::kLong);
  at::Tensor weight = at::zeros({n}, at::kDouble);
  auto pi = in.accessor<int64_t, 2>(), pt = tg.accessor<int64_t, 2>();
  auto pw = weight.accessor<double, 1>();
  for (int64_t b = 0; b < n; ++b) {
    const auto& row = st.rows[size_t(rows[size_t(b)])];
    if (!row) continue;
    const TttChunk& ch = *row;
    for (uint64_t j = 0; j < ch.input_len(); ++j) {
      pi[b][int64_t(j)] = tok[ch.context_begin + j];
      pt[b][int64_t(j)] = tok[ch.context_begin + j + 1];
    }
    pw[b] = ch.last ? 0.0 : 1.0;
  }
  return {in, tg, at::tensor(rows, at::kLong), weight.to(weight_type)};
}

// Adds one step's scores (nll: [step rows, width] float64 on the CPU) to the
// result; padding rows have none. Base scores come later (add_base_scores).
void accumulate(TttResult& r, const TttStep& st, const std::vector<int64_t>& rows, const std::vector<uint16_t>& tok,
                const ByteCounter& bc, const at::Tensor& nll) {
  auto pn = nll.accessor<double, 2>();
  const bool record = !r.target_times.empty();
  for (size_t b = 0; b < rows.size(); ++b) {
    if (!st.rows[size_t(rows[b])]) continue;
    const TttChunk& ch = *st.rows[size_t(rows[b])];
    TttChunkTotals ct{ch.doc, ch.index, ch.target_begin, uint32_t(ch.num_targets()), 0, 0.0, kNaN};
    for (uint64_t j = ch.score_offset(); j < ch.input_len(); ++j) {
      const uint64_t t = ch.context_begin + j + 1;  // target position: predicts tok[t] after tok[t - 1]
      const double v = pn[int64_t(b)][int64_t(j)];
      ct.nll += v;
      ct.bytes += bc.bytes(tok[t - 1], tok[t]);
      if (record) {
        r.target_nll[t] = v;
        r.target_times[t] += 1;
      }
    }
    DocumentTotals& d = r.docs[ch.doc];
    d.nll += ct.nll;
    d.bytes += ct.bytes;
    d.targets += ct.targets;
    r.nll_sum += ct.nll;
    r.bytes += ct.bytes;
    r.targets += ct.targets;
    r.chunks.push_back(ct);
  }
}

// The base scores (TttOptions::base) of this rank's documents: forwards of
// their own, without adapters, over ttt_base_windows -- a batch's windows
// longest first, as many rows as fit kBaseTokens positions, each row as wide
// as its forward's longest window rounded up to 64 columns (the padding comes
// after every real position, so causal attention never reads it). Windows
// come from one TTT batch at a time, so a document's forwards, and so its
// numbers, do not depend on the world size. On CUDA they run on a stream of
// their own, beside the TTT steps: they depend on nothing the steps write,
// and their kernels fill gaps the steps leave; the same kernels on the same
// shapes, so the same numbers.
class BaseScores {
 public:
  BaseScores(const GptWeights& w, const CastWeights& cast, Precision precision, const std::vector<uint16_t>& tok,
             const TttPlan& plan)
      : w_(w), cast_(cast), precision_(precision), tok_(tok), plan_(plan), by_doc_(plan.docs.size()),
        device_(w.get("tok_emb.weight").device()) {
#if PGOLF_WITH_CUDA
    if (device_.is_cuda()) stream_.emplace(c10::cuda::getStreamFromPool());
#endif
  }

  // Plans the forwards of a batch's base windows (issued by issue_next, in
  // the order planned).
  void add(const TttBatch& batch) {
    std::vector<TttBaseWindow> wins = ttt_base_windows(plan_, batch);
    std::stable_sort(wins.begin(), wins.end(),
                     [](const TttBaseWindow& a, const TttBaseWindow& b) { return a.input_len() > b.input_len(); });
    for (size_t i = 0; i < wins.size();) {
      const size_t n = std::min(wins.size() - i, std::max<size_t>(1, size_t(kBaseTokens / width(wins[i]))));
      todo_.emplace_back(wins.begin() + int64_t(i), wins.begin() + int64_t(i + n));
      i += n;
    }
  }

  size_t planned() const { return todo_.size(); }  // planned forwards not yet issued

  // Queues the next planned forward on the device; false when none is left.
  bool issue_next() {
    if (todo_.empty()) return false;
    std::vector<TttBaseWindow> rows = std::move(todo_.front());
    todo_.pop_front();
    // As evaluation windows: inputs from context_begin, scored from score_offset.
    std::vector<Window> wins;
    for (const TttBaseWindow& bw : rows)
      wins.push_back({bw.context_begin, uint32_t(bw.input_len()), uint32_t(bw.score_offset())});
    const WindowBatch b = make_window_batch(wins, 0, wins.size(), tok_, width(rows.front()));
    c10::NoGradGuard no_grad;
#if PGOLF_WITH_CUDA
    std::optional<c10::cuda::CUDAStreamGuard> on;
    if (stream_) on.emplace(*stream_);
#endif
    ForwardOptions fo;
    fo.precision = precision_;
    fo.cast = &cast_;
    fo.score_mask = to_device(b.mask, device_);
    fo.positions = find_score_positions(b.mask, device_, /*slots=*/false);
    fo.flash_backward = true;  // flash at every width: cuDNN would build a plan per new shape
    pending_.push_back(
        {std::move(rows), HostCopy(forward_nll(w_, to_device(b.inputs, device_), to_device(b.targets, device_), fo))});
    return true;
  }

  // Reads queued forwards back, oldest first, until `keep` are left.
  void read_back(size_t keep) {
    for (; pending_.size() > keep; pending_.pop_front()) {
      const at::Tensor nll = pending_.front().nll.wait().to(at::kDouble);
      auto pn = nll.accessor<double, 2>();
      for (size_t k = 0; k < pending_.front().rows.size(); ++k) {
        const TttBaseWindow& bw = pending_.front().rows[k];
        const TttDocument& doc = plan_.docs[bw.doc];
        std::vector<double>& v = by_doc_[bw.doc];
        if (v.empty()) v.assign(doc.num_targets(), kNaN);
        for (uint64_t j = bw.score_offset(); j < bw.input_len(); ++j)
          v[bw.context_begin + j - doc.bos] = pn[int64_t(k)][int64_t(j)];  // target context_begin + j + 1
      }
    }
  }

  // Target position t's base NLL (t a target of document doc after its first chunk).
  double at(uint32_t doc, uint64_t t) const { return by_doc_[doc][t - plan_.docs[doc].bos - 1]; }

 private:
  static constexpr int64_t kBaseTokens = 131072;  // positions per forward
  // A forward's row width: its longest window's, rounded up to 64 columns.
  int64_t width(const TttBaseWindow& longest) const {
    const uint64_t len = longest.input_len();
    return int64_t(std::min((len + 63) / 64 * 64, std::max<uint64_t>(len, plan_.context)));
  }
  struct Pending {
    std::vector<TttBaseWindow> rows;
    HostCopy nll;  // [rows, W]
  };
  const GptWeights& w_;
  const CastWeights& cast_;
  Precision precision_;
  const std::vector<uint16_t>& tok_;
  const TttPlan& plan_;
  std::vector<std::vector<double>> by_doc_;  // [doc][target - bos - 1]
  std::deque<std::vector<TttBaseWindow>> todo_;  // planned forwards, not yet issued
  std::deque<Pending> pending_;                   // issued, not yet read back
  at::Device device_;
#if PGOLF_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream_;
#endif
};

// Every chunk's base totals, in the order the chunks were scored: a
// document's first chunk from its TTT scores (fresh adapters add exactly
// zero), the later ones from the base forwards.
void add_base_scores(TttResult& r, const BaseScores& base) {
  const bool record = !r.target_times.empty();
  for (TttChunkTotals& ct : r.chunks) {
    const uint64_t t0 = ct.target_begin, t1 = ct.target_begin + ct.targets;
    if (ct.index == 0) {
      ct.base_nll = ct.nll;
      if (record) std::copy(r.target_nll.begin() + int64_t(t0), r.target_nll.begin() + int64_t(t1),
                            r.target_base_nll.begin() + int64_t(t0));
    } else {
      ct.base_nll = 0;
      for (uint64_t t = t0; t < t1; ++t) {
        const double v = base.at(ct.doc, t);
        ct.base_nll += v;
        if (record) r.target_base_nll[t] = v;
      }
    }
    DocumentTotals& db = r.base_docs[ct.doc];
    db.nll += ct.base_nll;
    db.bytes += ct.bytes;
    db.targets += ct.targets;
    r.base_nll_sum += ct.base_nll;
  }
}

double stderr_of(double nll_sum, uint64_t bytes, const std::vector<DocumentTotals>& docs) {
  EvalResult e;
  e.nll_sum = nll_sum;
  e.bytes = bytes;
  e.docs = docs;
  return e.bpb_stderr();
}

}  // namespace

TttOptions TttOptions::from_recipe(const std::string& name) {
  TttOptions o;  // the defaults are lora-0317
  if (name == "lora-0317") return o;
  if (name != "varlen-0410") throw Error("ttt: unknown recipe '" + name + "' (expected lora-0317 or varlen-0410)");
  o.recipe = name;
  o.lora_rank = 96;                                          // TTT_LORA_RANK
  o.targets = {"q", "k", "v", "o", "mlp", "head"};           // TTT_K_LORA / TTT_O_LORA / TTT_MLP_LORA = 1
  o.lr = 1e-4;                                               // TTT_LORA_LR
  o.beta1 = 0.0;                                             // TTT_BETA1
  o.beta2 = 0.999;                                           // TTT_BETA2
  o.eps = 1e-10;                                             // AdamW(eps=1e-10)
  o.weight_decay = 0.5;                                      // TTT_WEIGHT_DECAY
  o.adamw = true;                                            // torch.optim.AdamW
  o.grad_steps = 1;                                          // TTT_GRAD_STEPS
  o.chunk = 64;                                              // TTT_CHUNK_SIZE
  o.context = 2048;                                          // TTT_EVAL_SEQ_LEN
  o.batch_docs = 64;                                         // TTT_BATCH_SIZE
  o.trim = 2048;                                             // EVAL_SEQ_LEN (load_validation_tokens)
  o.split = TttSchedule::Split::GlobalQueue;
  return o;
}

void TttOptions::validate() const {
  auto bad = [](const std::string& what) { throw Error("ttt: " + what); };
  if (lora_rank < 1) bad("the LoRA rank must be >= 1, got " + std::to_string(lora_rank));
  if (chunk < 1) bad("the chunk size must be >= 1, got 0");
  if (context < 1) bad("the context length must be >= 1, got 0");
  if (chunk > context)
    bad("chunk size " + std::to_string(chunk) + " exceeds the context length " + std::to_string(context));
  if (batch_docs < 1) bad("the batch size must be >= 1 document, got 0");
  if (grad_steps < 1) bad("grad steps must be >= 1, got 0");
  if (!(lr >= 0) || !std::isfinite(lr)) bad("the learning rate must be a finite number >= 0");
  if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) bad("betas must be in [0, 1)");
  if (!(eps > 0)) bad("eps must be > 0");
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) bad("weight decay must be a finite number >= 0");
  if (targets.empty()) bad("no LoRA targets");
  for (const std::string& t : targets) {
    const auto& n = lora_target_names();
    if (std::find(n.begin(), n.end(), t) == n.end())
      bad("unknown LoRA target '" + t + "' (expected some of q, k, v, o, mlp, head)");
  }
  if (world < 1 || rank < 0 || rank >= world) bad("rank " + std::to_string(rank) + " outside a world of " + std::to_string(world));
}

double TttResult::bpb() const { return bytes ? nll_sum / std::log(2.0) / double(bytes) : 0.0; }
double TttResult::base_bpb() const { return bytes && has_base ? base_nll_sum / std::log(2.0) / double(bytes) : kNaN; }
double TttResult::bpb_stderr() const { return stderr_of(nll_sum, bytes, docs); }

double TttResult::gain_stderr() const {
  if (!has_base) return kNaN;
  std::vector<DocumentTotals> diff(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) diff[i] = {docs[i].nll - base_docs[i].nll, docs[i].bytes, docs[i].targets};
  return stderr_of(nll_sum - base_nll_sum, bytes, diff);
}

void TttResult::add(const TttResult& o) {
  nll_sum += o.nll_sum;
  base_nll_sum += o.base_nll_sum;
  targets += o.targets;
  bytes += o.bytes;
  batches += o.batches;
  steps += o.steps;
  updates += o.updates;
  tokens_in += o.tokens_in;
  auto add_docs = [](std::vector<DocumentTotals>& a, const std::vector<DocumentTotals>& b) {
    if (a.size() < b.size()) a.resize(b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      a[i].nll += b[i].nll;
      a[i].bytes += b[i].bytes;
      a[i].targets += b[i].targets;
    }
  };
  add_docs(docs, o.docs);
  add_docs(base_docs, o.base_docs);
  chunks.insert(chunks.end(), o.chunks.begin(), o.chunks.end());
  if (target_times.size() == o.target_times.size())
    for (size_t i = 0; i < target_times.size(); ++i)
      if (o.target_times[i]) {
        target_nll[i] = o.target_nll[i];
        target_base_nll[i] = o.target_base_nll[i];
        target_times[i] += o.target_times[i];
      }
}

void TttResult::totals_from_docs() {
  nll_sum = 0;
  base_nll_sum = 0;
  for (const DocumentTotals& d : docs) nll_sum += d.nll;
  for (const DocumentTotals& d : base_docs) base_nll_sum += d.nll;
}

void TttResult::all_reduce_ranks() {
  if (!ranks().multi()) return;
  // Counts are exact in float64 (< 2^53); a document's sums come from one rank
  // and zeros from the others, and x + 0.0 == x.
  std::vector<double> v = {double(targets), double(bytes), double(batches), double(steps), double(updates),
                           double(tokens_in)};
  for (const auto* list : {&docs, &base_docs})
    for (const DocumentTotals& d : *list) v.insert(v.end(), {d.nll, double(d.bytes), double(d.targets)});
  all_reduce_sum(v);
  size_t k = 0;
  for (uint64_t* x : {&targets, &bytes, &batches, &steps, &updates, &tokens_in}) *x = uint64_t(v[k++]);
  for (auto* list : {&docs, &base_docs})
    for (DocumentTotals& d : *list) {
      d.nll = v[k++];
      d.bytes = uint64_t(v[k++]);
      d.targets = uint64_t(v[k++]);
    }
  totals_from_docs();
}

uint64_t ttt_used_tokens(const std::vector<uint16_t>& tokens, const TttOptions& o) {
  uint64_t n = tokens.size();
  if (o.trim > 0) {
    const uint64_t rows = n == 0 ? 0 : (n - 1) / o.trim;
    if (rows == 0)
      throw Error("ttt: " + std::to_string(n) + " tokens hold no full row of " + std::to_string(o.trim) + " to trim to");
    n = rows * o.trim + 1;
  }
  if (o.max_docs > 0) {
    // Keep through the BOS that starts document max_docs + 1: the last kept
    // document ends with it as its last target, as in the full stream.
    uint64_t seen = 0;
    for (uint64_t i = 0; i < n; ++i)
      if (tokens[i] == o.bos_id && seen++ == o.max_docs) return i + 1;
  }
  return n;
}

TttResult run_ttt(const GptWeights& w, const std::vector<uint16_t>& tokens, const ByteCounter& bc,
                  const TttOptions& o) {
  o.validate();
  const ModelConfig& cfg = w.config;
  if (bc.size() < size_t(cfg.vocab_size))
    throw Error("ttt: the byte tables cover " + std::to_string(bc.size()) + " ids, the model has " +
                std::to_string(cfg.vocab_size));
  const uint64_t n = ttt_used_tokens(tokens, o);
  // The one-rank plan's batches, whatever the world (see keep_rank_batches).
  TttPlan plan = make_ttt_plan(tokens.data(), n, o.bos_id, o.chunk, o.context, o.batch_docs, 0, 1,
                               TttSchedule{o.split, 0});
  // Device shapes from the one-rank plan: the same for a batch on every rank.
  const int64_t batch_rows = ttt_batch_rows(plan);
  std::map<uint32_t, std::vector<TttStepShape>> shapes;  // by batch index
  {
    const std::vector<std::vector<TttStepShape>> all = ttt_step_shapes(plan);
    for (size_t i = 0; i < all.size(); ++i) shapes[plan.batches[i].index] = all[i];
  }
  if (o.world > 1) keep_rank_batches(plan, o.rank, o.world);
  const std::vector<LoraSiteSpec> sites = lora_sites(cfg, o.targets);
  const at::Device device = w.get("tok_emb.weight").device();
  const at::ScalarType param_type = o.precision == Precision::F64 ? at::kDouble : at::kFloat;
  FlatAdam adam(AdamConfig{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.adamw});
  const CastWeights cast = cast_matrix_weights(w, o.precision);  // the base is frozen: cast once
#if PGOLF_WITH_CUDA
  // Every step on one side stream: CUDA graphs cannot capture the legacy
  // default stream, and a shape's eager first step warms up what its capture
  // will use on that stream.
  std::optional<c10::cuda::CUDAStreamGuard> side;
  if (device.is_cuda()) side.emplace(c10::cuda::getStreamFromPool());
#endif
  TttStepRunner runner(w, cast, o.precision, o.chunk, o.grad_steps, o.cuda_graphs);

  TttResult r;
  r.used_tokens = n;
  r.num_docs = plan.docs.size();
  r.has_base = o.base;
  r.docs.resize(plan.docs.size());
  r.base_docs.resize(plan.docs.size());
  if (o.record_targets) {
    r.target_nll.assign(n, kNaN);
    r.target_base_nll.assign(n, kNaN);
    r.target_times.assign(n, 0);
  }
  const uint64_t to_score = plan.rank_targets();
  // Steps whose scores are still on the device: the host queues the next
  // steps while the GPU runs these, and reads each back in order.
  struct Pending {
    TttStep st;
    std::vector<int64_t> rows;
    HostCopy nll;  // [rows, width]
  };
  std::deque<Pending> pending;
  auto read_back = [&](size_t keep) {
    for (; pending.size() > keep; pending.pop_front()) {
      Pending& p = pending.front();
      accumulate(r, p.st, p.rows, tokens, bc, p.nll.wait().to(at::kDouble));
      if (o.progress) o.progress(r.targets, to_score);
    }
  };
  BaseScores base(w, cast, o.precision, tokens, plan);
  if (o.base)
    for (const TttBatch& batch : plan.batches) base.add(batch);

  uint64_t total_steps = 0;
  for (const TttBatch& batch : plan.batches)
    for (const TttStepShape& sh : shapes.at(batch.index)) runner.expect(sh), ++total_steps;
  const uint64_t base_total = base.planned();
  const bool spread_base = o.base && o.cuda_graphs && device.is_cuda();

  // Under bf16 the forward reads the adapters rounded to bf16: the leaves are
  // a bf16 mirror of the float32 parameters (BatchAdapters).
  const at::ScalarType leaf_type = o.precision == Precision::BF16 ? at::kBFloat16 : param_type;
  BatchAdapters adapters(sites, batch_rows, o.lora_rank, param_type, device, leaf_type);
  runner.bind(&adapters, &adam);
  if (device.is_cuda() && !plan.batches.empty()) {
    // One-time device warm-up, timed apart (TttResult::warmup_seconds): the
    // first step's shape on dummy rows (token 0, nothing trained on) loads
    // its kernels and sets up the libraries' handles and workspaces on this
    // stream, as a warm process -- the reference's, after training -- has
    // them. Adapters and optimizer are reset before the first batch.
    LapTimer w;
    const TttStepShape& sh = shapes.at(plan.batches.front().index).front();
    std::vector<uint64_t> keys(size_t(batch_rows), 0);
    adapters.reset(o.seed, keys);
    adam.reset(adapters.params());
    HostCopy(runner.warm_up(sh).nll).wait();  // its work done before the timed steps
    r.warmup_seconds = w.lap();
  }
  std::optional<DeviceClock> clock;  // first: it waits for the device, then both clocks start
  if (o.timeline) clock.emplace(device);
  const auto loop_start = std::chrono::steady_clock::now();
  auto host_ms = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - loop_start).count();
  };
  LapTimer t;
  for (const TttBatch& batch : plan.batches) {
    // Row keys: the documents', and for the rows a short batch adds, values
    // no document index takes.
    std::vector<uint64_t> keys;
    for (int64_t b = int64_t(batch.docs.size()); b < batch_rows; ++b) keys.push_back(~uint64_t(b));
    keys.insert(keys.end(), batch.docs.begin(), batch.docs.end());
    adapters.reset(o.seed, keys);
    adam.reset(adapters.params());
    ++r.batches;
    for (uint32_t s = 0; s < batch.num_steps; ++s) {
      const TttStep st = ttt_padded_step(plan, batch, s, batch_rows);
      const TttStepShape& shape = shapes.at(batch.index)[s];
      const std::vector<int64_t> rows = ttt_step_rows(st, shape.rows);
      if (int64_t(rows.size()) != shape.rows || (shape.first_row >= 0 && rows.front() != shape.first_row))
        throw std::logic_error("run_ttt: a step's rows do not match its shape");
      const double issue = o.timeline ? host_ms() : 0.0;
      const TttStepInputs in = step_inputs(tokens, st, rows, param_type);
      r.host_prepare += t.lap();
      const TttStepScores sc = runner.run(shape, in);
      if (o.timeline) clock->mark();
      runner.capture_ahead();
      if (o.timeline) {
        const TttStepRunner::LastRunTimes& lr = runner.last_run();
        r.timeline.push_back({batch.index, s, shape.rows, shape.width, shape.update, lr.run, lr.captures, issue,
                              host_ms(), 0.0, lr.capture_ms, lr.instantiate_ms, lr.launch_ms, lr.reserved_mib});
      }
      // Score first: these values are final before the adapters move (the
      // update ran after them on the GPU's stream); read back later.
      pending.push_back(Pending{st, rows, HostCopy(sc.nll)});
      ++r.steps;
      r.updates += st.update ? o.grad_steps : 0;
      r.tokens_in += rows.size() * st.width;
      t.lap();  // the step's own parts are in runner.seconds()
      if (spread_base) {
        // The base forwards (on a stream of their own) go out evenly over the
        // steps, while the host would wait on a full queue of graph launches;
        // issuing them costs the host more time than their kernels take, so
        // issued in a lump (before the captures) they left the device idle.
        // Without graphs the host is the bottleneck: they go after the last step.
        const uint64_t due = (base_total * r.steps + total_steps - 1) / total_steps;
        while (base_total - base.planned() < due && base.issue_next()) {
        }
        r.host_base += t.lap();
      }
      read_back(16);
      base.read_back(8);
      r.host_read_back += t.lap();
    }
  }
  read_back(0);
  r.host_read_back += t.lap();
  while (base.issue_next()) {
    r.host_base += t.lap();
    base.read_back(8);
    r.host_read_back += t.lap();
  }
  base.read_back(0);
  r.host_read_back += t.lap();
  if (o.base) add_base_scores(r, base);
  if (o.timeline) {
    const std::vector<double> done = clock->millis();
    for (size_t i = 0; i < done.size(); ++i) r.timeline[i].device_end = done[i];
  }
  r.host_forward = runner.seconds().forward;
  r.host_backward = runner.seconds().backward;
  r.host_update = runner.seconds().update;
  r.host_replay = runner.seconds().replay;
  r.graph_replays = runner.replays();
  r.graph_captures = runner.captures();
  r.totals_from_docs();
  return r;
}

}  // namespace pgolf
