#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "reward/reward.h"

namespace grpo {

RewardRegistry& RewardRegistry::Global() {
  static RewardRegistry* registry = [] {
    auto* r = new RewardRegistry();
    RegisterBuiltinRewards(r);
    return r;
  }();
  return *registry;
}

absl::Status RewardRegistry::Register(const std::string& name, RewardFactory factory) {
  if (name.empty() || !factory) return absl::InvalidArgumentError("reward: empty name or factory");
  if (!factories_.emplace(name, std::move(factory)).second) {
    return absl::AlreadyExistsError(absl::StrCat("reward function '", name, "' is registered twice"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RewardFunction>> RewardRegistry::Create(
    const std::string& name, const nlohmann::json& params) const {
  auto it = factories_.find(name);
  if (it == factories_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown reward function '", name,
                                            "'; known: ", absl::StrJoin(Names(), ", ")));
  }
  auto fn = it->second(params);
  if (!fn.ok()) return WithContext(fn.status(), absl::StrCat("reward '", name, "' params"));
  return fn;
}

std::vector<std::string> RewardRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, factory] : factories_) names.push_back(name);
  return names;
}

}  // namespace grpo
