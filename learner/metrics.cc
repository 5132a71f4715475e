// Metrics files (see metrics.h).
#include "learner/metrics.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_util.h"
#include "common/status.h"
#include "learner/crc32c.h"
#include "proto/tensorboard.pb.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Keeps the lines of a JSONL file whose "step" is <= max_step.
absl::Status TruncateJsonl(const std::string& path, int64_t max_step) {
  if (!fs::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::string kept;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    auto j = ParseJson(std::string_view(line.data(), line.size()));
    if (!j.ok() || !j->is_object() || !j->contains("step") || !(*j)["step"].is_number_integer()) {
      continue;  // a torn last line from a crash
    }
    if ((*j)["step"].get<int64_t>() <= max_step) absl::StrAppend(&kept, line, "\n");
  }
  return WriteFileAtomic(path, kept);
}

}  // namespace

std::string TfRecord(const std::string& data) {
  std::string out;
  const uint64_t len = data.size();
  std::string len_bytes(reinterpret_cast<const char*>(&len), 8);
  const uint32_t len_crc = MaskCrc32c(Crc32cOf(len_bytes));
  const uint32_t data_crc = MaskCrc32c(Crc32cOf(data));
  out += len_bytes;
  out.append(reinterpret_cast<const char*>(&len_crc), 4);
  out += data;
  out.append(reinterpret_cast<const char*>(&data_crc), 4);
  return out;
}

std::string ScalarEvent(int64_t step, double wall_time,
                        const std::map<std::string, double>& scalars) {
  tensorboard::Event ev;
  ev.set_wall_time(wall_time);
  ev.set_step(step);
  for (const auto& [tag, v] : scalars) {
    auto* val = ev.mutable_summary()->add_value();
    val->set_tag(tag);
    val->set_simple_value(static_cast<float>(v));
  }
  return ev.SerializeAsString();
}

absl::StatusOr<std::vector<std::string>> ReadTfRecords(const std::string& bytes) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const std::string where = absl::StrCat("record ", out.size(), " at byte ", pos);
    if (bytes.size() - pos < 12)
      return absl::DataLossError(absl::StrCat(where, ": truncated header"));
    uint64_t len;
    uint32_t len_crc, data_crc;
    std::memcpy(&len, bytes.data() + pos, 8);
    std::memcpy(&len_crc, bytes.data() + pos + 8, 4);
    if (MaskCrc32c(Crc32cOf(std::string_view(bytes.data() + pos, 8))) != len_crc) {
      return absl::DataLossError(absl::StrCat(where, ": length CRC mismatch"));
    }
    if (bytes.size() - pos - 12 < len + 4)
      return absl::DataLossError(absl::StrCat(where, ": truncated data"));
    std::string data = bytes.substr(pos + 12, len);
    std::memcpy(&data_crc, bytes.data() + pos + 12 + len, 4);
    if (MaskCrc32c(Crc32cOf(data)) != data_crc) {
      return absl::DataLossError(absl::StrCat(where, ": data CRC mismatch"));
    }
    out.push_back(std::move(data));
    pos += 12 + len + 4;
  }
  return out;
}

absl::StatusOr<MetricsWriter> MetricsWriter::Open(const std::string& output_dir, bool tensorboard,
                                                  int64_t resume_step) {
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", output_dir, ": ", ec.message()));
  MetricsWriter w;
  w.dir_ = output_dir;
  const std::string metrics_path = (fs::path(output_dir) / "metrics.jsonl").string();
  const std::string samples_path = (fs::path(output_dir) / "samples.jsonl").string();
  std::ios::openmode mode = std::ios::out | std::ios::binary;
  if (resume_step >= 0) {
    RETURN_IF_ERROR(TruncateJsonl(metrics_path, resume_step));
    RETURN_IF_ERROR(TruncateJsonl(samples_path, resume_step));
    mode |= std::ios::app;
  } else {
    mode |= std::ios::trunc;
  }
  w.metrics_.open(metrics_path, mode);
  w.samples_.open(samples_path, mode);
  if (!w.metrics_ || !w.samples_) {
    return absl::InternalError(absl::StrCat("cannot open metrics files in ", output_dir));
  }
  if (tensorboard) {
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    // A counter keeps two writers opened within one second (tests, quick resumes) apart.
    static int counter = 0;
    w.events_path_ = (fs::path(output_dir) / absl::StrCat("events.out.tfevents.",
                                                          static_cast<int64_t>(WallTime()), ".",
                                                          host, ".", getpid(), ".", counter++))
                         .string();
    w.events_.open(w.events_path_, std::ios::out | std::ios::binary | std::ios::trunc);
    if (!w.events_) return absl::InternalError(absl::StrCat("cannot open ", w.events_path_));
    tensorboard::Event first;
    first.set_wall_time(WallTime());
    first.set_file_version("brain.Event:2");
    w.events_ << TfRecord(first.SerializeAsString());
    w.events_.flush();
  }
  return w;
}

absl::Status MetricsWriter::Write(int64_t step, const std::map<std::string, double>& metrics) {
  nlohmann::json j = {{"step", step}};
  for (const auto& [k, v] : metrics) {
    j[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  }
  metrics_ << j.dump() << "\n";
  metrics_.flush();
  if (events_.is_open()) {
    events_ << TfRecord(ScalarEvent(step, WallTime(), metrics));
    events_.flush();
  }
  if (!metrics_ || (events_.is_open() && !events_)) {
    return absl::InternalError(absl::StrCat("writing metrics in ", dir_, " failed (disk full?)"));
  }
  return absl::OkStatus();
}

absl::Status MetricsWriter::WriteSamples(int64_t step, const std::vector<nlohmann::json>& samples) {
  for (const nlohmann::json& s : samples) {
    nlohmann::json j = s;
    j["step"] = step;
    samples_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  samples_.flush();
  if (!samples_) return absl::InternalError(absl::StrCat("writing samples in ", dir_, " failed"));
  return absl::OkStatus();
}

}  // namespace grpo
