// The reward-function interface: what every reward (built-in rule, plugin, remote service, reward
// model) implements, and the registry that makes them by name from config. Plain logic; the
// RewardService and the isolation layer wrap these.
//
// Contract for implementers: Score() returns exactly one RewardOutput per input, in order, and
// never throws or aborts for bad input — a malformed item (missing ground truth, wrong JSON type,
// invalid UTF-8) gets RewardOutput::error set and the configured failure score. Scoring must not
// depend on other items of the batch.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace grpo {

struct RewardInput {
  std::string prompt;                   // the prompt text as the policy saw it (templated)
  std::string completion;               // the completion text (decoded from completion_ids)
  std::vector<int32_t> completion_ids;  // the sampled ids; may be empty for text-only callers
  nlohmann::json ground_truth;          // dataset's ground_truth, any JSON; null when absent
  std::string data_source;              // dataset's data_source, routes to reward functions
  nlohmann::json extra;                 // dataset's extra, any JSON; null when absent
};

struct RewardOutput {
  double score = 0.0;
  std::map<std::string, double> components;  // named parts, e.g. {"format": 1, "answer": 0}
  std::string info;                          // optional human-readable detail
  std::string error;                         // non-empty: scoring failed, score is the failure value
};

class RewardFunction {
 public:
  virtual ~RewardFunction() = default;
  virtual const std::string& name() const = 0;
  // One output per input, in order (see the contract above).
  virtual std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const = 0;
};

// Makes a reward function from its `params` object in the reward config. Unknown or invalid
// params are an error naming the field.
using RewardFactory =
    std::function<absl::StatusOr<std::unique_ptr<RewardFunction>>(const nlohmann::json& params)>;

// Name -> factory. Built-in functions register themselves in RegisterBuiltinRewards().
class RewardRegistry {
 public:
  // The process-wide registry with the built-ins registered.
  static RewardRegistry& Global();
  absl::Status Register(const std::string& name, RewardFactory factory);  // duplicate: error
  absl::StatusOr<std::unique_ptr<RewardFunction>> Create(const std::string& name,
                                                         const nlohmann::json& params) const;
  std::vector<std::string> Names() const;  // sorted

 private:
  std::map<std::string, RewardFactory> factories_;
};

// Registers every built-in reward function (reward/builtin_rewards.cc).
void RegisterBuiltinRewards(RewardRegistry* registry);

}  // namespace grpo
