#include "common/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace grpo {
namespace {

// Colors that stay apart for the common kinds of color blindness (Okabe-Ito).
constexpr const char* kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                   "#E69F00", "#56B4E9", "#000000"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// A tick label: short, no trailing zeros, scientific only for very large or small values.
std::string TickLabel(double v, double step) {
  char buf[32];
  if (std::fabs(v) < step * 1e-6) v = 0;
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-3)) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
  } else {
    const int decimals = step >= 1 ? 0 : std::min(6, static_cast<int>(std::ceil(-std::log10(step))));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  }
  return buf;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void Add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

}  // namespace

std::vector<double> NiceTicks(double lo, double hi) {
  std::vector<double> ticks;
  if (!std::isfinite(lo) || !std::isfinite(hi) || hi < lo) return ticks;
  if (hi == lo) return {lo};
  const double span = hi - lo;
  double step = std::pow(10.0, std::floor(std::log10(span / 5)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (span / (step * m) <= 8) {
      step *= m;
      break;
    }
  }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::vector<double> MovingAverage(const std::vector<double>& y, int window) {
  if (window <= 1) return y;
  std::vector<double> out(y.size(), std::numeric_limits<double>::quiet_NaN());
  std::vector<double> recent;
  double sum = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) continue;  // a gap stays a gap
    recent.push_back(y[i]);
    sum += y[i];
    if (static_cast<int>(recent.size()) > window) {
      sum -= recent[recent.size() - 1 - window];
    }
    out[i] = sum / std::min<double>(window, recent.size());
  }
  return out;
}

std::string RenderSvgPlot(const std::vector<PlotPanel>& panels, const SvgPlotOptions& o) {
  const int cols = std::max(1, std::min<int>(o.columns, std::max<size_t>(panels.size(), 1)));
  const int rows = static_cast<int>((panels.size() + cols - 1) / cols);
  const int top = o.title.empty() ? 0 : 36;
  const int width = cols * o.panel_width;
  const int height = top + std::max(rows, 1) * o.panel_height;
  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) +
       "\" height=\"" + std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) +
       " " + std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!o.title.empty()) {
    s += "<text x=\"" + std::to_string(width / 2) +
         "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">" +
         Escape(o.title) + "</text>\n";
  }
  // Plot area inside each panel, in pixels.
  constexpr double kLeft = 62, kRight = 16, kTop = 28, kBottom = 44;
  for (size_t p = 0; p < panels.size(); ++p) {
    const PlotPanel& panel = panels[p];
    const double ox = static_cast<double>(p % cols) * o.panel_width;
    const double oy = top + static_cast<double>(p / cols) * o.panel_height;
    const double x0 = ox + kLeft, x1 = ox + o.panel_width - kRight;
    const double y0 = oy + kTop, y1 = oy + o.panel_height - kBottom;
    s += "<text x=\"" + Num((x0 + x1) / 2) + "\" y=\"" + Num(oy + 18) +
         "\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
         Escape(panel.title) + "</text>\n";
    Range xr, yr;
    for (const PlotSeries& ser : panel.series) {
      for (size_t i = 0; i < ser.x.size() && i < ser.y.size(); ++i) {
        if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
        xr.Add(ser.x[i]);
        yr.Add(ser.y[i]);
      }
    }
    s += "<rect x=\"" + Num(x0) + "\" y=\"" + Num(y0) + "\" width=\"" + Num(x1 - x0) +
         "\" height=\"" + Num(y1 - y0) + "\" fill=\"none\" stroke=\"#888\"/>\n";
    if (xr.empty()) {
      s += "<text x=\"" + Num((x0 + x1) / 2) + "\" y=\"" + Num((y0 + y1) / 2) +
           "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";
      continue;
    }
    if (xr.hi == xr.lo) { xr.lo -= 0.5; xr.hi += 0.5; }
    if (yr.hi == yr.lo) {
      yr.lo -= 0.5;
      yr.hi += 0.5;
    } else {
      const double pad = (yr.hi - yr.lo) * 0.05;
      yr.lo -= pad;
      yr.hi += pad;
    }
    auto px = [&](double x) { return x0 + (x - xr.lo) / (xr.hi - xr.lo) * (x1 - x0); };
    auto py = [&](double y) { return y1 - (y - yr.lo) / (yr.hi - yr.lo) * (y1 - y0); };
    const std::vector<double> yt = NiceTicks(yr.lo, yr.hi);
    const double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
    for (double t : yt) {
      s += "<line x1=\"" + Num(x0) + "\" x2=\"" + Num(x1) + "\" y1=\"" + Num(py(t)) + "\" y2=\"" +
           Num(py(t)) + "\" stroke=\"#e4e4e4\"/>\n";
      s += "<text x=\"" + Num(x0 - 6) + "\" y=\"" + Num(py(t) + 4) + "\" text-anchor=\"end\">" +
           TickLabel(t, ystep) + "</text>\n";
    }
    const std::vector<double> xt = NiceTicks(xr.lo, xr.hi);
    const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
    for (double t : xt) {
      s += "<text x=\"" + Num(px(t)) + "\" y=\"" + Num(y1 + 16) + "\" text-anchor=\"middle\">" +
           TickLabel(t, xstep) + "</text>\n";
    }
    s += "<text x=\"" + Num((x0 + x1) / 2) + "\" y=\"" + Num(y1 + 34) +
         "\" text-anchor=\"middle\" fill=\"#444\">" + Escape(o.x_label) + "</text>\n";
    for (size_t k = 0; k < panel.series.size(); ++k) {
      const PlotSeries& ser = panel.series[k];
      const char* color = kColors[k % (sizeof kColors / sizeof kColors[0])];
      // One polyline through the finite points: a metric logged only every N steps (held-out
      // accuracy) has no value in between, which is "not measured", not a break. Sparse series
      // also get a marker per point.
      std::string pts;
      int64_t n_finite = 0;
      for (size_t i = 0; i < ser.x.size() && i < ser.y.size(); ++i) {
        if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
        pts += Num(px(ser.x[i])) + "," + Num(py(ser.y[i])) + " ";
        ++n_finite;
      }
      if (!pts.empty()) {
        s += "<polyline fill=\"none\" stroke=\"" + std::string(color) +
             "\" stroke-width=\"1.6\" points=\"" + pts + "\"/>\n";
      }
      if (n_finite <= 60) {
        for (size_t i = 0; i < ser.x.size() && i < ser.y.size(); ++i) {
          if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
          s += "<circle cx=\"" + Num(px(ser.x[i])) + "\" cy=\"" + Num(py(ser.y[i])) +
               "\" r=\"2.5\" fill=\"" + color + "\"/>\n";
        }
      }
      if (panel.series.size() > 1 || !ser.name.empty()) {  // legend entry
        const double ly = y0 + 14 + 15 * static_cast<double>(k);
        s += "<line x1=\"" + Num(x0 + 8) + "\" x2=\"" + Num(x0 + 24) + "\" y1=\"" + Num(ly - 4) +
             "\" y2=\"" + Num(ly - 4) + "\" stroke=\"" + color + "\" stroke-width=\"2\"/>\n";
        s += "<text x=\"" + Num(x0 + 28) + "\" y=\"" + Num(ly) + "\">" + Escape(ser.name) +
             "</text>\n";
      }
    }
  }
  s += "</svg>\n";
  return s;
}

}  // namespace grpo
