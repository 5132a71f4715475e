// Line charts as standalone SVG text, for `grpo plot` (metrics.jsonl over steps). No dependency
// beyond the standard library: the picture opens in any browser, and a PNG can be made from it
// with any SVG rasterizer (rsvg-convert, inkscape, a browser).
#pragma once

#include <string>
#include <vector>

namespace grpo {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;  // same length; non-finite points are skipped when drawing
};

// One chart; its series share the axes. The y range covers every finite point (padded a little);
// a constant series gets a unit-wide range around its value.
struct PlotPanel {
  std::string title;
  std::vector<PlotSeries> series;
};

struct SvgPlotOptions {
  std::string title;
  std::string x_label = "step";
  int panel_width = 520;   // pixels per panel, axes included
  int panel_height = 300;
  int columns = 2;         // panels per row
};

// Renders the panels in a grid. Text is XML-escaped.
std::string RenderSvgPlot(const std::vector<PlotPanel>& panels, const SvgPlotOptions& options);

// Tick positions for [lo, hi]: 3-8 "nice" values (1, 2 or 5 times a power of ten apart) inside
// the range. Exposed for tests.
std::vector<double> NiceTicks(double lo, double hi);

// Moving average over the last `window` finite values (window <= 1: a copy).
std::vector<double> MovingAverage(const std::vector<double>& y, int window);

}  // namespace grpo
