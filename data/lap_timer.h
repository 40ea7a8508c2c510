// Host wall time between successive laps: the per-phase seconds that eval and
// TTT report (`host_seconds` in their --json).
#pragma once
#include <chrono>

namespace pgolf {

class LapTimer {
 public:
  // Seconds since construction or the previous lap.
  double lap() {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - t_).count();
    t_ = now;
    return s;
  }

 private:
  std::chrono::steady_clock::time_point t_ = std::chrono::steady_clock::now();
};

}  // namespace pgolf
