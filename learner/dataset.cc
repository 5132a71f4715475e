// Prompt datasets: JSONL parsing with per-line errors, seeded per-epoch shuffling, and exact
// save/restore of the read position (see dataset.h).
#include "learner/dataset.h"

#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "learner/random.h"

namespace grpo {
namespace {

uint64_t Fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string Hex16(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, x);
  return buf;
}

}  // namespace

absl::StatusOr<Example> ExampleFromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a row must be a JSON object, not ", JsonTypeName(j)));
  }
  for (const auto& [key, value] : j.items()) {
    if (key != "prompt" && key != "ground_truth" && key != "data_source" && key != "extra") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown key \"", key, "\"; a row has prompt, ground_truth, data_source and extra"));
    }
  }
  for (const char* key : {"prompt", "ground_truth", "data_source"}) {
    if (!j.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required key \"", key, "\""));
    }
  }
  Example e;
  ASSIGN_OR_RETURN(e.prompt, PromptFromJson(j["prompt"]));
  e.ground_truth = j["ground_truth"];
  const auto& source = j["data_source"];
  if (!source.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"data_source\" must be a string, not ", JsonTypeName(source)));
  }
  e.data_source = source.get<std::string>();
  if (j.contains("extra")) e.extra = j["extra"];
  return e;
}

nlohmann::json ExampleToJson(const Example& e) {
  nlohmann::json j = {{"prompt", PromptToJson(e.prompt)},
                      {"ground_truth", e.ground_truth},
                      {"data_source", e.data_source}};
  if (!e.extra.is_null()) j["extra"] = e.extra;
  return j;
}

absl::Status DatasetConfig::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("dataset path is empty");
  if (on_bad_line != "error" && on_bad_line != "skip") {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset on_bad_line is \"", on_bad_line, "\"; expected \"error\" or \"skip\""));
  }
  if (max_bad_line_messages < 0) {
    return absl::InvalidArgumentError("dataset max_bad_line_messages must be >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<DatasetConfig> DatasetConfigFromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset config must be an object, not ", JsonTypeName(j)));
  }
  DatasetConfig c;
  for (const auto& [key, value] : j.items()) {
    auto wrong = [&, &key = key, &value = value](const char* want) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset \"", key, "\" must be ", want, ", not ", JsonTypeName(value)));
    };
    if (key == "path" || key == "on_bad_line") {
      if (!value.is_string()) return wrong("a string");
      (key == "path" ? c.path : c.on_bad_line) = value.get<std::string>();
    } else if (key == "shuffle") {
      if (!value.is_boolean()) return wrong("true or false");
      c.shuffle = value.get<bool>();
    } else if (key == "seed") {
      // A JSON value built in code as a signed integer is still fine when it is >= 0.
      if (!value.is_number_integer() || (!value.is_number_unsigned() && value.get<int64_t>() < 0)) {
        return wrong("a non-negative integer");
      }
      c.seed = value.is_number_unsigned() ? value.get<uint64_t>()
                                          : static_cast<uint64_t>(value.get<int64_t>());
    } else if (key == "max_bad_line_messages") {
      if (!value.is_number_integer()) return wrong("an integer");
      c.max_bad_line_messages = value.get<int64_t>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset config has unknown key \"", key,
          "\"; expected path, seed, shuffle, on_bad_line or max_bad_line_messages"));
    }
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

nlohmann::json DatasetPosition::ToJson() const {
  return {{"epoch", epoch}, {"index", index}, {"seed", seed}, {"num_rows", num_rows},
          {"fingerprint", fingerprint}};
}

