#include "eval/chart.h"

#include <cmath>
#include <cstdio>

namespace pgolf {

std::vector<double> axis_ticks(const Axis& a) {
  std::vector<double> t;
  if (!(a.hi > a.lo) || !std::isfinite(a.lo) || !std::isfinite(a.hi)) return t;
  if (a.log) {
    if (!(a.lo > 0)) return t;
    const bool fine = a.hi / a.lo < 1000;
    for (double d = std::pow(10.0, std::floor(std::log10(a.lo))); d <= a.hi * (1 + 1e-9); d *= 10)
      for (double m : {1.0, 2.0, 5.0})
        if ((m == 1.0 || fine) && d * m >= a.lo * (1 - 1e-9) && d * m <= a.hi * (1 + 1e-9)) t.push_back(d * m);
    return t;
  }
  const double raw = (a.hi - a.lo) / 6;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  if (a.integer && step < 1) step = 1;
  for (double v = std::ceil(a.lo / step - 1e-9) * step; v <= a.hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);  // no "-0"
  return t;
}

std::string tick_label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

Chart::Chart(const std::string& title, Axis x, Axis y, double width, double height)
    : x_(std::move(x)), y_(std::move(y)), left_(72), right_(width - 24), top_(84), bottom_(height - 52),
      svg_(width, height) {
  svg_.text(width / 2, 24, title, "middle", 15);
  for (double v : axis_ticks(x_)) {
    svg_.line(px(v), top_, px(v), bottom_, "#e4e4e4");
    svg_.line(px(v), bottom_, px(v), bottom_ + 5, "#444");
    svg_.text(px(v), bottom_ + 18, tick_label(v), "middle", 11);
  }
  for (double v : axis_ticks(y_)) {
    svg_.line(left_, py(v), right_, py(v), "#e4e4e4");
    svg_.line(left_ - 5, py(v), left_, py(v), "#444");
    svg_.text(left_ - 8, py(v) + 4, tick_label(v), "end", 11);
  }
  svg_.line(left_, bottom_, right_, bottom_, "#444");
  svg_.line(left_, top_, left_, bottom_, "#444");
  svg_.text((left_ + right_) / 2, height - 14, x_.label, "middle", 12);
  svg_.text(18, (top_ + bottom_) / 2, y_.label, "middle", 12, -90);
}

double Chart::px(double x) const {
  const double f = x_.log ? (std::log10(x) - std::log10(x_.lo)) / (std::log10(x_.hi) - std::log10(x_.lo))
                          : (x - x_.lo) / (x_.hi - x_.lo);
  return left_ + f * (right_ - left_);
}

double Chart::py(double y) const {
  const double f = y_.log ? (std::log10(y) - std::log10(y_.lo)) / (std::log10(y_.hi) - std::log10(y_.lo))
                          : (y - y_.lo) / (y_.hi - y_.lo);
  return bottom_ - f * (bottom_ - top_);
}

void Chart::legend(const std::string& text, const std::string& color, const std::string& dash) {
  const double x = left_ + legend_x_, y = top_ - 10;
  svg_.line(x, y - 4, x + 24, y - 4, color, 2, dash);
  svg_.text(x + 30, y, text, "start", 11, 0, color);
  legend_x_ += 40 + 6.2 * double(text.size());  // roughly the text's width at 11 px
}

void Chart::caption(const std::string& line) {
  if (captions_ >= 2) return;
  svg_.text((left_ + right_) / 2, 42 + 14 * captions_++, line, "middle", 11, 0, "#555");
}

}  // namespace pgolf
