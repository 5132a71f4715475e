// `grpo plot`: a run's metrics.jsonl (one JSON object per step) to an SVG of line charts —
// by default reward, accuracy and response length over steps.
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/status.h"
#include "common/svg_plot.h"

namespace grpo::cli {
namespace {

// Panels drawn when --keys is not given; each that no line has is left out.
constexpr char kDefaultKeys[] =
    "reward/mean,reward/accuracy|eval/accuracy,response_length/mean|response_length/max,"
    "actor/kl,actor/entropy,actor/grad_norm";

// The value under `key` in a metrics line: a top-level field of that exact name, else a path
// through nested objects ("reward/mean" -> j["reward"]["mean"]). NaN when absent or not a number.
double Lookup(const nlohmann::json& j, const std::string& key) {
  const nlohmann::json* v = nullptr;
  if (auto it = j.find(key); it != j.end()) {
    v = &*it;
  } else {
    const nlohmann::json* cur = &j;
    for (absl::string_view part : absl::StrSplit(key, '/')) {
      if (!cur->is_object()) return NAN;
      auto it2 = cur->find(std::string(part));
      if (it2 == cur->end()) return NAN;
      cur = &*it2;
    }
    v = cur;
  }
  return v->is_number() ? v->get<double>() : NAN;
}

absl::Status Plot(const Flags& f) {
  const std::string metrics = f.Get("metrics");
  const bool explicit_keys = !f.Get("keys").empty();
  const std::string keys = explicit_keys ? f.Get("keys") : kDefaultKeys;
  ASSIGN_OR_RETURN(int64_t smooth, f.GetInt("smooth"));
  if (smooth < 1) return absl::InvalidArgumentError("--smooth must be >= 1");
  const std::string x_key = f.Get("x");

  std::vector<nlohmann::json> lines;
  RETURN_IF_ERROR(ForEachJsonLine(metrics, [&](const nlohmann::json& j, int64_t) {
    if (!j.is_object()) return absl::InvalidArgumentError("expected a JSON object per line");
    lines.push_back(j);
    return absl::OkStatus();
  }));
  if (lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(metrics, ": no metrics lines to plot"));
  }
  std::vector<double> x(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const double v = Lookup(lines[i], x_key);
    x[i] = std::isfinite(v) ? v : static_cast<double>(i);
  }

  std::vector<PlotPanel> panels;
  for (absl::string_view panel_spec : absl::StrSplit(keys, ',', absl::SkipEmpty())) {
    PlotPanel panel;
    panel.title = std::string(panel_spec);
    for (absl::string_view key : absl::StrSplit(panel_spec, '|', absl::SkipEmpty())) {
      PlotSeries ser;
      ser.name = std::string(key);
      ser.x = x;
      bool any = false;
      for (const auto& j : lines) {
        ser.y.push_back(Lookup(j, ser.name));
        any = any || std::isfinite(ser.y.back());
      }
      if (!any) {
        if (explicit_keys) {
          return absl::InvalidArgumentError(absl::StrCat(
              metrics, ": no line has a numeric '", ser.name,
              "'; pick keys that the file has (see its first line)"));
        }
        continue;
      }
      ser.y = MovingAverage(ser.y, static_cast<int>(smooth));
      panel.series.push_back(std::move(ser));
    }
    if (panel.series.size() == 1) {  // the title names it
      panel.title = panel.series[0].name;
      panel.series[0].name.clear();
    }
    if (!panel.series.empty()) panels.push_back(std::move(panel));
  }
  if (panels.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        metrics, ": none of the default keys (", kDefaultKeys, ") is in the file; pass --keys"));
  }
  SvgPlotOptions options;
  options.title = f.Get("title").empty() ? metrics : f.Get("title");
  options.x_label = x_key;
  if (smooth > 1) options.title += absl::StrCat(" (moving average of ", smooth, ")");
  const std::string out = f.Get("out").empty() ? metrics + ".svg" : f.Get("out");
  RETURN_IF_ERROR(WriteFileAtomic(out, RenderSvgPlot(panels, options)));
  std::printf("wrote %s (%zu panels, %zu steps)\n", out.c_str(), panels.size(), lines.size());
  return absl::OkStatus();
}

}  // namespace

int RunPlotCommand(const std::vector<std::string>& args) {
  Flags f("grpo plot --metrics FILE [--out FILE.svg] [--keys K1,K2|K3] [--smooth N]",
          "Draws a run's metrics.jsonl as line charts over steps in one SVG file (open it in a "
          "browser; rsvg-convert makes a PNG). Keys name numeric fields, top-level or nested "
          "with '/' (reward/mean); ',' separates panels, '|' overlays series in one panel.");
  f.Add("metrics", "metrics JSONL file, one object per step", "", true);
  f.Add("out", "output SVG (default: METRICS.svg)", "");
  f.Add("keys", absl::StrCat("panels to draw (default: those of ", kDefaultKeys,
                             " that the file has)"),
        "");
  f.Add("x", "field for the x axis (a line without it uses its line index)", "step");
  f.Add("smooth", "moving-average window in steps", "1", false, Flags::Kind::kInt);
  f.Add("title", "chart title (default: the metrics path)", "");
  return RunWithFlags(f, args, Plot);
}

}  // namespace grpo::cli
