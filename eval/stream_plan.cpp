// The streaming plan (see stream_plan.h).
#include "eval/stream_plan.h"

#include <algorithm>
#include <string>

#include "data/error.h"
#include "eval/window_plan.h"

namespace pgolf {

namespace {
const char* const kWhat = "streaming plan";
}

uint64_t StreamPlan::steps(size_t begin, size_t end) const {
  uint64_t longest = 0;
  for (size_t i = begin; i < end; ++i) longest = std::max(longest, segments[i].fed());
  return (longest + chunk - 1) / chunk;
}

StreamPlan make_stream_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t chunk, uint32_t segments) {
  if (chunk < 1) fail(kWhat, "chunk must be >= 1, got 0");
  if (segments < 1) fail(kWhat, "need at least one segment, got 0");
  StreamPlan p;
  p.seq_len = seq_len;
  p.chunk = chunk;
  p.num_targets = trimmed_token_count(num_tokens, seq_len) - 1;  // checks L and N
  const uint64_t T = p.num_targets, n = std::min<uint64_t>(segments, T), warm = seq_len - 1;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t from = T * i / n, end = T * (i + 1) / n;
    p.segments.push_back({from > warm ? from - warm : 0, from, end});
  }
  return p;
}

std::pair<size_t, size_t> rank_slice(const StreamPlan& plan, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    fail(kWhat, "rank " + std::to_string(rank) + " of world " + std::to_string(world) + " is out of range");
  const size_t n = plan.segments.size();
  return {n * size_t(rank) / size_t(world), n * size_t(rank + 1) / size_t(world)};
}

}  // namespace pgolf
