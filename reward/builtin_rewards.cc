// Registers the built-in reward functions. Each built-in adds one Register call here.
#include "common/status.h"
#include "reward/isolation.h"
#include "reward/reward.h"

namespace grpo {

void RegisterBuiltinRewards(RewardRegistry* registry) {
  GRPO_CHECK(RegisterPluginReward(registry).ok());  // "plugin": reward/isolation.h
}

}  // namespace grpo
