// Registers the built-in reward functions. Each built-in adds one Register call here.
#include "common/status.h"
#include "reward/math_reward.h"
#include "reward/judge_reward.h"
#include "reward/model_reward.h"
#include "reward/isolation.h"
#include "reward/reward.h"
#include "reward/reward_service.h"
#include "reward/rule_rewards.h"

namespace grpo {

void RegisterBuiltinRewards(RewardRegistry* registry) {
  // Rule rewards (reward/rule_rewards.h).
  GRPO_CHECK(registry->Register("format", MakeFormatReward).ok());
  GRPO_CHECK(registry->Register("countdown", MakeCountdownReward).ok());
  GRPO_CHECK(registry->Register("gsm8k", MakeGsm8kReward).ok());
  GRPO_CHECK(registry->Register("exact_match", MakeExactMatchReward).ok());
  GRPO_CHECK(registry->Register("regex_match", MakeRegexMatchReward).ok());
  GRPO_CHECK(registry->Register("overlong", MakeOverlongReward).ok());
  // Math answers (reward/math_reward.h).
  GRPO_CHECK(registry->Register("math", MakeMathReward).ok());
  // C-ABI plugins in worker subprocesses with hard deadlines (reward/isolation.h).
  GRPO_CHECK(RegisterPluginReward(registry).ok());
  GRPO_CHECK(RegisterRemoteReward(registry).ok());  // a RewardService (reward/reward_service.h)
  GRPO_CHECK(RegisterModelReward(registry).ok());   // a reward model (reward/model_reward.h)
  GRPO_CHECK(RegisterJudgeReward(registry).ok());   // a generative judge (reward/judge_reward.h)
}

}  // namespace grpo
