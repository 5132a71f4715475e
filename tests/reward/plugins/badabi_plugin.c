/* Test-only reward plugin written for a future ABI version: loading must fail clearly. */
#include <stddef.h>

#include "reward/plugin_abi.h"

int grpo_reward_abi_version(void) { return 99; }

int grpo_reward_score(const char* req, size_t req_len, char* out, size_t cap, size_t* out_len) {
  (void)req;
  (void)req_len;
  (void)out;
  (void)cap;
  *out_len = 0;
  return GRPO_REWARD_OK;
}
