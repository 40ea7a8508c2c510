#include <c10/core/GradMode.h>

#include "eval/evaluator.h"

#include <cmath>
#include <algorithm>
#include <deque>

#include "data/byte_counter.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/lap_timer.h"
#include "data/token_stream.h"
#include "eval/stream_plan.h"
#include "model/distributed.h"
#include "model/forward_graph.h"
#include "model/host_copy.h"
#include "model/pch.h"

namespace pgolf {

double EvalResult::bpb() const { return bytes ? nll_sum / std::log(2.0) / double(bytes) : 0.0; }

double EvalResult::bpb_stderr() const {
  // Delta method for r = sum(nll) / sum(bytes) over n documents:
  // se(r) = sqrt(n / (n - 1) * sum((nll_i - r bytes_i)^2)) / sum(bytes).
  size_t n = 0;
  for (const DocumentTotals& d : docs) n += d.targets > 0;
  if (n < 2 || bytes == 0) return 0.0;
  const double r = nll_sum / double(bytes);
  double ss = 0;
  for (const DocumentTotals& d : docs)
    if (d.targets > 0) {
      const double e = d.nll - r * double(d.bytes);
      ss += e * e;
    }
  return std::sqrt(double(n) / double(n - 1) * ss) / double(bytes) / std::log(2.0);
}

void EvalResult::add(const EvalResult& o) {
  nll_sum += o.nll_sum;
  targets += o.targets;
  bytes += o.bytes;
  windows += o.windows;
  tokens_in += o.tokens_in;
  graph_replays += o.graph_replays;
  if (docs.size() < o.docs.size()) docs.resize(o.docs.size());
  for (size_t i = 0; i < o.docs.size(); ++i) {
    docs[i].nll += o.docs[i].nll;
    docs[i].bytes += o.docs[i].bytes;
    docs[i].targets += o.docs[i].targets;
  }
  scored.insert(scored.end(), o.scored.begin(), o.scored.end());
}

void EvalResult::all_reduce_ranks(bool gather_scored) {
  if (!ranks().multi()) return;
  // Counts stay exact in float64 (< 2^53).
  std::vector<double> v = {nll_sum, double(targets), double(bytes), double(windows), double(tokens_in)};
  v.reserve(v.size() + 3 * docs.size());
  for (const DocumentTotals& d : docs) v.insert(v.end(), {d.nll, double(d.bytes), double(d.targets)});
  all_reduce_sum(v);
  nll_sum = v[0];
  size_t k = 1;
  for (uint64_t* x : {&targets, &bytes, &windows, &tokens_in}) *x = uint64_t(v[k++]);
  for (DocumentTotals& d : docs) {
    d.nll = v[k++];
    d.bytes = uint64_t(v[k++]);
    d.targets = uint64_t(v[k++]);
  }
  if (!gather_scored) return;
  // Four float64 per scoring: target index, NLL, bytes, document (all exact).
  std::vector<double> mine;
  mine.reserve(4 * scored.size());
  for (const ScoredTarget& s : scored)
    mine.insert(mine.end(), {double(s.target), s.nll, double(s.bytes), double(s.doc)});
  std::vector<ScoredTarget>().swap(scored);
  const std::vector<double> all = gather_concat(mine);
  std::vector<double>().swap(mine);
  scored.reserve(all.size() / 4);
  for (size_t i = 0; i + 3 < all.size(); i += 4)
    scored.push_back({uint64_t(all[i]), all[i + 1], uint32_t(all[i + 2]), uint32_t(all[i + 3])});
}

WindowPlan make_eval_plan(uint64_t num_tokens, const EvalOptions& o) {
  if (o.plan == PlanKind::Standard) return make_standard_plan(num_tokens, o.seq_len);
  // The sliding records evaluate the stream trimmed as standard eval trims it.
  return make_record_sliding_plan(num_tokens, o.seq_len, o.stride, o.plan);
}

WindowBatch make_window_batch(const std::vector<Window>& windows, size_t b0, size_t nb,
                              const std::vector<uint16_t>& tok, int64_t L) {
  WindowBatch b{at::zeros({int64_t(nb), L}, at::kLong), at::zeros({int64_t(nb), L}, at::kLong),
                at::zeros({int64_t(nb), L}, at::kBool), 0};
  auto pin = b.inputs.accessor<int64_t, 2>(), ptg = b.targets.accessor<int64_t, 2>();
  auto pm = b.mask.accessor<bool, 2>();
  for (size_t k = 0; k < nb; ++k) {
    const Window& win = windows[b0 + k];
    for (uint32_t j = 0; j < win.len; ++j) {
      pin[int64_t(k)][j] = tok[win.start + j];
      ptg[int64_t(k)][j] = tok[win.start + j + 1];
      pm[int64_t(k)][j] = j >= win.score_from;
    }
    b.scored += int64_t(win.scored());
  }
  return b;
}

namespace {

// One scoring of target t (predicts tok[t + 1] after tok[t]) with NLL v. A
// target belongs to the document its context ends in: the BOS that starts the
// next document is the last target of the previous one.
void add_scoring(EvalResult& r, bool capture, const std::vector<uint16_t>& tok, const ByteCounter& bc,
                 const DocumentIndex& docs, uint64_t t, double v) {
  const uint32_t nbytes = bc.bytes(tok[t], tok[t + 1]);
  const size_t d = docs.doc_at(t), di = d == SIZE_MAX ? docs.size() : d;
  if (capture) r.scored.push_back({t, v, nbytes, uint32_t(di)});
  r.count(v, nbytes, di);
}

void check_byte_tables(const GptWeights& w, const ByteCounter& bc) {
  if (bc.size() < size_t(w.config.vocab_size))
    throw Error("eval: the byte tables cover " + std::to_string(bc.size()) + " ids, the model has " +
                std::to_string(w.config.vocab_size));
}

// The streaming plan (eval/stream_plan.h): this rank's segments side by side,
// one row each, `chunk` tokens per forward over a KV cache of L - 1 positions.
EvalResult evaluate_streaming(const GptWeights& w, const std::vector<uint16_t>& tok, const ByteCounter& bc,
                              const EvalOptions& o) {
  if (o.doc_mask) throw Error("eval: --doc-mask does not apply to the streaming plan");
  check_byte_tables(w, bc);
  const uint32_t chunk = o.stride ? o.stride : o.seq_len;
  const uint64_t rows = std::max<uint64_t>(1, o.batch_tokens / chunk);
  const StreamPlan plan = make_stream_plan(tok.size(), o.seq_len, chunk, uint32_t(rows * uint64_t(o.world)));
  const auto [first, last] = rank_slice(plan, o.rank, o.world);
  const DocumentIndex docs(tok.data(), tok.size(), o.bos_id);
  const at::Device device = w.get("tok_emb.weight").device();
  const CastWeights cast = cast_matrix_weights(w, o.precision);

  EvalResult r;
  r.docs.resize(docs.size() + 1);  // + targets before the first BOS
  uint64_t to_score = 0;
  for (size_t i = first; i < last; ++i) to_score += plan.segments[i].end - plan.segments[i].score_from;
  if (o.capture_targets) r.scored.reserve(to_score);
  const int64_t B = int64_t(last - first);
  const uint64_t steps = plan.steps(first, last);
  KvCache kv;
  kv.keep = int64_t(o.seq_len) - 1;
  struct Pending {
    uint64_t offset;  // segment offset of column 0
    HostCopy nll;     // [B, width]
  };
  std::deque<Pending> pending;
  auto read_back = [&](size_t keep) {
    for (; pending.size() > keep; pending.pop_front()) {
      Pending& p = pending.front();
      const at::Tensor nll = p.nll.wait().to(at::kDouble);
      auto pn = nll.accessor<double, 2>();
      for (int64_t b = 0; b < B; ++b) {
        const StreamSegment& sg = plan.segments[first + size_t(b)];
        for (int64_t j = 0; j < nll.size(1); ++j) {
          const uint64_t t = sg.feed_from + p.offset + uint64_t(j);
          if (t >= sg.end) break;
          if (t < sg.score_from) continue;
          add_scoring(r, o.capture_targets, tok, bc, docs, t, pn[b][j]);
        }
      }
      if (o.progress) o.progress(r.targets, to_score);
    }
  };
  // Step s's rows: inputs, targets and score mask [B, width].
  struct StepRows {
    at::Tensor in, tg, mask;
    uint64_t fed = 0;
  };
  auto step_rows = [&](uint64_t s) {
    const uint64_t offset = s * chunk;
    uint64_t width = 0;
    for (size_t i = first; i < last; ++i)
      width = std::max(width, std::min<uint64_t>(chunk, plan.segments[i].fed() - std::min(offset, plan.segments[i].fed())));
    // Rows past their segment's end are padded with token 0, unscored; being
    // later than every real position, the padding is never attended to.
    StepRows sr{at::zeros({B, int64_t(width)}, at::kLong), at::zeros({B, int64_t(width)}, at::kLong),
                at::zeros({B, int64_t(width)}, at::kBool)};
    auto pin = sr.in.accessor<int64_t, 2>(), ptg = sr.tg.accessor<int64_t, 2>();
    auto pm = sr.mask.accessor<bool, 2>();
    for (int64_t b = 0; b < B; ++b) {
      const StreamSegment& sg = plan.segments[first + size_t(b)];
      for (uint64_t j = 0; j < width; ++j) {
        const uint64_t t = sg.feed_from + offset + j;
        if (t >= sg.end) break;
        pin[b][int64_t(j)] = tok[t];
        ptg[b][int64_t(j)] = tok[t + 1];
        pm[b][int64_t(j)] = t >= sg.score_from;
        ++sr.fed;
      }
    }
    return sr;
  };
  auto step_forward = [&](const StepRows& sr, KvCache* cache) {
    ForwardOptions fo;
    fo.precision = o.precision;
    fo.cast = &cast;
    fo.kv = cache;
    fo.score_mask = to_device(sr.mask, device);
    fo.positions = find_score_positions(sr.mask, device, /*slots=*/false);
    return forward_nll(w, to_device(sr.in, device), to_device(sr.tg, device), fo);
  };
  if (device.is_cuda() && steps > 0 && B > 0) {
    // One-time device warm-up, timed apart: the first step on a cache of its own, scores discarded.
    LapTimer wt;
    KvCache scratch;
    scratch.keep = kv.keep;
    HostCopy(step_forward(step_rows(0), &scratch)).wait();
    r.warmup_seconds = wt.lap();
  }
  LapTimer clock;
  for (uint64_t s = 0; s < steps && B > 0; ++s) {
    const StepRows sr = step_rows(s);
    r.tokens_in += sr.fed;
    r.host_prepare += clock.lap();
    pending.push_back({s * chunk, HostCopy(step_forward(sr, &kv))});
    r.host_forward += clock.lap();
    read_back(2);
    r.host_read_back += clock.lap();
  }
  read_back(0);
  r.host_read_back += clock.lap();
  r.windows = uint64_t(B);  // one stream per segment
  // Plan order is target order: ranks hold contiguous segments.
  if (o.capture_targets)
    std::sort(r.scored.begin(), r.scored.end(),
              [](const ScoredTarget& a, const ScoredTarget& b) { return a.target < b.target; });
  return r;
}

}  // namespace

EvalResult evaluate(const GptWeights& w, const TokenStream& stream, const ByteCounter& bc, const EvalOptions& o) {
  c10::NoGradGuard no_grad;  // scoring only
  const std::vector<uint16_t> tok = stream.slice(0, stream.size());
  if (o.plan == PlanKind::Streaming) return evaluate_streaming(w, tok, bc, o);
  const WindowPlan plan = make_eval_plan(tok.size(), o);
  const int64_t L = o.seq_len;
  const size_t per_batch = std::max<size_t>(1, size_t(o.batch_tokens / uint64_t(L)));
  // Whole batches per rank: a window's batch-mates are the one-rank run's.
  const auto [first, last] = rank_slice_batch_aligned(plan, o.rank, o.world, per_batch);
  const DocumentIndex docs(tok.data(), tok.size(), o.bos_id);
  check_byte_tables(w, bc);

  EvalResult r;
  r.docs.resize(docs.size() + 1);  // + targets before the first BOS
  uint64_t to_score = 0;
  for (size_t i = first; i < last; ++i) to_score += plan.windows[i].scored();
  if (o.capture_targets) r.scored.reserve(to_score);

  const at::Device device = w.get("tok_emb.weight").device();
  // Batches whose NLL is still on the device: the host prepares and queues the
  // next batches while the GPU runs these, and reads each one back in order.
  struct Pending {
    size_t b0, nb;
    HostCopy nll;  // [nb, L]
  };
  std::deque<Pending> pending;
  const CastWeights cast = cast_matrix_weights(w, o.precision);  // once, not per batch
  ForwardGraph graph(w, o.cuda_graphs);
  auto read_back = [&](size_t keep) {
    for (; pending.size() > keep; pending.pop_front()) {
      Pending& p = pending.front();
      const at::Tensor nll = p.nll.wait().to(at::kDouble);
      auto pn = nll.accessor<double, 2>();
      for (size_t k = 0; k < p.nb; ++k) {
        const Window& win = plan.windows[p.b0 + k];
        for (uint32_t j = win.score_from; j < win.len; ++j) {
          const uint64_t t = win.start + j;  // target index: predicts tok[t + 1] after tok[t]
          add_scoring(r, o.capture_targets, tok, bc, docs, t, pn[int64_t(k)][j]);
        }
        r.tokens_in += win.len;
      }
      r.windows += p.nb;
      if (o.progress) o.progress(r.targets, to_score);
    }
  };
  auto batch_forward = [&](const WindowBatch& wb) {
    ForwardOptions fo;
    fo.precision = o.precision;
    fo.cast = &cast;
    // Document ids stay on the host: the forward finds the sequence starts there, without a device wait.
    if (o.doc_mask) fo.segment_ids = (wb.inputs == int64_t(o.bos_id)).to(at::kLong).cumsum(1);
    return graph.run(wb.inputs, wb.targets, wb.mask, fo);
  };
  if (device.is_cuda() && first < last) {
    // One-time device warm-up, timed apart (EvalResult::warmup_seconds): the
    // first batch, its scores discarded, loads the kernels and sets up the
    // libraries' handles, workspaces and attention plans for its shape, as a
    // process that has trained or evaluated before has them.
    LapTimer wt;
    HostCopy(batch_forward(make_window_batch(plan.windows, first, std::min(per_batch, last - first), tok, L))).wait();
    r.warmup_seconds = wt.lap();
  }
  LapTimer clock;
  for (size_t b0 = first; b0 < last; b0 += per_batch) {
    const size_t nb = std::min(per_batch, last - b0);
    const WindowBatch wb = make_window_batch(plan.windows, b0, nb, tok, L);
    r.host_prepare += clock.lap();
    pending.push_back({b0, nb, HostCopy(batch_forward(wb))});
    r.host_forward += clock.lap();
    read_back(2);
    r.host_read_back += clock.lap();
  }
  read_back(0);
  r.host_read_back += clock.lap();
  r.graph_replays = uint64_t(graph.replays());
  return r;
}

}  // namespace pgolf
