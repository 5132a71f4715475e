// Composition and routing of reward functions from one reward config:
//   {"rewards": [{"name": "countdown", "weight": 1.0, "params": {...}, "data_sources": ["countdown"],
//                 "key": "countdown"}, ...],
//    "failure_score": 0.0}
// Each item goes to every reward whose data_sources include its data_source (a reward without
// data_sources takes every item). Its score is Σ weight·score over those rewards; its components
// hold each reward's score under its key (default: its name) and the reward's own components as
// "key/component". An item no reward takes, or one that any of its rewards failed on, gets
// failure_score and an error naming the data_source or the reward. Plain logic; the reward
// service and `grpo reward score` sit on top.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"

namespace grpo {

struct RewardSpec {
  std::string name;                       // registry name
  std::string key;                        // component name; defaults to name, unique in a set
  double weight = 1.0;                    // finite
  nlohmann::json params;                  // passed to the factory; null = none
  std::vector<std::string> data_sources;  // empty: every data_source
};

struct RewardSetConfig {
  std::vector<RewardSpec> rewards;
  double failure_score = 0.0;

  // At least one reward, names non-empty, weights and failure_score finite, keys unique.
  absl::Status Validate() const;
  // Parses and validates; an unknown key or a wrong type is an error naming the field.
  static absl::StatusOr<RewardSetConfig> FromJson(const nlohmann::json& j);
};

class RewardSet {
 public:
  // Makes every reward through `registry` (errors name the entry: "rewards[1] (gsm8k): ...").
  static absl::StatusOr<RewardSet> Create(const RewardSetConfig& config,
                                          const RewardRegistry& registry = RewardRegistry::Global());

  // One output per input, in order; never throws for bad input (see the file comment). Safe to
  // call concurrently: the functions are const and stateless or lock internally.
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const;

  const RewardSetConfig& config() const { return config_; }
  // The reward functions, parallel to config().rewards (the service reads plugin counters).
  const std::vector<std::shared_ptr<const RewardFunction>>& functions() const { return functions_; }

 private:
  RewardSetConfig config_;
  std::vector<std::shared_ptr<const RewardFunction>> functions_;  // parallel to config_.rewards
};

}  // namespace grpo
