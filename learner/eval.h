// Held-out evaluation: sample K completions per dataset prompt, score them with a RewardSet, and
// summarize accuracy, mean reward (and per-component means), response length and pass@k. Plain
// logic with no printing: `grpo eval` (cli/eval_cmd.cc) prints it, and the trainer can call it for
// periodic held-out evaluation on its own engine.
//
// Rules (shared with the trainer's reward metrics in learner/trainer.cc):
//   - a completion's text is its tokens decoded with special tokens skipped (a stop token such as
//     <|im_end|> is not part of the answer);
//   - a completion is correct when its total reward >= correct_threshold (the trainer's
//     reward/accuracy uses 1.0); a reward error scores failure_score like any other score;
//   - a component mean is over the completions that report that component.
// Reproducibility: prompt i of the request is submitted with prompt_id = its dataset row_idx, so a
// completion depends only on (seed, row, sample index, weights) — the same with or without
// `limit`, and whatever else the engine is running (rollout/engine.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "learner/dataset.h"
#include "model/chat_template.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "reward/reward_set.h"
#include "rollout/engine.h"

namespace grpo {

struct EvalOptions {
  int64_t samples = 1;                // K completions per prompt, >= 1
  // Unset: 0 (greedy) when samples == 1, else 1.0 (pass@k needs distinct samples).
  std::optional<double> temperature;
  double top_p = 1.0;                 // (0, 1]
  int64_t top_k = 0;                  // 0 = off
  int64_t max_new_tokens = 256;
  std::vector<int32_t> stop_token_ids;
  uint64_t seed = 0;
  double correct_threshold = 1.0;     // correct: total reward >= this
  int64_t limit = 0;                  // evaluate the first N rows; 0 = all
  bool deterministic = false;         // batch-invariant prefill (rollout/engine.h)
  Device device = Device::kCpu;       // where Evaluate(model, ...) decodes (EngineOptions::device)
  // Names the dataset in row errors ("SOURCE:LINE: ..."); empty: "line LINE: ...".
  std::string source;

  double EffectiveTemperature() const;
  // Range checks; errors name the field ("eval.samples: 0 must be >= 1").
  absl::Status Validate() const;
};

// One completion of one prompt.
struct EvalCompletion {
  std::string text;         // decoded, special tokens skipped
  int64_t num_tokens = 0;   // generated tokens, stop token included
  FinishReason finish_reason = FinishReason::kUnspecified;
  double reward = 0;
  std::map<std::string, double> components;
  std::string error;        // the reward's error, empty if none
  bool correct = false;
};

// One dataset row and its K completions.
struct EvalRecord {
  int64_t row_idx = 0;        // Example::row_idx
  int64_t line = 0;           // Example::line (1-based line in the dataset file)
  std::string prompt;         // the rendered prompt text the model saw
  nlohmann::json ground_truth;
  std::string data_source;
  std::vector<EvalCompletion> completions;  // (K) by sample index
  int64_t num_correct = 0;

  nlohmann::json ToJson() const;
};

struct EvalResult {
  int64_t num_prompts = 0;
  int64_t num_completions = 0;  // num_prompts * samples
  int64_t samples = 0;          // K
  double temperature = 0;       // the temperature used
  double accuracy = 0;          // mean over all completions of correct
  double mean_reward = 0;
  std::map<std::string, double> component_means;
  double mean_response_tokens = 0;
  int64_t num_truncated = 0;       // completions that hit max_new_tokens
  int64_t num_reward_errors = 0;   // completions whose reward reported an error
  // (k, pass@k) for k = 1, 2, 4, ... <= K, and K itself; each the mean over prompts of
  // PassAtK(K, correct, k).
  std::vector<std::pair<int64_t, double>> pass_at_k;
  std::vector<EvalRecord> records;  // (num_prompts) in dataset order

  // The summary (everything except records) as one JSON object:
  // {"prompts", "completions", "samples", "temperature", "accuracy", "mean_reward",
  //  "reward_components": {...}, "mean_response_tokens", "truncated", "reward_errors",
  //  "pass_at_k": {"1": ..., "2": ...}}.
  nlohmann::json SummaryJson() const;
};

// The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
// Code", eq. 1): the probability that k of n samples drawn without replacement include at least
// one of the c correct ones, 1 - C(n-c, k) / C(n, k), computed as a stable product. Requires
// 0 <= c <= n and 1 <= k <= n (GRPO_CHECK: callers pass counts they made).
double PassAtK(int64_t n, int64_t c, int64_t k);
// The k reported for K samples: 1, 2, 4, ... <= K, then K if it is not a power of two.
std::vector<int64_t> PassAtKValues(int64_t samples);

// Evaluates `examples` (the first options.limit of them when limit > 0) on a running engine.
// `tokenizer` encodes rendered prompts and decodes completions. Errors: a prompt the template
// cannot render or that does not fit the engine (prompt + max_new_tokens > max_context) names
// the row's dataset line ("data.jsonl:7: ...", see EvalOptions::source); engine errors pass
// through.
absl::StatusOr<EvalResult> Evaluate(Engine& engine, const Tokenizer& tokenizer,
                                    absl::Span<const Example> examples, const ChatTemplate& chat_template,
                                    const RewardSet& rewards, const EvalOptions& options);
// Same over a whole Dataset, in file order (its shuffling plays no part).
absl::StatusOr<EvalResult> Evaluate(Engine& engine, const Tokenizer& tokenizer, const Dataset& dataset,
                                    const ChatTemplate& chat_template, const RewardSet& rewards,
                                    const EvalOptions& options);
// Builds a private engine over a copy of `model`'s weights (KV pool sized for the batch) and
// evaluates on it; `model` is not touched.
absl::StatusOr<EvalResult> Evaluate(const Model<float>& model, const Tokenizer& tokenizer,
                                    const Dataset& dataset, const ChatTemplate& chat_template,
                                    const RewardSet& rewards, const EvalOptions& options);

}  // namespace grpo
