// plot.h — a small SVG line chart for the loss curve written beside the checkpoints.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace dseek::train {

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (step, value)
};

// An SVG document: the series against step, with axes, ticks and a legend.
std::string svg_chart(const std::string& title, const std::vector<Series>& series);

}  // namespace dseek::train
