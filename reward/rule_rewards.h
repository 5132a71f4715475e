// Built-in rule-based reward functions (registered in reward/builtin_rewards.cc):
//   format       R1-Zero <think>…</think><answer>…</answer> structure (ALGORITHMS.md §2.2)
//   countdown    TinyZero's Countdown scorer: 1.0 / 0.1 / 0 (§8.4)
//   gsm8k        verl's GSM8K scorer, strict "#### N" or flexible last number (§8.5)
//   exact_match  completion (or its last <answer>) equals ground_truth after strip/lowercase
//   regex_match  a PCRE2 pattern found in the completion (reward/regex_reward.cc)
//   overlong     DAPO's soft overlong punishment, a length shaping term (§4.4)
// Each factory validates its params (an unknown or ill-typed field is an error naming it). Item
// problems (a missing or malformed ground truth) become RewardOutput::error, never a crash. The
// pure extraction/check functions are exposed for tests and for other rewards to reuse.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"

namespace grpo {

// ---- Factories (params -> function) ----

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeFormatReward(const nlohmann::json& params);
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeCountdownReward(const nlohmann::json& params);
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeGsm8kReward(const nlohmann::json& params);
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeExactMatchReward(const nlohmann::json& params);
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeRegexMatchReward(const nlohmann::json& params);
absl::StatusOr<std::unique_ptr<RewardFunction>> MakeOverlongReward(const nlohmann::json& params);

// ---- Pure pieces ----

// Strict R1-Zero format: after trimming ASCII whitespace the text is exactly
// "<think>A</think>W<answer>B</answer>" with W whitespace only and each of the four tags occurring
// exactly once in the whole text.
bool IsStrictR1Format(std::string_view text);
// Lenient: some "<think>" followed later by "</think>", followed later by "<answer>", followed later
// by "</answer>"; anything may surround or separate them.
bool IsLenientR1Format(std::string_view text);

// TinyZero's extract_solution over the text the policy saw and wrote. TinyZero decodes prompt and
// response together and cuts after the first "Assistant:" (else the first "<|im_start|>assistant");
// we search prompt + completion the same way. When neither marker occurs TinyZero returns None
// (score 0); here that happens only with `require_marker`, otherwise the whole completion is taken
// as the assistant's text (our completions never contain the prompt, so a marker-less prompt is
// normal). Then only the last line ('\n'-split) is searched, the last non-greedy
// <answer>(.*?)</answer> is taken and stripped of ASCII whitespace. nullopt: no answer.
std::optional<std::string> ExtractCountdownAnswer(std::string_view prompt,
                                                  std::string_view completion,
                                                  bool require_marker);

// verl gsm8k.extract_solution: on the last 300 characters (Unicode code points, as Python slices),
// strict: last match of "#### (\-?[0-9\.\,]+)" with "," and "$" removed; flexible: the last match
// of "(\-?[0-9\.\,]+)" that is not "." (kept as is, commas included, like verl). nullopt: none.
std::optional<std::string> ExtractGsm8kAnswer(std::string_view text, bool flexible);

// DAPO eq. 13 with verl's penalty factor: 0 when length <= max - cache, then linear down to
// -penalty_factor at length == max; past max it stays -penalty_factor (the paper's -1; verl never
// sees length > max because generation stops there).
double SoftOverlongPenalty(int64_t length, int64_t max_length, int64_t cache_length,
                           double penalty_factor);

// Number of Unicode code points in UTF-8 `s` (bytes that are not continuation bytes).
int64_t CountCodePoints(std::string_view s);

// ---- Implementation base for per-item rule rewards ----

// Scores each item independently with ScoreOne(); an error status or a thrown exception becomes
// that item's error with score 0.
class RuleReward : public RewardFunction {
 public:
  explicit RuleReward(std::string name) : name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override;

 protected:
  virtual absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& input) const = 0;

 private:
  std::string name_;
};

}  // namespace grpo
