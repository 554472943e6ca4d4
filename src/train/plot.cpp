// plot.cpp — SVG line chart (no dependencies).
#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace dseek::train {

namespace {
std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, std::fabs(v) >= 100 || v == std::floor(v) ? "%.0f" : "%.2f", v);
  return b;
}
}  // namespace

std::string svg_chart(const std::string& title, const std::vector<Series>& series) {
  const double W = 720, H = 420, L = 60, R = 20, T = 40, B = 50;
  double x0 = std::numeric_limits<double>::max(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (y1 - y) / (y1 - y0) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
       "fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title
    << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    const double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(yv) << "\" y2=\"" << py(yv)
      << "\" stroke=\"#ddd\"/><text x=\"" << L - 6 << "\" y=\"" << py(yv) + 4 << "\" text-anchor=\"end\">"
      << fmt(yv) << "</text>\n";
    o << "<text x=\"" << px(xv) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">"
      << fmt(std::round(xv)) << "</text>\n";
  }
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">step</text>\n";
  int li = 0;
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    o << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.6\" points=\"";
    for (auto [x, y] : s.points)
      if (std::isfinite(y)) o << px(x) << "," << py(y) << " ";
    o << "\"/>\n";
    if (s.points.size() < 60)
      for (auto [x, y] : s.points)
        if (std::isfinite(y))
          o << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"2.5\" fill=\"" << s.color
            << "\"/>\n";
    o << "<rect x=\"" << W - R - 150 << "\" y=\"" << T + 10 + 18 * li
      << "\" width=\"12\" height=\"3\" fill=\"" << s.color << "\"/><text x=\"" << W - R - 132 << "\" y=\""
      << T + 15 + 18 * li << "\">" << s.name << "</text>\n";
    ++li;
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace dseek::train
