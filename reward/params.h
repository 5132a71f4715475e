// Reading a reward function's `params` object (and other small config objects) with errors that
// name the field: unknown keys are rejected, each typed getter checks the JSON type. Not a general
// JSON schema library; just what the rule rewards and the reward config need.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo {

// `params` must be null (no params) or an object whose keys are all in `known`. The error names
// the first unknown key and lists the known ones. `what` prefixes messages ("params", "rewards[0]").
absl::Status CheckKnownKeys(const nlohmann::json& params, std::initializer_list<std::string_view> known,
                            std::string_view what = "params");

// Typed getters: the field's value, or `fallback` when params is null or lacks the key. A present
// field of the wrong type (or a non-finite number) is an error naming it.
absl::StatusOr<double> GetNumberParam(const nlohmann::json& params, const std::string& key,
                                      double fallback);
absl::StatusOr<int64_t> GetIntParam(const nlohmann::json& params, const std::string& key,
                                    int64_t fallback);
absl::StatusOr<bool> GetBoolParam(const nlohmann::json& params, const std::string& key,
                                  bool fallback);
absl::StatusOr<std::string> GetStringParam(const nlohmann::json& params, const std::string& key,
                                           const std::string& fallback);

// GetStringParam restricted to `choices` (the error lists them).
absl::StatusOr<std::string> GetChoiceParam(const nlohmann::json& params, const std::string& key,
                                           const std::string& fallback,
                                           std::initializer_list<std::string_view> choices);

}  // namespace grpo
