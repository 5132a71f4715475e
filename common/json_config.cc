#include "common/json_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_util.h"
#include "common/status.h"

namespace grpo {

using nlohmann::json;

absl::Status MergeOverDefaults(const json& user, json* defaults,
                               const std::function<bool(const std::string&)>& pass_through,
                               const std::string& prefix) {
  if (!user.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix.empty() ? "the config" : "'" + prefix + "'",
                                                   " must be a JSON object, not ",
                                                   JsonTypeName(user)));
  }
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (!defaults->contains(it.key())) {
      return absl::InvalidArgumentError(absl::StrCat("unknown key '", key, "'"));
    }
    json& d = (*defaults)[it.key()];
    const json& v = it.value();
    if (pass_through && pass_through(key)) {
      if (!v.is_object() && !(d.is_null() && v.is_null())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", key, "' must be an object", d.is_null() ? " or null" : "", ", not ",
            JsonTypeName(v)));
      }
      d = v;
      continue;
    }
    if (d.is_object()) {
      RETURN_IF_ERROR(MergeOverDefaults(v, &d, pass_through, key));
      continue;
    }
    const bool same = d.is_null() || (d.is_number() && v.is_number()) ||
                      (d.is_string() && v.is_string()) || (d.is_boolean() && v.is_boolean()) ||
                      (d.is_array() && v.is_array());
    if (!same) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", key, "' must be a ", JsonTypeName(d), ", not ", JsonTypeName(v)));
    }
    d = v;
  }
  return absl::OkStatus();
}

absl::Status SetDottedKey(const std::string& assignment, json* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set '", assignment, "': expected key.sub=value"));
  }
  const std::string key = assignment.substr(0, eq);
  auto parsed = ParseJson(assignment.substr(eq + 1));
  json value = parsed.ok() ? *parsed : json(assignment.substr(eq + 1));
  json* cur = config;
  for (const auto& part : absl::StrSplit(key, '.')) {
    if (part.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--set '", key, "': empty key part"));
    }
    if (cur->is_null()) *cur = json::object();
    if (!cur->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--set '", key, "': cannot set '", std::string(part), "' inside a non-object value"));
    }
    cur = &(*cur)[std::string(part)];
  }
  *cur = std::move(value);
  return absl::OkStatus();
}

const json& ConfigReader::At(const std::string& path) {
  const json* j = &root;
  for (const auto& part : absl::StrSplit(path, '.')) j = &(*j)[std::string(part)];
  return *j;
}

int64_t ConfigReader::Int(const std::string& path) {
  const json& j = At(path);
  if (!j.is_number_integer()) {
    if (status.ok()) {
      status = absl::InvalidArgumentError(absl::StrCat("'", path, "' must be an integer"));
    }
    return 0;
  }
  return j.get<int64_t>();
}

std::vector<std::string> ConfigReader::Strings(const std::string& path) {
  std::vector<std::string> out;
  for (const json& e : At(path)) {
    if (!e.is_string()) {
      if (status.ok()) {
        status = absl::InvalidArgumentError(absl::StrCat("'", path, "' must hold strings"));
      }
      return {};
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace grpo
