#include "ttt/ttt_runner.h"

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

// Adds one step's scores (nll, base: [step rows, width] float64 on the CPU;
// base undefined when not computed) to the result; padding rows have none.
void accumulate(TttResult& r, const TttStep& st, const std::vector<int64_t>& rows, const std::vector<uint16_t>& tok,
                const ByteCounter& bc, const at::Tensor& nll, const at::Tensor& base) {
  auto pn = nll.accessor<double, 2>();
  const bool has_base = base.defined();
  at::Tensor b0 = has_base ? base : nll;
  auto pb = b0.accessor<double, 2>();
  const bool record = !r.target_times.empty();
  for (size_t b = 0; b < rows.size(); ++b) {
    if (!st.rows[size_t(rows[b])]) continue;
    const TttChunk& ch = *st.rows[size_t(rows[b])];
    TttChunkTotals ct{ch.doc, ch.index, ch.target_begin, uint32_t(ch.num_targets()), 0, 0.0, 0.0};
    for (uint64_t j = ch.score_offset(); j < ch.input_len(); ++j) {
      const uint64_t t = ch.context_begin + j + 1;  // target position: predicts tok[t] after tok[t - 1]
      const double v = pn[int64_t(b)][int64_t(j)], v0 = has_base ? pb[int64_t(b)][int64_t(j)] : kNaN;
      const uint32_t nb = bc.bytes(tok[t - 1], tok[t]);
      ct.nll += v;
      ct.base_nll += v0;
      ct.bytes += nb;
      if (record) {
        r.target_nll[t] = v;
        r.target_base_nll[t] = v0;
        r.target_times[t] += 1;
      }
    }
    DocumentTotals& d = r.docs[ch.doc];
    d.nll += ct.nll;
    d.bytes += ct.bytes;
    d.targets += ct.targets;
    if (has_base) {
      DocumentTotals& db = r.base_docs[ch.doc];
      db.nll += ct.base_nll;
      db.bytes += ct.bytes;
      db.targets += ct.targets;
      r.base_nll_sum += ct.base_nll;
    }
    r.nll_sum += ct.nll;
    r.bytes += ct.bytes;
    r.targets += ct.targets;
    r.chunks.push_back(ct);
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
    const std::vector<std::vector<TttStepShape>> all = ttt_step_shapes(plan, o.base);
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
    HostCopy nll, base;  // [rows, width]; base undefined without it or when it is nll
    bool base_is_nll = false;
  };
  std::deque<Pending> pending;
  auto read_back = [&](size_t keep) {
    for (; pending.size() > keep; pending.pop_front()) {
      Pending& p = pending.front();
      const at::Tensor got = p.nll.wait().to(at::kDouble);
      const at::Tensor base = p.base.defined() ? p.base.wait().to(at::kDouble) : p.base_is_nll ? got : at::Tensor();
      accumulate(r, p.st, p.rows, tokens, bc, got, base);
      if (o.progress) o.progress(r.targets, to_score);
    }
  };

  for (const TttBatch& batch : plan.batches)
    for (const TttStepShape& sh : shapes.at(batch.index)) runner.expect(sh);

  BatchAdapters adapters(sites, batch_rows, o.lora_rank, param_type, device);
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
    const int64_t first = std::max<int64_t>(sh.first_row, 0);
    const TttStepInputs dummy{at::zeros({sh.rows, sh.width}, at::kLong), at::zeros({sh.rows, sh.width}, at::kLong),
                              at::arange(first, first + sh.rows, at::kLong), at::zeros({sh.rows}, param_type)};
    HostCopy(runner.run(sh, dummy).nll).wait();  // its work done before the timed steps
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
      if (o.timeline) {
        clock->mark();
        const TttStepRunner::LastRunTimes& lr = runner.last_run();
        r.timeline.push_back({batch.index, s, shape.rows, shape.width, shape.update, shape.base, lr.run, issue,
                              host_ms(), 0.0, lr.capture_ms, lr.instantiate_ms, lr.launch_ms});
      }
      // Score first: these values are final before the adapters move (the
      // update ran after them on the GPU's stream); read back later.
      pending.push_back(Pending{st, rows, HostCopy(sc.nll), sc.base.defined() ? HostCopy(sc.base) : HostCopy(),
                                o.base && s == 0});
      ++r.steps;
      r.updates += st.update ? o.grad_steps : 0;
      r.tokens_in += rows.size() * st.width;
      t.lap();  // the step's own parts are in runner.seconds()
      read_back(16);
      r.host_read_back += t.lap();
    }
  }
  read_back(0);
  r.host_read_back += t.lap();
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
