// Field-naming readers for reward params objects (see reward/params.h).
#include "reward/params.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace grpo {
namespace {

// The value of `key`, or nullptr when absent (or params is null).
const nlohmann::json* Find(const nlohmann::json& params, const std::string& key) {
  if (!params.is_object()) return nullptr;
  auto it = params.find(key);
  return it == params.end() ? nullptr : &*it;
}

absl::Status WrongType(const std::string& key, const char* want, const nlohmann::json& got) {
  return absl::InvalidArgumentError(
      absl::StrCat("'", key, "' must be ", want, ", got ", JsonTypeName(got), " ", got.dump()));
}

}  // namespace

absl::Status CheckKnownKeys(const nlohmann::json& params,
                            std::initializer_list<std::string_view> known, std::string_view what) {
  if (params.is_null()) return absl::OkStatus();
  if (!params.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " must be an object, got ",
                                                   JsonTypeName(params)));
  }
  for (const auto& [key, value] : params.items()) {
    bool found = false;
    for (std::string_view k : known) found = found || k == key;
    if (!found) {
      std::string names;
      for (std::string_view k : known) absl::StrAppend(&names, names.empty() ? "" : ", ", std::string(k));
      return absl::InvalidArgumentError(absl::StrCat("unknown field '", key, "' in ", std::string(what),
                                                     "; known: ", names.empty() ? "(none)" : names));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<double> GetNumberParam(const nlohmann::json& params, const std::string& key,
                                      double fallback) {
  const nlohmann::json* v = Find(params, key);
  if (v == nullptr) return fallback;
  if (!v->is_number()) return WrongType(key, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d)) return WrongType(key, "a finite number", *v);
  return d;
}

absl::StatusOr<int64_t> GetIntParam(const nlohmann::json& params, const std::string& key,
                                    int64_t fallback) {
  const nlohmann::json* v = Find(params, key);
  if (v == nullptr) return fallback;
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return WrongType(key, "an int64", *v);
    return static_cast<int64_t>(v->get<uint64_t>());
  }
  if (!v->is_number_integer()) return WrongType(key, "an integer", *v);
  return v->get<int64_t>();
}

absl::StatusOr<bool> GetBoolParam(const nlohmann::json& params, const std::string& key,
                                  bool fallback) {
  const nlohmann::json* v = Find(params, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return WrongType(key, "true or false", *v);
  return v->get<bool>();
}

absl::StatusOr<std::string> GetStringParam(const nlohmann::json& params, const std::string& key,
                                           const std::string& fallback) {
  const nlohmann::json* v = Find(params, key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) return WrongType(key, "a string", *v);
  return v->get<std::string>();
}

absl::StatusOr<std::string> GetChoiceParam(const nlohmann::json& params, const std::string& key,
                                           const std::string& fallback,
                                           std::initializer_list<std::string_view> choices) {
  absl::StatusOr<std::string> v = GetStringParam(params, key, fallback);
  if (!v.ok()) return v;
  for (std::string_view c : choices) {
    if (c == *v) return v;
  }
  std::string names;
  for (std::string_view c : choices) absl::StrAppend(&names, names.empty() ? "\"" : ", \"", std::string(c), "\"");
  return absl::InvalidArgumentError(
      absl::StrCat("'", key, "' must be one of ", names, ", got \"", *v, "\""));
}

}  // namespace grpo
