// The `model` reward: scores each (prompt, completion) with a reward model (reward/reward_model.h)
// — renders the conversation, tokenizes, truncates by a fixed rule, scores in packed batches,
// optionally normalizes. Composes with rule rewards like any reward function (weights, keys,
// data_sources routing in reward/reward_set.h).
//
// Config (`params` of {"name": "model", ...}; unknown keys are errors):
//   path              required. HF *ForSequenceClassification directory (config.json, safetensors).
//   tokenizer         tokenizer.json path; default PATH/tokenizer.json.
//   template          "none": the text is prompt + completion as given (the item's prompt is
//                     already templated for the policy, and the reward model shares that format).
//                     Or a chat template object (model/chat_template.h: {"name": "chatml"|...}):
//                     the prompt is one user message, rendered up to the opened assistant turn,
//                     then the completion and `completion_suffix`. Default {"name": "chatml"}.
//   completion_suffix text after the completion; default "<|im_end|>\n" for chatml (what Qwen's
//                     chat template writes after an assistant turn), "" otherwise.
//   prompt_field      "prompt" (default): the item's prompt text. "extra.KEY": the item's
//                     extra[KEY], a string or a message list (the dataset's raw prompt, so the
//                     policy's template does not end up inside the reward model's).
//   max_length        tokens per item; default and upper bound: the model's
//                     max_position_embeddings.
//   truncation        what to do with an item over max_length:
//                     "left" (default): drop tokens from the left of the prompt, keeping the whole
//                       completion (and suffix); the prompt and the completion are then tokenized
//                       separately and concatenated, so a BPE merge across their boundary is lost
//                       (items within max_length are tokenized whole, exactly as HF does). An item
//                       whose completion alone is over max_length is rejected.
//                     "reject": the item gets an error.
//   label             which logit is the score (default 0; < num_labels).
//   normalize         "none" (default); "affine": (raw - shift) / scale with fixed `shift`
//                     (default 0) and `scale` (default 1, > 0); "zscore": (raw - mean) / (std +
//                     eps) over the items of one Score() call that scored (population std; `eps`
//                     default 1e-6). zscore deliberately makes an item's score depend on its batch
//                     (reward/reward.h's contract otherwise forbids it): use it only where one call
//                     is one meaningful population, e.g. one GRPO step. Errors are left out.
//   max_batch_tokens, max_batch_seqs   forward batch budget (reward/reward_model.h).
//   deterministic     true: batch-invariant kernels, so a score is bitwise independent of the
//                     batch it came in (default false: equal up to fp32 rounding, faster).
//   device            "cpu" (the only one today; "cuda" is an error until kernels/cuda has a model
//                     forward).
// Outputs: score as above; components {"raw": the label's logit}. Per-item errors (never a failed
// batch): invalid UTF-8 or a tokenizer failure, an id outside the model's vocabulary, over
// max_length under "reject", a missing or malformed prompt_field value, nothing to score.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"
#include "reward/reward_model.h"

namespace grpo {

struct ModelRewardOptions {
  std::string path;
  std::string tokenizer;             // empty: path + "/tokenizer.json"
  bool use_template = true;          // false: "template": "none"
  ChatTemplateConfig chat_template;  // when use_template
  std::string completion_suffix;
  std::string prompt_field = "prompt";  // or "extra.KEY"
  int64_t max_length = 0;               // 0: the model's max_position_embeddings
  std::string truncation = "left";      // "left" | "reject"
  int64_t label = 0;
  std::string normalize = "none";  // "none" | "affine" | "zscore"
  double shift = 0.0, scale = 1.0, eps = 1e-6;
  RewardModelBatching batching;
  bool deterministic = false;
  std::string device = "cpu";

  // From the factory's params (see the file comment); errors name the field.
  static absl::StatusOr<ModelRewardOptions> FromJson(const nlohmann::json& params);
};

class ModelReward : public RewardFunction {
 public:
  // Loads the model and tokenizer; checks label, max_length and device against the model.
  static absl::StatusOr<std::unique_ptr<ModelReward>> Create(const ModelRewardOptions& options);
  // With an already loaded model and tokenizer (tests, benchmarks).
  static absl::StatusOr<std::unique_ptr<ModelReward>> Create(
      const ModelRewardOptions& options, std::shared_ptr<const RewardModel> model,
      std::shared_ptr<const Tokenizer> tokenizer);

  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override;

  // The token ids an item is scored on (after template, tokenizer and truncation), or its error.
  absl::StatusOr<std::vector<int32_t>> Tokens(const RewardInput& input) const;

  const RewardModel& model() const { return *model_; }
  const ModelRewardOptions& options() const { return options_; }

 private:
  ModelReward(ModelRewardOptions options, std::shared_ptr<const RewardModel> model,
              std::shared_ptr<const Tokenizer> tokenizer, std::optional<ChatTemplate> tmpl);
  absl::StatusOr<std::string> RenderPrompt(const RewardInput& input) const;

  const std::string name_ = "model";
  const ModelRewardOptions options_;
  const std::shared_ptr<const RewardModel> model_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const std::optional<ChatTemplate> template_;
};

// Registers the "model" factory (called from RegisterBuiltinRewards).
absl::Status RegisterModelReward(RewardRegistry* registry);

}  // namespace grpo
