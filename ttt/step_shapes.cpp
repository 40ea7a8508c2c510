#include "ttt/step_shapes.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace pgolf {

int64_t ttt_batch_rows(const TttPlan& plan) {
  size_t rows = 0;
  for (const TttBatch& b : plan.batches) rows = std::max(rows, b.docs.size());
  return int64_t(rows);
}

TttStep ttt_padded_step(const TttPlan& plan, const TttBatch& batch, uint32_t s, int64_t batch_rows) {
  TttStep st = step_at(plan, batch, s);
  if (int64_t(st.rows.size()) > batch_rows) throw std::logic_error("ttt_padded_step: a batch wider than batch_rows");
  st.rows.insert(st.rows.begin(), size_t(batch_rows) - st.rows.size(), std::nullopt);
  return st;
}

std::vector<int64_t> ttt_step_rows(const TttStep& st, int64_t want) {
  const int64_t B = int64_t(st.rows.size());
  int64_t active = 0;
  for (const auto& ch : st.rows) active += ch.has_value();
  int64_t pad = std::max<int64_t>(0, std::min(want, B) - active);
  std::vector<bool> take(size_t(B), false);
  for (int64_t b = B - 1; b >= 0; --b) {
    if (st.rows[size_t(b)]) take[size_t(b)] = true;
    else if (pad > 0 && b + 1 < B && take[size_t(b + 1)]) take[size_t(b)] = true, --pad;
  }
  for (int64_t b = 0; b < B && pad > 0; ++b)
    if (!take[size_t(b)]) take[size_t(b)] = true, --pad;
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < B; ++b)
    if (take[size_t(b)]) rows.push_back(b);
  return rows;
}

namespace {

bool is_suffix(const TttStepShape& s) { return s.first_row >= 0 && s.first_row + s.rows == s.batch_rows; }

}  // namespace

std::vector<std::vector<TttStepShape>> ttt_step_shapes(const TttPlan& plan) {
  const int64_t batch_rows = ttt_batch_rows(plan);
  std::vector<TttStepShape> shapes;  // all steps, batch after batch
  for (const TttBatch& batch : plan.batches)
    for (uint32_t s = 0; s < batch.num_steps; ++s) {
      const TttStep st = ttt_padded_step(plan, batch, s, batch_rows);
      int64_t active = 0, want = 1;
      for (const auto& ch : st.rows) active += ch.has_value();
      while (want < active) want *= 2;
      const std::vector<int64_t> rows = ttt_step_rows(st, want);
      const bool range = rows.back() - rows.front() + 1 == int64_t(rows.size());
      shapes.push_back(TttStepShape{batch_rows, int64_t(rows.size()), int64_t(st.width), range ? rows.front() : -1,
                                    st.update});
    }
  auto count = [&] {
    std::map<TttStepShape, int> n;
    for (const TttStepShape& s : shapes) ++n[s];
    return n;
  };
  // A batch's last step trains too when the plan has that training shape.
  std::map<TttStepShape, int> n = count();
  for (TttStepShape& s : shapes) {
    TttStepShape trained = s;
    trained.update = true;
    if (!s.update && is_suffix(s) && n.count(trained)) s = trained;
  }
  // A shape that comes once runs as the smallest repeating one that holds it.
  n = count();
  for (TttStepShape& s : shapes) {
    if (n[s] != 1 || !is_suffix(s)) continue;
    const TttStepShape* best = nullptr;
    for (const auto& [c, k] : n)
      if (k > 1 && is_suffix(c) && c.width == s.width && c.rows > s.rows &&
          c.update >= s.update && (!best || std::tie(c.rows, c.update) < std::tie(best->rows, best->update)))
        best = &c;
    if (best) s = *best;
  }
  std::vector<std::vector<TttStepShape>> out;
  auto next = shapes.begin();
  for (const TttBatch& batch : plan.batches) {
    out.emplace_back(next, next + batch.num_steps);
    next += batch.num_steps;
  }
  return out;
}

}  // namespace pgolf
