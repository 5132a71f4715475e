// Tests for common/svg_plot.h (the charts of `grpo plot`).
#include "common/svg_plot.h"

#include <cmath>
#include <string>

#include <catch2/catch.hpp>

namespace grpo {
namespace {

int Count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST_CASE("NiceTicks are round values spanning the range") {
  auto t = NiceTicks(0, 1);
  REQUIRE(t.size() >= 3);
  CHECK(t.front() == 0.0);
  CHECK(std::fabs(t.back() - 1.0) < 1e-12);
  CHECK(std::fabs((t[1] - t[0]) - 0.2) < 1e-12);
  t = NiceTicks(-3, 117);
  for (double v : t) CHECK(std::fmod(std::fabs(v), 20.0) < 1e-9);
  CHECK(t.size() <= 8);
  CHECK(NiceTicks(2, 2) == std::vector<double>{2});
  CHECK(NiceTicks(1, 0).empty());
  CHECK(NiceTicks(0, NAN).empty());
}

TEST_CASE("MovingAverage averages the last window finite values and keeps gaps") {
  const auto m = MovingAverage({1, 3, NAN, 5, 7}, 2);
  CHECK(m[0] == 1.0);
  CHECK(m[1] == 2.0);
  CHECK(std::isnan(m[2]));
  CHECK(m[3] == 4.0);  // 3 and 5: the gap does not reset the window
  CHECK(m[4] == 6.0);
  CHECK(MovingAverage({1, 2}, 1) == std::vector<double>{1, 2});
}

TEST_CASE("RenderSvgPlot draws a polyline per series through its finite points and escapes text") {
  PlotPanel a{"reward <mean>", {{"", {0, 1, 2, 3}, {0.1, 0.5, NAN, 0.9}}}};
  PlotPanel b{"length", {{"mean", {0, 1}, {5, 5}}, {"max", {0, 1}, {7, 9}}}};
  PlotPanel empty{"nothing", {}};
  SvgPlotOptions o;
  o.title = "run & co";
  const std::string svg = RenderSvgPlot({a, b, empty}, o);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("reward &lt;mean&gt;") != std::string::npos);
  CHECK(svg.find("run &amp; co") != std::string::npos);
  CHECK(svg.find("<mean>") == std::string::npos);
  // One polyline per series (a NaN is a missing value, not a break): 1 in panel a, 2 in b;
  // series this short get a marker per finite point (3 + 2 + 2).
  CHECK(Count(svg, "<polyline") == 3);
  CHECK(Count(svg, "<circle") == 7);
  CHECK(svg.find(">max</text>") != std::string::npos);
  CHECK(svg.find("no data") != std::string::npos);
  CHECK(svg.find("nan") == std::string::npos);
  CHECK(svg.find("inf") == std::string::npos);
}

}  // namespace
}  // namespace grpo
