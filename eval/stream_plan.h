// The streaming plan (pgolf's, beyond the reference): the stream's targets cut
// into contiguous segments that run side by side, `chunk` tokens of each per
// forward, every forward attending over a KV cache of the L - 1 positions
// before it (model/gpt.h KvCache). A target then sees the L tokens ending at
// it (all before it near the start) at every layer, for about the cost of
// standard evaluation -- where exact sliding windows recompute L positions per
// S scored. Not the same numbers as sliding: a cached position's keys and
// values were computed over its own earlier context, not the current one's
// (it equals a forward over each whole segment with every layer's attention
// cut to the last L keys).
//
// Indexing as in window_plan.h: target t predicts tok[t + 1] from tok[..t].
// Segment i scores the targets [score_from, end) and feeds from feed_from =
// max(0, score_from - (L - 1)): the warm-up targets before score_from fill the
// cache and belong to the previous segment. The stream is trimmed as standard
// eval and the sliding records trim it (trimmed_token_count), so the three
// plans score the same targets.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace pgolf {

struct StreamSegment {
  uint64_t feed_from, score_from, end;
  uint64_t fed() const { return end - feed_from; }
};

struct StreamPlan {
  uint32_t seq_len;  // L: every query sees at most L keys (itself included)
  uint32_t chunk;    // C: tokens of each segment per forward
  uint64_t num_targets;  // of the trimmed stream
  std::vector<StreamSegment> segments;
  // Forwards for segments [begin, end): ceil(longest fed() / chunk).
  uint64_t steps(size_t begin, size_t end) const;
};

// `segments` segments of (as near as possible) equal scored length, fewer when
// the stream has fewer targets. Throws on L = 0, chunk = 0, segments = 0 or a
// stream without one full row of L targets.
StreamPlan make_stream_plan(uint64_t num_tokens, uint32_t seq_len, uint32_t chunk, uint32_t segments);

// Rank r of world w: segments [n r / w, n (r + 1) / w).
std::pair<size_t, size_t> rank_slice(const StreamPlan& plan, int rank, int world);

}  // namespace pgolf
