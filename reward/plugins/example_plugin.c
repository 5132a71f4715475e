/* Example reward plugin (reward plugin ABI v1, see reward/plugin_abi.h): scores 1 when the
 * completion contains the ground truth, else 0. The ground truth may be a JSON string or number
 * (a number is matched as written in the dataset, e.g. 42 or 3.5). With params
 * {"score_if_found": x} the found score is x instead of 1.
 *
 * Built in-tree as a MODULE library (grpo_example_plugin.so); use it with
 *   {"name": "plugin", "params": {"path": "build/reward/grpo_example_plugin.so"}}
 */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reward/plugin_abi.h"
#include "reward/plugins/plugin_json.h"

int grpo_reward_abi_version(void) { return GRPO_REWARD_ABI_VERSION; }

static int reply(int rc, char* out, size_t cap, size_t* out_len, const char* text) {
  size_t n = strlen(text);
  if (n > cap) {
    *out_len = n;
    return GRPO_REWARD_BUFFER_TOO_SMALL;
  }
  memcpy(out, text, n);
  *out_len = n;
  return rc;
}

int grpo_reward_score(const char* req, size_t req_len, char* out, size_t cap, size_t* out_len) {
  const char *c, *c_end, *g, *g_end, *p, *p_end, *s, *s_end;
  char *completion, *truth;
  long completion_len, truth_len;
  double found_score = 1.0;
  int found, n;
  char buf[160];

  if (!pj_find(req, req_len, "completion", &c, &c_end)) {
    return reply(GRPO_REWARD_ERROR, out, cap, out_len, "request has no \"completion\"");
  }
  if (!pj_find(req, req_len, "ground_truth", &g, &g_end) || *g == 'n') {
    return reply(GRPO_REWARD_ERROR, out, cap, out_len, "item has no ground_truth");
  }
  if (pj_find(req, req_len, "params", &p, &p_end) &&
      pj_find(p, (size_t)(p_end - p), "score_if_found", &s, &s_end)) {
    found_score = strtod(s, NULL);
  }
  completion = malloc((size_t)(c_end - c) + 1);
  truth = malloc((size_t)(g_end - g) + 1);
  if (completion == NULL || truth == NULL) {
    free(completion);
    free(truth);
    return reply(GRPO_REWARD_ERROR, out, cap, out_len, "out of memory");
  }
  completion_len = pj_decode_string(c, c_end, completion);
  if (*g == '"') {
    truth_len = pj_decode_string(g, g_end, truth);
  } else if (*g == '-' || (*g >= '0' && *g <= '9')) {
    truth_len = (long)(g_end - g);
    memcpy(truth, g, (size_t)truth_len);
  } else {
    truth_len = -1;
  }
  if (completion_len < 0 || truth_len < 0) {
    free(completion);
    free(truth);
    return reply(GRPO_REWARD_ERROR, out, cap, out_len,
                 "completion must be a string and ground_truth a string or number");
  }
  found = truth_len == 0 ||
          memmem(completion, (size_t)completion_len, truth, (size_t)truth_len) != NULL;
  free(completion);
  free(truth);
  n = snprintf(
      buf, sizeof(buf), "{\"score\": %.17g, \"components\": {\"contains\": %d}, \"info\": \"%s\"}",
      found ? found_score : 0.0, found, found ? "ground truth found" : "ground truth not found");
  if (n < 0 || (size_t)n >= sizeof(buf))
    return reply(GRPO_REWARD_ERROR, out, cap, out_len, "format");
  return reply(GRPO_REWARD_OK, out, cap, out_len, buf);
}
