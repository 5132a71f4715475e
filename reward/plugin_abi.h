/* The reward-plugin C ABI, version 1: what a shared library must export to be loaded by the
 * "plugin" reward function (reward/isolation.h). Plain C; no C++ types cross the boundary.
 * An example lives in reward/plugins/example_plugin.c.
 *
 * Build:  cc -shared -fPIC -O2 -o my_plugin.so my_plugin.c
 * Config: {"name": "plugin", "params": {"path": "/abs/my_plugin.so", "deadline_ms": 1000,
 *          "num_workers": 2, "failure_score": 0.0, "params": {...passed to the plugin...}}}
 *
 * Where it runs: never in the trainer or service process. The host starts worker processes
 * (the grpo_reward_worker executable); each dlopen()s the plugin once and calls
 * grpo_reward_score() for one item at a time, from a single thread. The plugin therefore
 * need not be thread-safe, may keep global state (caches), but must not rely on it: a worker
 * is killed (SIGKILL) and replaced when an item runs past its deadline or the worker crashes.
 * Anything the plugin writes to stdout or stderr goes to the host's stderr.
 *
 * Request (request_json, UTF-8, NOT NUL-terminated; request_len bytes), one JSON object:
 *   {"prompt": string, "completion": string, "completion_ids": [int, ...],
 *    "ground_truth": any JSON (null when absent), "data_source": string,
 *    "extra": any JSON (null when absent), "params": the config's "params" object ({} default)}
 *   Keys may come in any order; unknown keys may be added in later minor revisions: ignore them.
 *
 * Response, written to out_json (out_cap bytes available; no NUL needed), length in *out_len:
 *   {"score": number, "components": {"name": number, ...}, "info": string}
 *   "components" and "info" are optional. Return GRPO_REWARD_OK.
 *
 * Errors: a malformed item (missing ground truth, wrong types) returns GRPO_REWARD_ERROR with a
 * short plain-text UTF-8 message in out_json and its length in *out_len; the host records the
 * message as the item's error and gives it the configured failure score.
 *
 * Buffer sizing: the host first offers out_cap >= 64 KiB. When the response does not fit,
 * return GRPO_REWARD_BUFFER_TOO_SMALL with *out_len set to the number of bytes needed; the host
 * calls again, once, with out_cap >= that many (up to 64 MiB). Never write past out_cap.
 */
#ifndef GRPO_REWARD_PLUGIN_ABI_H_
#define GRPO_REWARD_PLUGIN_ABI_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GRPO_REWARD_ABI_VERSION 1

/* Return codes of grpo_reward_score(). */
#define GRPO_REWARD_OK 0
#define GRPO_REWARD_ERROR 1
#define GRPO_REWARD_BUFFER_TOO_SMALL 2

/* Required. Scores one item (see above). */
int grpo_reward_score(const char* request_json, size_t request_len, char* out_json, size_t out_cap,
                      size_t* out_len);
typedef int (*grpo_reward_score_fn)(const char*, size_t, char*, size_t, size_t*);

/* Optional. Returns the ABI version the plugin was written for; when exported it must equal
 * GRPO_REWARD_ABI_VERSION or loading fails. A plugin without it is taken to be version 1. */
int grpo_reward_abi_version(void);
typedef int (*grpo_reward_abi_version_fn)(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GRPO_REWARD_PLUGIN_ABI_H_ */
