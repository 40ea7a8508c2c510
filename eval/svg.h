// A tiny SVG writer: shapes and text in pixel coordinates, numbers with two
// decimals, text XML-escaped. Elements with a non-finite coordinate are
// dropped, so the document is always well-formed. No dependencies.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace pgolf {

class Svg {
 public:
  Svg(double width, double height);

  // dash: an SVG stroke-dasharray ("4 3"), empty for a solid line.
  void line(double x1, double y1, double x2, double y2, const std::string& stroke, double width = 1,
            const std::string& dash = "");
  void rect(double x, double y, double w, double h, const std::string& fill, double opacity = 1);
  void circle(double cx, double cy, double r, const std::string& fill, double opacity = 1);
  void polyline(const std::vector<std::pair<double, double>>& points, const std::string& stroke, double width = 1.5);
  // anchor: start, middle or end; rotate: degrees about (x, y).
  void text(double x, double y, const std::string& s, const std::string& anchor = "start", double size = 12,
            double rotate = 0, const std::string& fill = "#222");

  std::string str() const;  // the whole document, XML declaration first

 private:
  double width_, height_;
  std::string body_;
};

std::string xml_escape(const std::string& s);

}  // namespace pgolf
