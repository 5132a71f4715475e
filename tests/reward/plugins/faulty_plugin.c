/* Test-only reward plugin that misbehaves on request, to exercise reward/isolation.cc. The
 * completion text picks the behaviour (one plugin, so a single batch can mix good and bad items):
 *   "hang"    never returns          "segv"    segfaults           "exit"   calls _exit(3)
 *   "garbage" returns invalid JSON   "noscore" JSON without score  "fail"   GRPO_REWARD_ERROR
 *   "big"     a ~100 KB response (needs the buffer-retry path)
 *   "liar"    claims *out_len > out_cap
 *   otherwise scores 1 + params.bonus, with component "len" = completion length.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reward/plugin_abi.h"
#include "reward/plugins/plugin_json.h"

static int is(const char* c, long n, const char* word) {
  return (size_t)n == strlen(word) && memcmp(c, word, (size_t)n) == 0;
}

static int put(const char* text, size_t n, char* out, size_t cap, size_t* out_len, int rc) {
  *out_len = n;
  if (n > cap) return GRPO_REWARD_BUFFER_TOO_SMALL;
  memcpy(out, text, n);
  return rc;
}

int grpo_reward_score(const char* req, size_t req_len, char* out, size_t cap, size_t* out_len) {
  const char *c, *c_end, *p, *p_end, *b, *b_end;
  char completion[256];
  char buf[256];
  long n;
  double bonus = 0.0;
  if (!pj_find(req, req_len, "completion", &c, &c_end) || c_end - c >= (long)sizeof(completion)) {
    return put("bad completion", 14, out, cap, out_len, GRPO_REWARD_ERROR);
  }
  n = pj_decode_string(c, c_end, completion);
  if (is(completion, n, "hang")) {
    for (;;) pause();
  }
  if (is(completion, n, "segv")) {
    volatile int* null_ptr = NULL;
    *null_ptr = 1;
  }
  if (is(completion, n, "exit")) _exit(3);
  if (is(completion, n, "garbage"))
    return put("}{ not json", 11, out, cap, out_len, GRPO_REWARD_OK);
  if (is(completion, n, "noscore"))
    return put("{\"info\": \"x\"}", 13, out, cap, out_len, GRPO_REWARD_OK);
  if (is(completion, n, "fail"))
    return put("fail requested", 14, out, cap, out_len, GRPO_REWARD_ERROR);
  if (is(completion, n, "liar")) {
    *out_len = cap + 10;
    return GRPO_REWARD_OK;
  }
  if (is(completion, n, "big")) {
    const size_t kInfo = 100000;
    size_t total = kInfo + 32;
    if (total > cap) {
      *out_len = total;
      return GRPO_REWARD_BUFFER_TOO_SMALL;
    }
    memcpy(out, "{\"score\": 7, \"info\": \"", 22);
    memset(out + 22, 'x', kInfo);
    memcpy(out + 22 + kInfo, "\"}", 2);
    *out_len = 22 + kInfo + 2;
    return GRPO_REWARD_OK;
  }
  if (pj_find(req, req_len, "params", &p, &p_end) &&
      pj_find(p, (size_t)(p_end - p), "bonus", &b, &b_end)) {
    bonus = strtod(b, NULL);
  }
  n = snprintf(buf, sizeof(buf), "{\"score\": %.17g, \"components\": {\"len\": %ld}}", 1.0 + bonus,
               n);
  return put(buf, (size_t)n, out, cap, out_len, GRPO_REWARD_OK);
}