absl::StatusOr<DatasetPosition> DatasetPosition::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset position must be an object, not ", JsonTypeName(j)));
  }
  DatasetPosition p;
  for (const auto& [key, value] : j.items()) {
    if (key == "fingerprint") {
      if (!value.is_string()) {
        return absl::InvalidArgumentError("dataset position \"fingerprint\" must be a string");
      }
      p.fingerprint = value.get<std::string>();
      continue;
    }
    if (key != "epoch" && key != "index" && key != "seed" && key != "num_rows") {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset position has unknown key \"", key,
          "\"; expected epoch, index, seed, num_rows and fingerprint"));
    }
    const bool non_negative_int =
        value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0);
    if (!non_negative_int) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset position \"", key, "\" must be a non-negative integer, not ", value.dump()));
    }
    if (key == "seed") {
      p.seed = value.get<uint64_t>();
    } else {
      if (value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(absl::StrCat("dataset position \"", key, "\" is too large"));
      }
      (key == "epoch" ? p.epoch : key == "index" ? p.index : p.num_rows) = value.get<int64_t>();
    }
  }
  for (const char* key : {"epoch", "index", "seed", "num_rows", "fingerprint"}) {
    if (!j.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("dataset position is missing \"", key, "\""));
    }
  }
  return p;
}

absl::StatusOr<Dataset> Dataset::Load(const DatasetConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  std::ifstream in(config.path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(config.path, ": cannot open for reading"));
  Dataset ds;
  ds.config_ = config;
  const bool skip = config.on_bad_line == "skip";
  uint64_t hash = 0xcbf29ce484222325ULL;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    absl::StatusOr<nlohmann::json> j = ParseJson(line);
    absl::StatusOr<Example> ex = j.ok() ? ExampleFromJson(*j) : j.status();
    if (!ex.ok()) {
      const std::string msg = absl::StrCat(config.path, ":", line_no, ": ", ex.status().message());
      if (!skip) return absl::InvalidArgumentError(msg);
      ++ds.num_bad_lines_;
      if (static_cast<int64_t>(ds.bad_line_messages_.size()) < config.max_bad_line_messages) {
        ds.bad_line_messages_.push_back(msg);
      }
      continue;
    }
    ex->row_idx = static_cast<int64_t>(ds.rows_.size());
    ex->line = line_no;
    hash = Fnv1a(Fnv1a(hash, line), "\n");
    ds.rows_.push_back(std::move(*ex));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(config.path, ": read failed"));
  if (ds.rows_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.path, ": the dataset is empty",
        ds.num_bad_lines_ > 0 ? absl::StrCat(" (all ", ds.num_bad_lines_, " rows were bad)") : ""));
  }
  ds.fingerprint_ = Hex16(hash);
  ds.order_ = ds.EpochOrder(0);
  return ds;
}

std::vector<int64_t> Dataset::EpochOrder(int64_t epoch) const {
  std::vector<int64_t> order(rows_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  if (!config_.shuffle) return order;
  SplitMix64 rng(config_.seed, static_cast<uint64_t>(epoch));
  for (size_t i = order.size(); i > 1; --i) {
    std::swap(order[i - 1], order[rng.Below(i)]);
  }
  return order;
}

const Example& Dataset::Next() {
  if (index_ == size()) {
    ++epoch_;
    index_ = 0;
    order_ = EpochOrder(epoch_);
  }
  return rows_[order_[index_++]];
}

std::vector<const Example*> Dataset::NextBatch(int64_t n) {
  GRPO_CHECK(n >= 0);
  std::vector<const Example*> batch;
  batch.reserve(n);
  for (int64_t i = 0; i < n; ++i) batch.push_back(&Next());
  return batch;
}

DatasetPosition Dataset::position() const {
  return {epoch_, index_, config_.seed, size(), fingerprint_};
}

absl::Status Dataset::Restore(const DatasetPosition& pos) {
  if (pos.seed != config_.seed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset position was saved with seed ", pos.seed, " but the dataset has seed ",
        config_.seed, "; use the saved seed to continue the same order"));
  }
  if (pos.num_rows != size() || pos.fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat(
        config_.path, ": dataset position was saved for another dataset (", pos.num_rows,
        " rows, fingerprint ", pos.fingerprint, "; this one has ", size(), " rows, fingerprint ",
        fingerprint_, ")"));
  }
  if (pos.index < 0 || pos.index > size() || pos.epoch < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset position epoch ", pos.epoch, " index ", pos.index, " is outside the dataset of ",
        size(), " rows"));
  }
  epoch_ = pos.epoch;
  index_ = pos.index;
  order_ = EpochOrder(epoch_);
  return absl::OkStatus();
}

}  // namespace grpo
