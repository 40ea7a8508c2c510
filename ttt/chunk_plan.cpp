// Test-time-training work plan (see chunk_plan.h for the exact semantics).
#include "ttt/chunk_plan.h"

#include <algorithm>
#include <limits>
#include <string>

#include "data/error.h"

namespace pgolf {

namespace {

const char* const kWhat = "ttt plan";

void check_args(const uint16_t* tokens, size_t n, uint32_t chunk, uint32_t context,
                uint32_t batch_docs, int rank, int world) {
  if (chunk < 1) fail(kWhat, "chunk size must be >= 1, got 0");
  if (chunk > context)
    fail(kWhat, "chunk size " + std::to_string(chunk) + " exceeds the context length " +
                    std::to_string(context));
  if (batch_docs < 1) fail(kWhat, "batch size must be >= 1 document, got 0");
  if (world < 1) fail(kWhat, "world size must be >= 1, got " + std::to_string(world));
  if (rank < 0 || rank >= world)
    fail(kWhat, "rank must be in [0, " + std::to_string(world) + "), got " + std::to_string(rank));
  if (tokens == nullptr && n > 0) fail(kWhat, "no token buffer for " + std::to_string(n) + " tokens");
}

// 0410 loads its validation stream trimmed to whole rows of E (like standard eval).
uint64_t used_token_count(uint64_t n, uint32_t trim_multiple) {
  if (trim_multiple == 0) return n;
  uint64_t rows = n == 0 ? 0 : (n - 1) / trim_multiple;
  if (rows == 0)
    fail(kWhat, std::to_string(n) + " tokens hold no full row of " + std::to_string(trim_multiple) +
                    " to trim to");
  return rows * trim_multiple + 1;
}

uint32_t chunks_of(uint64_t targets, uint32_t chunk) {
  uint64_t k = (targets + chunk - 1) / chunk;
  if (k > std::numeric_limits<uint32_t>::max())
    fail(kWhat, "a document of " + std::to_string(targets) + " targets has too many chunks");
  return static_cast<uint32_t>(k);
}

// One document per BOS; each one's last target is the next BOS (or the stream end).
void find_documents(const uint16_t* tokens, uint64_t n, uint16_t bos, TttPlan& plan) {
  std::vector<uint64_t> starts;
  for (uint64_t i = 0; i < n; ++i)
    if (tokens[i] == bos) starts.push_back(i);
  if (starts.empty()) fail(kWhat, "no BOS token (id " + std::to_string(bos) + ") in the stream");
  if (starts.size() > std::numeric_limits<uint32_t>::max()) fail(kWhat, "too many documents");
  for (size_t i = 0; i < starts.size(); ++i) {
    uint64_t end = i + 1 < starts.size() ? starts[i + 1] + 1 : n;
    if (end - starts[i] < 2) {  // only the last: a lone BOS at the stream end, no target
      plan.dropped_empty_last_doc = true;
      continue;
    }
    plan.docs.push_back({starts[i], end, chunks_of(end - starts[i] - 1, plan.chunk)});
  }
}

// Consecutive groups of B documents from `order`.
std::vector<TttBatch> cut_batches(const TttPlan& plan, const std::vector<uint32_t>& order) {
  std::vector<TttBatch> out;
  for (size_t lo = 0; lo < order.size(); lo += plan.batch_docs) {
    size_t hi = std::min(order.size(), lo + plan.batch_docs);
    TttBatch b{static_cast<uint32_t>(out.size()), {order.begin() + lo, order.begin() + hi}, 0};
    for (uint32_t d : b.docs) b.num_steps = std::max(b.num_steps, plan.docs[d].num_chunks);
    out.push_back(std::move(b));
  }
  return out;
}

// 0317: a contiguous slice of documents per rank, stable-sorted by chunk count.
void split_rank_slices(TttPlan& plan) {
  uint64_t d = plan.docs.size(), r = plan.rank, w = plan.world;
  for (uint64_t i = d * r / w; i < d * (r + 1) / w; ++i) plan.rank_docs.push_back(static_cast<uint32_t>(i));
  std::stable_sort(plan.rank_docs.begin(), plan.rank_docs.end(), [&](uint32_t a, uint32_t b) {
    return plan.docs[a].num_chunks < plan.docs[b].num_chunks;
  });
  plan.batches = cut_batches(plan, plan.rank_docs);
  for (int other = 0; other < plan.world; ++other) {  // batch counts of every rank's slice
    uint64_t size = d * (other + 1) / w - d * other / w;
    plan.total_batches += (size + plan.batch_docs - 1) / plan.batch_docs;
  }
}

uint64_t longest_doc(const TttPlan& plan, const TttBatch& b) {
  uint64_t m = 0;
  for (uint32_t d : b.docs) m = std::max(m, plan.docs[d].length());
  return m;
}

// 0410: global batches by document length, queued longest first, dealt round-robin.
void split_global_queue(TttPlan& plan) {
  std::vector<uint32_t> order(plan.docs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return plan.docs[a].length() < plan.docs[b].length();
  });
  std::vector<TttBatch> queue = cut_batches(plan, order);
  std::stable_sort(queue.begin(), queue.end(), [&](const TttBatch& a, const TttBatch& b) {
    return longest_doc(plan, a) > longest_doc(plan, b);
  });
  plan.total_batches = queue.size();
  for (size_t q = plan.rank; q < queue.size(); q += plan.world) {
    plan.rank_docs.insert(plan.rank_docs.end(), queue[q].docs.begin(), queue[q].docs.end());
    plan.batches.push_back(std::move(queue[q]));
  }
}

}  // namespace

