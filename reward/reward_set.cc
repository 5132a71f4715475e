// RewardSet: builds the configured reward functions and routes, weights and combines their scores
// (see reward/reward_set.h).
#include "reward/reward_set.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/params.h"

namespace grpo {
namespace {

bool Routes(const RewardSpec& spec, const std::string& data_source) {
  return spec.data_sources.empty() ||
         std::find(spec.data_sources.begin(), spec.data_sources.end(), data_source) !=
             spec.data_sources.end();
}

absl::StatusOr<RewardSpec> ParseSpec(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " must be an object, got ", JsonTypeName(j)));
  }
  RETURN_IF_ERROR(CheckKnownKeys(j, {"name", "key", "weight", "params", "data_sources"}, where));
  RewardSpec s;
  if (!j.contains("name")) return absl::InvalidArgumentError(absl::StrCat(where, " needs 'name'"));
  auto name = GetStringParam(j, "name", "");
  if (!name.ok()) return WithContext(name.status(), where);
  s.name = *name;
  auto key = GetStringParam(j, "key", s.name);
  if (!key.ok()) return WithContext(key.status(), where);
  s.key = *key;
  auto weight = GetNumberParam(j, "weight", 1.0);
  if (!weight.ok()) return WithContext(weight.status(), where);
  s.weight = *weight;
  if (j.contains("params")) {
    s.params = j["params"];
    if (!s.params.is_object() && !s.params.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": 'params' must be an object, got ",
                                                     JsonTypeName(s.params)));
    }
  }
  if (j.contains("data_sources")) {
    const nlohmann::json& ds = j["data_sources"];
    if (!ds.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'data_sources' must be an array of strings"));
    }
    for (const auto& d : ds) {
      if (!d.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": 'data_sources' must hold strings, got ", d.dump()));
      }
      s.data_sources.push_back(d.get<std::string>());
    }
  }
  return s;
}

}  // namespace

absl::Status RewardSetConfig::Validate() const {
  if (rewards.empty()) {
    return absl::InvalidArgumentError("reward config: 'rewards' needs at least one reward");
  }
  if (!std::isfinite(failure_score)) {
    return absl::InvalidArgumentError("reward config: 'failure_score' must be finite");
  }
  std::set<std::string> keys;
  for (size_t i = 0; i < rewards.size(); ++i) {
    const RewardSpec& s = rewards[i];
    const std::string where = absl::StrCat("rewards[", i, "]");
    if (s.name.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty 'name'"));
    if (s.key.empty() || s.key.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'key' must be non-empty without '/', got \"", s.key, "\""));
    }
    if (!std::isfinite(s.weight)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": 'weight' must be finite"));
    }
    if (!keys.insert(s.key).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": key \"", s.key, "\" is used twice; give one of them another \"key\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RewardSetConfig> RewardSetConfig::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward config must be an object, got ", JsonTypeName(j)));
  }
  RETURN_IF_ERROR(CheckKnownKeys(j, {"rewards", "failure_score"}, "reward config"));
  RewardSetConfig c;
  auto failure = GetNumberParam(j, "failure_score", 0.0);
  if (!failure.ok()) return WithContext(failure.status(), "reward config");
  c.failure_score = *failure;
  if (!j.contains("rewards") || !j["rewards"].is_array()) {
    return absl::InvalidArgumentError("reward config: 'rewards' must be an array of rewards");
  }
  for (size_t i = 0; i < j["rewards"].size(); ++i) {
    ASSIGN_OR_RETURN(RewardSpec s, ParseSpec(j["rewards"][i], absl::StrCat("rewards[", i, "]")));
    c.rewards.push_back(std::move(s));
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<RewardSet> RewardSet::Create(const RewardSetConfig& config,
                                            const RewardRegistry& registry) {
  RETURN_IF_ERROR(config.Validate());
  RewardSet set;
  set.config_ = config;
  for (size_t i = 0; i < config.rewards.size(); ++i) {
    const RewardSpec& s = config.rewards[i];
    auto fn = registry.Create(s.name, s.params);
    if (!fn.ok()) return WithContext(fn.status(), absl::StrCat("rewards[", i, "] (", s.name, ")"));
    set.functions_.push_back(std::shared_ptr<const RewardFunction>(std::move(*fn)));
  }
  return set;
}

std::vector<RewardOutput> RewardSet::Score(absl::Span<const RewardInput> batch) const {
  std::vector<RewardOutput> outputs(batch.size());
  std::vector<bool> routed(batch.size(), false);
  for (size_t r = 0; r < functions_.size(); ++r) {
    const RewardSpec& spec = config_.rewards[r];
    // Each function sees one sub-batch: the items routed to it, in order.
    std::vector<size_t> idx;
    std::vector<RewardInput> sub;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!Routes(spec, batch[i].data_source)) continue;
      idx.push_back(i);
      sub.push_back(batch[i]);
      routed[i] = true;
    }
    if (idx.empty()) continue;
    std::vector<RewardOutput> got = functions_[r]->Score(sub);
    for (size_t k = 0; k < idx.size(); ++k) {
      RewardOutput& out = outputs[idx[k]];
      const std::string prefix = absl::StrCat(spec.key, ": ");
      if (got.size() != idx.size()) {
        absl::StrAppend(&out.error, out.error.empty() ? "" : "; ", prefix, "returned ",
                        got.size(), " outputs for ", idx.size(), " inputs");
        continue;
      }
      const RewardOutput& one = got[k];
      if (!one.error.empty()) {
        absl::StrAppend(&out.error, out.error.empty() ? "" : "; ", prefix, one.error);
        continue;
      }
      out.score += spec.weight * one.score;
      out.components[spec.key] = one.score;
      for (const auto& [name, value] : one.components) {
        out.components[absl::StrCat(spec.key, "/", name)] = value;
      }
      if (!one.info.empty()) absl::StrAppend(&out.info, out.info.empty() ? "" : "; ", prefix, one.info);
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!routed[i]) {
      outputs[i].error =
          absl::StrCat("no reward function for data_source \"", batch[i].data_source, "\"");
    }
    if (!outputs[i].error.empty()) outputs[i].score = config_.failure_score;
  }
  return outputs;
}

}  // namespace grpo
