#include "eval/svg.h"

#include <cmath>
#include <cstdio>

namespace pgolf {

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

bool finite(std::initializer_list<double> vs) {
  for (double v : vs)
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (c < 0x20 && c != '\t') out += ' ';  // control bytes are not allowed in XML 1.0
        else out += char(c);
    }
  }
  return out;
}

Svg::Svg(double width, double height) : width_(width), height_(height) {}

void Svg::line(double x1, double y1, double x2, double y2, const std::string& stroke, double width,
               const std::string& dash) {
  if (!finite({x1, y1, x2, y2})) return;
  body_ += "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" + num(y2) +
           "\" stroke=\"" + xml_escape(stroke) + "\" stroke-width=\"" + num(width) + "\"";
  if (!dash.empty()) body_ += " stroke-dasharray=\"" + xml_escape(dash) + "\"";
  body_ += "/>\n";
}

void Svg::rect(double x, double y, double w, double h, const std::string& fill, double opacity) {
  if (!finite({x, y, w, h})) return;
  if (w < 0) x += w, w = -w;
  if (h < 0) y += h, h = -h;
  body_ += "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(w) + "\" height=\"" + num(h) +
           "\" fill=\"" + xml_escape(fill) + "\"" + (opacity < 1 ? " fill-opacity=\"" + num(opacity) + "\"" : "") +
           "/>\n";
}

void Svg::circle(double cx, double cy, double r, const std::string& fill, double opacity) {
  if (!finite({cx, cy, r})) return;
  body_ += "<circle cx=\"" + num(cx) + "\" cy=\"" + num(cy) + "\" r=\"" + num(r) + "\" fill=\"" + xml_escape(fill) +
           "\"" + (opacity < 1 ? " fill-opacity=\"" + num(opacity) + "\"" : "") + "/>\n";
}

void Svg::polyline(const std::vector<std::pair<double, double>>& points, const std::string& stroke, double width) {
  std::string pts;
  for (const auto& [x, y] : points)
    if (finite({x, y})) pts += (pts.empty() ? "" : " ") + num(x) + "," + num(y);
  if (pts.empty()) return;
  body_ += "<polyline points=\"" + pts + "\" fill=\"none\" stroke=\"" + xml_escape(stroke) + "\" stroke-width=\"" +
           num(width) + "\"/>\n";
}

void Svg::text(double x, double y, const std::string& s, const std::string& anchor, double size, double rotate,
               const std::string& fill) {
  if (!finite({x, y, size, rotate})) return;
  body_ += "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" font-size=\"" + num(size) + "\" text-anchor=\"" +
           xml_escape(anchor) + "\" fill=\"" + xml_escape(fill) + "\"";
  if (rotate != 0) body_ += " transform=\"rotate(" + num(rotate) + " " + num(x) + " " + num(y) + ")\"";
  body_ += ">" + xml_escape(s) + "</text>\n";
}

std::string Svg::str() const {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
         num(width_) + "\" height=\"" + num(height_) + "\" viewBox=\"0 0 " + num(width_) + " " + num(height_) +
         "\" font-family=\"sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"" + num(width_) + "\" height=\"" +
         num(height_) + "\" fill=\"white\"/>\n" + body_ + "</svg>\n";
}

}  // namespace pgolf
