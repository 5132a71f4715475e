// Reading JSON files and fields with errors that name the file and field. nlohmann_json throws;
// these helpers catch at the call and return a Status instead.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo {

// JSON from outside (files, RPCs, plugins) may nest at most this deep: a deeper value would
// overflow the stack when nlohmann copies or prints it (both recurse).
inline constexpr int kMaxJsonDepth = 256;

// Parses JSON text. Syntax errors (with the byte) and nesting deeper than kMaxJsonDepth are
// InvalidArgument errors; callers add the file, line or field.
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text);

// Reads and parses a whole JSON file. Errors name the path and, for syntax errors, the byte.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// Reads a whole file as bytes.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `data` to `path` through a temporary file and rename, so a crash never leaves half a file.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);

// Type name of a JSON value as a user would say it ("number", "string", ...), for messages.
std::string JsonTypeName(const nlohmann::json& j);

}  // namespace grpo
