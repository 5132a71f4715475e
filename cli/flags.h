// A small `--name value` command-line parser for grpo subcommands. Every flag is declared with
// its help text; unknown flags, missing values and bad numbers are usage errors that name the flag.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grpo::cli {

class Flags {
 public:
  Flags(std::string usage, std::string summary) : usage_(std::move(usage)), summary_(std::move(summary)) {}
  enum class Kind { kString, kInt, kNumber };
  // Declares a flag; required flags have no default. kInt / kNumber values are checked by Parse.
  void Add(const std::string& name, const std::string& help, const std::string& default_value,
           bool required = false, Kind kind = Kind::kString);
  // Parses args; "--help" sets help_requested().
  absl::Status Parse(const std::vector<std::string>& args);
  bool help_requested() const { return help_; }
  std::string Help() const;

  std::string Get(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;
  absl::StatusOr<double> GetDouble(const std::string& name) const;

 private:
  struct Spec {
    std::string help, value, default_value;  // value: the parsed one, else the default
    bool required = false, set = false;
    Kind kind = Kind::kString;
  };
  std::string usage_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  bool help_ = false;
};

}  // namespace grpo::cli
