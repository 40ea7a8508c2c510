// Which batch rows each TTT step forwards on the device, and so its shape
// (ttt/ttt_step.h runs a shape that repeats as a CUDA graph; every new shape
// costs an eager step or a capture: tens of milliseconds of host time during
// which the GPU drains). Pure functions over a plan: no tensors.
//
// Few shapes, by padding with finished rows, which the reference forwards
// anyway (its rows stay in the batch until the batch ends):
// - every batch is as wide as the plan's widest (a short batch's documents
//   take its last rows; the rows before are finished from the start);
// - a step forwards its active rows plus finished rows up to a power of two;
// - a batch's last step, which trains nothing, runs as the training shape of
//   the same rows when the plan has one: its update moves adapters that are
//   reset before they are used again, and every row's loss weight is 0;
// - a shape that would come once runs as the smallest repeating shape that
//   holds it (same width, more rows).
// A step's scores come before its update and rows do not mix, so none of
// this changes what is scored, only which padding is computed beside it.
#pragma once
#include <cstdint>
#include <tuple>
#include <vector>

#include "ttt/chunk_plan.h"

namespace pgolf {

struct TttStepShape {
  int64_t batch_rows = 0;  // rows of the batch's adapters
  int64_t rows = 0, width = 0;
  int64_t first_row = -1;  // >= 0: the step's rows are [first_row, first_row + rows); -1: any listed rows
  bool update = false;     // loss, backward and one optimizer step follow the scores
  bool operator<(const TttStepShape& o) const {
    return std::tie(batch_rows, rows, width, first_row, update) <
           std::tie(o.batch_rows, o.rows, o.width, o.first_row, o.update);
  }
  bool operator==(const TttStepShape& o) const { return !(*this < o) && !(o < *this); }
};

// The rows every batch of `plan` gets on the device: its widest batch's.
int64_t ttt_batch_rows(const TttPlan& plan);

// Step s of a batch with the batch widened to batch_rows rows (the added rows,
// first, are finished from the start).
TttStep ttt_padded_step(const TttPlan& plan, const TttBatch& batch, uint32_t s, int64_t batch_rows);

// The rows a step forwards (ascending): its active rows and, up to `want` rows,
// the finished rows nearest before each active row (one range when the active
// rows are the batch's last ones: a batch's documents come sorted by length).
std::vector<int64_t> ttt_step_rows(const TttStep& st, int64_t want);

// Every step's shape, per batch of `plan` (in plan order), per step. Take
// them from the one-rank plan, so that a document's shapes, and so its
// numbers, do not depend on the world size.
std::vector<std::vector<TttStepShape>> ttt_step_shapes(const TttPlan& plan);

}  // namespace pgolf