uint64_t TttPlan::rank_targets() const {
  uint64_t sum = 0;
  for (uint32_t d : rank_docs) sum += docs[d].num_targets();
  return sum;
}

TttPlan make_ttt_plan(const uint16_t* tokens, size_t n, uint16_t bos, uint32_t chunk,
                      uint32_t context, uint32_t batch_docs, int rank, int world,
                      const TttSchedule& schedule) {
  check_args(tokens, n, chunk, context, batch_docs, rank, world);
  TttPlan plan;
  plan.schedule = schedule;
  plan.chunk = chunk;
  plan.context = context;
  plan.batch_docs = batch_docs;
  plan.rank = rank;
  plan.world = world;
  plan.num_tokens = n;
  plan.used_tokens = used_token_count(n, schedule.trim_multiple);
  find_documents(tokens, plan.used_tokens, bos, plan);
  if (schedule.split == TttSchedule::Split::RankSlices)
    split_rank_slices(plan);
  else
    split_global_queue(plan);
  return plan;
}

uint64_t batch_cost(const TttPlan& plan, const TttBatch& batch) {
  uint64_t cost = 0;
  for (uint32_t d : batch.docs)
    for (uint32_t s = 0; s < plan.docs[d].num_chunks; ++s) {
      const uint64_t width = std::min<uint64_t>((uint64_t{s} + 1) * plan.chunk, plan.context);
      cost += width * (s + 1 < batch.num_steps ? 3 : 1);
    }
  return cost;
}

std::vector<int> balance_batches(const TttPlan& plan, int world) {
  if (world < 1) fail(kWhat, "world size must be >= 1, got " + std::to_string(world));
  std::vector<uint64_t> cost(plan.batches.size());
  std::vector<size_t> order(plan.batches.size());
  for (size_t i = 0; i < order.size(); ++i) {
    cost[i] = batch_cost(plan, plan.batches[i]);
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  std::vector<int> owner(plan.batches.size(), 0);
  for (size_t i : order) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += cost[i];
  }
  return owner;
}

void keep_rank_batches(TttPlan& plan, int rank, int world) {
  if (plan.world != 1) fail(kWhat, "keep_rank_batches takes a one-rank plan");
  if (world < 1 || rank < 0 || rank >= world)
    fail(kWhat, "rank " + std::to_string(rank) + " outside a world of " + std::to_string(world));
  const std::vector<int> owner = balance_batches(plan, world);
  std::vector<TttBatch> mine;
  plan.rank_docs.clear();
  for (size_t i = 0; i < plan.batches.size(); ++i)
    if (owner[i] == rank) {
      plan.rank_docs.insert(plan.rank_docs.end(), plan.batches[i].docs.begin(), plan.batches[i].docs.end());
      mine.push_back(std::move(plan.batches[i]));
    }
  plan.batches = std::move(mine);
  plan.rank = rank;
  plan.world = world;
}

TttChunk chunk_at(const TttPlan& plan, uint32_t doc, uint32_t chunk_index) {
  if (doc >= plan.docs.size())
    fail(kWhat, "document " + std::to_string(doc) + " out of range (" +
                    std::to_string(plan.docs.size()) + " documents)");
  const TttDocument& d = plan.docs[doc];
  if (chunk_index >= d.num_chunks)
    fail(kWhat, "chunk " + std::to_string(chunk_index) + " out of range (document " +
                    std::to_string(doc) + " has " + std::to_string(d.num_chunks) + ")");
  uint64_t first = uint64_t{chunk_index} * plan.chunk;  // prediction offsets [first, end)
  uint64_t end = std::min(first + plan.chunk, d.num_targets());
  uint64_t window = end > plan.context ? end - plan.context : 0;  // never before the BOS
  return {doc, chunk_index, d.bos + first + 1, d.bos + end + 1, d.bos + window,
          chunk_index + 1 == d.num_chunks};
}

std::vector<TttBaseWindow> ttt_base_windows(const TttPlan& plan, const TttBatch& batch) {
  std::vector<TttBaseWindow> out;
  for (uint32_t d : batch.docs) {
    const TttDocument& doc = plan.docs[d];
    if (doc.num_chunks < 2) continue;
    // Chunks 1 .. shared - 1 read from the BOS (their windows grow with them).
    uint32_t shared = 1;
    while (shared < doc.num_chunks && chunk_at(plan, d, shared).context_begin == doc.bos) ++shared;
    if (shared > 1) {
      const TttChunk first = chunk_at(plan, d, 1), last = chunk_at(plan, d, shared - 1);
      out.push_back({d, first.target_begin, last.target_end, doc.bos});
    }
    for (uint32_t c = shared; c < doc.num_chunks; ++c) {
      const TttChunk ch = chunk_at(plan, d, c);
      out.push_back({d, ch.target_begin, ch.target_end, ch.context_begin});
    }
  }
  return out;
}

TttStep step_at(const TttPlan& plan, const TttBatch& batch, uint32_t step) {
  if (step >= batch.num_steps)
    fail(kWhat, "step " + std::to_string(step) + " out of range (batch has " +
                    std::to_string(batch.num_steps) + ")");
  // The reference sizes every row for a full chunk at this step.
  uint64_t full_end = (uint64_t{step} + 1) * plan.chunk;
  TttStep s;
  s.index = step;
  s.width = std::min<uint64_t>(full_end, plan.context);
  s.train_offset = uint64_t{step} * plan.chunk - (full_end - s.width);
  s.update = step + 1 < batch.num_steps;
  for (uint32_t d : batch.docs)
    s.rows.push_back(step < plan.docs[d].num_chunks ? std::optional<TttChunk>(chunk_at(plan, d, step))
                                                    : std::nullopt);
  return s;
}

}  // namespace pgolf
