// Axes for the report's figures: a plot area inside an Svg with grid, ticks,
// axis labels, a title and caption lines. Data coordinates map to pixels
// linearly or by log10; callers draw their data through px()/py().
#pragma once
#include <string>
#include <vector>

#include "eval/svg.h"

namespace pgolf {

struct Axis {
  double lo = 0, hi = 1;  // hi > lo; lo > 0 on a log axis
  bool log = false;       // log10 scale
  bool integer = false;   // ticks only at whole numbers (chunk indices)
  std::string label;
};

// Tick values inside [lo, hi]: 1-2-5 steps (about 6 ticks) on a linear axis;
// decades on a log axis, plus 2x and 5x when it spans under three decades.
std::vector<double> axis_ticks(const Axis& a);
std::string tick_label(double v);  // "0.5", "1000", "1e+06"

class Chart {
 public:
  Chart(const std::string& title, Axis x, Axis y, double width = 760, double height = 460);

  double px(double x) const;  // data -> pixels (values outside the axis map outside the plot area)
  double py(double y) const;
  double plot_top() const { return top_; }
  double plot_bottom() const { return bottom_; }
  double plot_left() const { return left_; }
  double plot_right() const { return right_; }
  Svg& svg() { return svg_; }
  void caption(const std::string& line);  // up to two lines under the title
  // A legend entry in the row above the plot area: a line sample and its text, left to right.
  void legend(const std::string& text, const std::string& color, const std::string& dash = "");
  std::string str() const { return svg_.str(); }

 private:
  Axis x_, y_;
  double left_, right_, top_, bottom_;
  Svg svg_;
  int captions_ = 0;
  double legend_x_ = 0;
};

}  // namespace pgolf
