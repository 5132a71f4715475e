/* Test-only reward plugin that forgets to export grpo_reward_score: loading must fail clearly. */
#include "reward/plugin_abi.h"

int grpo_reward_abi_version(void) { return GRPO_REWARD_ABI_VERSION; }
int grpo_reward_scroe(void) { return 0; } /* misspelt on purpose */
