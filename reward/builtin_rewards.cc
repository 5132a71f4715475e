// Registers the built-in reward functions. Each built-in adds one Register call here.
#include "reward/math_reward.h"
#include "reward/reward.h"

namespace grpo {

void RegisterBuiltinRewards(RewardRegistry* registry) {
  (void)registry->Register("math", MakeMathReward);
}

}  // namespace grpo
