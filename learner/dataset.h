// Prompt datasets for RL: JSONL rows read once into memory, served in a seeded shuffled order,
// epoch after epoch, with a position a checkpoint can save and restore exactly.
//
// Row format (one JSON object per line; blank lines are ignored):
//   "prompt"        string, or a list of {"role": system|user|assistant, "content": string}
//   "ground_truth"  any JSON (required; what the reward function checks against)
//   "data_source"   string (required; selects the reward function, e.g. "countdown")
//   "extra"         any JSON (optional; carried through untouched)
// Any other key is an error: a misspelt "ground_truth" must not silently become a missing one.
//
// Order: epoch e visits every row once, in a Fisher-Yates permutation drawn from a SplitMix64
// stream keyed by (seed, e) alone, so the order of any epoch can be rebuilt without replaying the
// ones before it. shuffle=false serves the file order every epoch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"

namespace grpo {

struct Example {
  Prompt prompt;
  nlohmann::json ground_truth;
  std::string data_source;
  nlohmann::json extra;  // null when the row has none
  int64_t row_idx = 0;   // 0-based index among the dataset's accepted rows
  int64_t line = 0;      // 1-based line in the source file
};

// Parses one row (see the format above). Errors say what is wrong, without the file and line.
absl::StatusOr<Example> ExampleFromJson(const nlohmann::json& j);
nlohmann::json ExampleToJson(const Example& e);  // the row as written: no row_idx or line

struct DatasetConfig {
  std::string path;                  // JSONL file
  uint64_t seed = 0;                 // shuffling seed
  bool shuffle = true;               // false: file order every epoch
  std::string on_bad_line = "error";  // "error": stop at the first bad line; "skip": count it
  int64_t max_bad_line_messages = 5;  // skip mode keeps the first this-many messages

  absl::Status Validate() const;
};

// Reads {"path", "seed", "shuffle", "on_bad_line", "max_bad_line_messages"} ("path" required);
// unknown keys and wrong types are errors.
absl::StatusOr<DatasetConfig> DatasetConfigFromJson(const nlohmann::json& j);

// Where a dataset stands: the next example served is row perm(seed, epoch)[index].
// `num_rows` and `fingerprint` identify the data it was saved against, so restoring onto a
// different file is an error instead of a silently different order.
struct DatasetPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // examples already served in this epoch
  uint64_t seed = 0;
  int64_t num_rows = 0;
  std::string fingerprint;  // 16 hex digits, FNV-1a of the accepted rows' text

  nlohmann::json ToJson() const;
  static absl::StatusOr<DatasetPosition> FromJson(const nlohmann::json& j);
  bool operator==(const DatasetPosition&) const = default;
};

class Dataset {
 public:
  // Reads and validates the whole file. Errors name "path:line". An empty dataset (no rows, or
  // every row skipped) is an error.
  static absl::StatusOr<Dataset> Load(const DatasetConfig& config);

  // The next example in shuffled order; crosses into the next epoch (a new permutation) when
  // the current one is exhausted. The reference stays valid while the Dataset lives.
  const Example& Next();
  // The next n examples, crossing epoch boundaries as needed (n may exceed size()).
  std::vector<const Example*> NextBatch(int64_t n);

  DatasetPosition position() const;
  // Continues exactly where `pos` was saved. Errors if it was saved with another seed, on a
  // different dataset (row count or fingerprint), or lies outside the epoch.
  absl::Status Restore(const DatasetPosition& pos);

  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  const Example& row(int64_t row_idx) const { return rows_[row_idx]; }
  // The row order of `epoch` (row indices); exposed for tests and inspection.
  std::vector<int64_t> EpochOrder(int64_t epoch) const;

  // Skip mode: how many lines were skipped and the first few "path:line: why" messages.
  int64_t num_bad_lines() const { return num_bad_lines_; }
  const std::vector<std::string>& bad_line_messages() const { return bad_line_messages_; }

 private:
  Dataset() = default;

  DatasetConfig config_;
  std::vector<Example> rows_;
  std::string fingerprint_;
  int64_t epoch_ = 0;
  int64_t index_ = 0;
  std::vector<int64_t> order_;  // EpochOrder(epoch_)
  int64_t num_bad_lines_ = 0;
  std::vector<std::string> bad_line_messages_;
};

}  // namespace grpo
