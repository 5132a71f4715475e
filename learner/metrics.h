// Where the learner's numbers go each step: OUTPUT_DIR/metrics.jsonl (one JSON object per step,
// {"step": N, "name": value, ...}), a TensorBoard event file OUTPUT_DIR/events.out.tfevents.* of
// scalar summaries, and OUTPUT_DIR/samples.jsonl (a few prompts, completions and rewards per
// step). The console line is the trainer's.
//
// Event files are TFRecords: uint64 length, uint32 masked CRC-32C of the length, the serialized
// Event (proto/tensorboard.proto), uint32 masked CRC-32C of the data; the first record carries
// file_version "brain.Event:2". scripts/check_tfevents.py reads one back with TensorBoard's own
// reader.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo {

// One TFRecord framing `data`.
std::string TfRecord(const std::string& data);
// A serialized Event with scalar summaries {tag: value} at `step`.
std::string ScalarEvent(int64_t step, double wall_time,
                        const std::map<std::string, double>& scalars);

// Parses TFRecords back, checking both CRCs; errors name the record index and byte offset.
absl::StatusOr<std::vector<std::string>> ReadTfRecords(const std::string& bytes);

class MetricsWriter {
 public:
  // Creates OUTPUT_DIR as needed. `resume_step` >= 0: metrics.jsonl and samples.jsonl keep only
  // the lines of steps <= resume_step (a resumed run rewrites what followed its checkpoint);
  // -1 starts both files afresh. A new event file is opened either way.
  static absl::StatusOr<MetricsWriter> Open(const std::string& output_dir, bool tensorboard,
                                            int64_t resume_step);

  // Appends the step's line to metrics.jsonl and, if enabled, an event record; flushes both.
  absl::Status Write(int64_t step, const std::map<std::string, double>& metrics);
  absl::Status WriteSamples(int64_t step, const std::vector<nlohmann::json>& samples);

  const std::string& events_path() const { return events_path_; }

 private:
  std::string dir_;
  std::string events_path_;
  std::ofstream metrics_, samples_, events_;
};

}  // namespace grpo
