// Helpers every `grpo` command shares: flag parsing with the house exit codes (0 ok or --help,
// 1 runtime error, 2 usage error), JSONL input with file:line errors, JSONL output written
// atomically.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/flags.h"
#include "nlohmann/json.hpp"

namespace grpo::cli {

// Parses `args`; returns -1 to go on, else the exit code: 0 after --help (printed), 2 after a
// usage error (printed with the help text).
int ParseFlags(Flags& flags, const std::vector<std::string>& args);
// Prints a usage error with the help text; returns 2.
int UsageError(const absl::Status& s, const Flags& flags);
// Prints "grpo: error: ..." and returns 1.
int Fail(const absl::Status& s);
// ParseFlags, then fn; fn's error is a runtime error (exit 1).
int RunWithFlags(Flags& flags, const std::vector<std::string>& args,
                 const std::function<absl::Status(const Flags&)>& fn);

// Calls fn(object, "path:line") for every non-blank line of a JSONL file. Lines that are not
// JSON are errors naming path:line; fn's errors are returned with "path:line: " prepended.
absl::Status ForEachJsonLine(
    const std::string& path,
    const std::function<absl::Status(const nlohmann::json& j, int64_t line_no)>& fn);

// Writes one JSON object per line, atomically (temporary file + rename).
absl::Status WriteJsonLines(const std::string& path, const std::vector<nlohmann::json>& lines);

// A `--name true|false` flag.
absl::StatusOr<bool> GetBoolFlag(const Flags& flags, const std::string& name);

}  // namespace grpo::cli
