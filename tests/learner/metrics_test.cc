// Tests for learner/metrics.h: TFRecord framing with masked CRC-32C read back and checked, the
// Event/Summary payload, corruption detection, and resume truncation of metrics.jsonl.
// (TensorBoard's own reader is run on a real file by scripts/check_tfevents.py, outside CI.)
#include "learner/metrics.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/json_util.h"
#include "proto/tensorboard.pb.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

TEST_CASE("event files: records round-trip with both CRCs checked", "[metrics]") {
  const std::string dir = (fs::temp_directory_path() / "grpo_metrics_test").string();
  fs::remove_all(dir);
  auto w = MetricsWriter::Open(dir, true, -1);
  REQUIRE(w.ok());
  REQUIRE(w->Write(1, {{"reward/mean", 0.5}, {"actor/kl", 0.0}}).ok());
  REQUIRE(w->Write(2, {{"reward/mean", 0.75}, {"actor/kl", 0.125}}).ok());
  const std::string path = w->events_path();
  auto bytes = ReadFile(path);
  REQUIRE(bytes.ok());
  auto records = ReadTfRecords(*bytes);
  INFO(records.status().ToString());
  REQUIRE(records.ok());
  REQUIRE(records->size() == 3);
  tensorboard::Event first, second;
  REQUIRE(first.ParseFromString((*records)[0]));
  CHECK(first.file_version() == "brain.Event:2");
  REQUIRE(second.ParseFromString((*records)[1]));
  CHECK(second.step() == 1);
  REQUIRE(second.summary().value_size() == 2);
  CHECK(second.summary().value(0).tag() == "actor/kl");
  CHECK(second.summary().value(0).has_simple_value());  // a 0.0 is still written
  CHECK(second.summary().value(1).simple_value() == 0.5f);

  std::string corrupt = *bytes;
  corrupt[corrupt.size() - 6] ^= 0x10;  // inside the last record's data
  auto bad = ReadTfRecords(corrupt);
  REQUIRE(!bad.ok());
  CHECK(std::string(bad.status().message()).find("record 2") != std::string::npos);
  CHECK(!ReadTfRecords(bytes->substr(0, bytes->size() - 2)).ok());
}

TEST_CASE("metrics.jsonl: a resumed writer keeps only the steps up to the checkpoint",
          "[metrics]") {
  const std::string dir = (fs::temp_directory_path() / "grpo_metrics_resume").string();
  fs::remove_all(dir);
  {
    auto w = MetricsWriter::Open(dir, false, -1);
    REQUIRE(w.ok());
    for (int s = 1; s <= 3; ++s) REQUIRE(w->Write(s, {{"x", s * 1.0}}).ok());
    REQUIRE(w->WriteSamples(3, {{{"completion", "abc"}}}).ok());
  }
  {
    auto w = MetricsWriter::Open(dir, false, 2);
    REQUIRE(w.ok());
    REQUIRE(w->Write(3, {{"x", 30.0}}).ok());
  }
  std::ifstream f(fs::path(dir) / "metrics.jsonl");
  std::vector<double> xs;
  std::string line;
  while (std::getline(f, line)) xs.push_back((*ParseJson(line))["x"].get<double>());
  CHECK(xs == std::vector<double>{1, 2, 30});
  std::ifstream s(fs::path(dir) / "samples.jsonl");
  CHECK(!std::getline(s, line));  // step 3's sample was dropped
}

}  // namespace
}  // namespace grpo
