// The `judge` reward: a generative judge. A causal LM (any supported family, HF checkpoint)
// reads a judging prompt built from the item, generates a verdict with the rollout engine
// (rollout/engine.h), and the score is parsed from the verdict text. Every Score() call has a
// deadline: items without a verdict by then get an error (and the failure score), their
// generation is cancelled, and the call returns.
//
// Config (`params` of {"name": "judge", ...}; unknown keys are errors):
//   path            required. HF causal-LM directory (config.json + safetensors).
//   tokenizer       tokenizer.json path; default PATH/tokenizer.json.
//   judge_prompt    the judge's question, with placeholders {prompt}, {completion} and
//                   {ground_truth} (JSON strings are inserted as their text, other JSON as JSON);
//                   {{ and }} are literal braces; any other {name} is a config error. Default:
//                   "Question:\n{prompt}\n\nAnswer:\n{completion}\n\nRate the answer from 0 to 10.
//                   " "Reply with \"Score: N\"."
//   template        "none" (the judge prompt is the whole text) or a chat template object
//                   (model/chat_template.h), the judge prompt being one user message; default
//                   {"name": "chatml"}.
//   score_prefix    the verdict's score is the number right after the LAST occurrence of this
//                   text (ASCII case-insensitive), spaces allowed in between; a number is
//                   [-+]digits[.digits]. Default "Score:".
//   min_score, max_score   the range a verdict may give (default 0 and 10). A number outside it,
//                   or no number, is that item's error.
//   normalize       true (default): score = (N - min_score) / (max_score - min_score), in [0, 1];
//                   false: score = N.
//   max_new_tokens  default 64. temperature default 0 (greedy), top_p 1, top_k 0, seed 0.
//   stop_token_ids  default: the tokenizer's <|im_end|> and <|endoftext|> ids where they exist.
//   deadline_ms     per Score() call, default 60000.
//   kv_budget_mb (default 256), max_batch (default 64): the engine's (rollout/engine.h).
// Outputs: score; components {"verdict": N}; info: the verdict text (at most 200 bytes).
// Per-item errors: invalid UTF-8, a judge prompt over the model's context with max_new_tokens,
// an id outside the vocabulary, no or out-of-range score, the deadline.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"
#include "rollout/engine.h"

namespace grpo {

struct JudgeRewardOptions {
  std::string path;
  std::string tokenizer;  // empty: path + "/tokenizer.json"
  std::string judge_prompt =
      "Question:\n{prompt}\n\nAnswer:\n{completion}\n\nRate the answer from 0 to 10. Reply with "
      "\"Score: N\".";
  bool use_template = true;
  ChatTemplateConfig chat_template;
  std::string score_prefix = "Score:";
  double min_score = 0.0, max_score = 10.0;
  bool normalize = true;
  SamplingParams sampling;          // group_size 1; temperature 0 and max_new_tokens 64 by default
  bool default_stop_tokens = true;  // stop_token_ids not given: <|im_end|>, <|endoftext|>
  int64_t deadline_ms = 60000;
  EngineOptions engine;

  static absl::StatusOr<JudgeRewardOptions> FromJson(const nlohmann::json& params);
};

// The number after the last `prefix` in `verdict` (see the file comment), or why there is none.
absl::StatusOr<double> ParseJudgeScore(std::string_view verdict, std::string_view prefix);

class JudgeReward : public RewardFunction {
 public:
  static absl::StatusOr<std::unique_ptr<JudgeReward>> Create(const JudgeRewardOptions& options);
  ~JudgeReward() override;

  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override;

  // The judge prompt text for an item (placeholders filled, chat template applied).
  absl::StatusOr<std::string> RenderJudgePrompt(const RewardInput& input) const;

 private:
  // A parsed judge_prompt: literal text and placeholders, in order.
  struct Piece {
    enum class Kind { kText, kPrompt, kCompletion, kGroundTruth } kind;
    std::string text;
  };
  JudgeReward(JudgeRewardOptions options, std::vector<Piece> pieces,
              std::optional<ChatTemplate> tmpl, std::unique_ptr<Tokenizer> tokenizer,
              std::unique_ptr<Engine> engine);

  const std::string name_ = "judge";
  const JudgeRewardOptions options_;
  const std::vector<Piece> pieces_;
  const std::optional<ChatTemplate> template_;
  const std::unique_ptr<Tokenizer> tokenizer_;
  const std::unique_ptr<Engine> engine_;  // thread-safe
};

// Registers the "judge" factory (called from RegisterBuiltinRewards).
absl::Status RegisterJudgeReward(RewardRegistry* registry);

}  // namespace grpo
