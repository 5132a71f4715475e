// Config files as JSON merged over documented defaults: every key the user writes must exist in
// the defaults (a misspelt key is an error naming it, never silently ignored) and have the
// default's kind; subtrees that other parsers own are passed through whole. Shared by the
// learner, SFT and train configs, and by their `--set key.sub=value` overrides.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace grpo {

// Merges `user` into `defaults` (which it overwrites). Errors: a key the defaults lack ("unknown
// key 'a.b'"), a value of another kind than the default's ("'a.b' must be a number, not string").
// For a dotted key where pass_through(key) is true the user's value replaces the default whole;
// it must be an object, or null when the default is null. A null default accepts any value.
absl::Status MergeOverDefaults(const nlohmann::json& user, nlohmann::json* defaults,
                               const std::function<bool(const std::string&)>& pass_through,
                               const std::string& prefix = "");

// Applies "a.b.c=value" to a config object: value is parsed as JSON when it parses (numbers,
// true/false, arrays, objects, quoted strings), else taken as a plain string. Missing objects on
// the path are created; whether the key is allowed is the merge's business.
absl::Status SetDottedKey(const std::string& assignment, nlohmann::json* config);

// Typed reads from a merged config by dotted path. Kinds were checked by the merge; Int also
// checks integrality. The first problem is kept in `status`.
struct ConfigReader {
  const nlohmann::json& root;
  absl::Status status = absl::OkStatus();

  const nlohmann::json& At(const std::string& path);
  double Double(const std::string& path) { return At(path).get<double>(); }
  int64_t Int(const std::string& path);
  std::string Str(const std::string& path) { return At(path).get<std::string>(); }
  bool Bool(const std::string& path) { return At(path).get<bool>(); }
  std::vector<std::string> Strings(const std::string& path);
};

}  // namespace grpo
