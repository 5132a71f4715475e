// ModelReward: the `model` reward function (reward/model_reward.h).
#include "reward/model_reward.h"

#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/params.h"
#include "reward/reward_service.h"

namespace grpo {

absl::StatusOr<ModelRewardOptions> ModelRewardOptions::FromJson(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(
      params, {"path", "tokenizer", "template", "completion_suffix", "prompt_field", "max_length",
               "truncation", "label", "normalize", "shift", "scale", "eps", "max_batch_tokens",
               "max_batch_seqs", "deterministic", "device"}));
  ModelRewardOptions o;
  ASSIGN_OR_RETURN(o.path, GetStringParam(params, "path", ""));
  if (o.path.empty()) {
    return absl::InvalidArgumentError(
        "params.path: required, the reward model directory (HF *ForSequenceClassification)");
  }
  ASSIGN_OR_RETURN(o.tokenizer, GetStringParam(params, "tokenizer", ""));
  if (params.is_object() && params.contains("template")) {
    const nlohmann::json& t = params["template"];
    if (t.is_string() && t.get<std::string>() == "none") {
      o.use_template = false;
    } else if (t.is_object()) {
      auto c = ChatTemplateConfigFromJson(t);
      if (!c.ok()) return WithContext(c.status(), "params.template");
      o.chat_template = *c;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "params.template: must be \"none\" or a chat template object like {\"name\": "
          "\"chatml\"}, got ",
          t.dump()));
    }
  }
  const std::string default_suffix =
      o.use_template && o.chat_template.name == "chatml" ? "<|im_end|>\n" : "";
  ASSIGN_OR_RETURN(o.completion_suffix,
                   GetStringParam(params, "completion_suffix", default_suffix));
  ASSIGN_OR_RETURN(o.prompt_field, GetStringParam(params, "prompt_field", o.prompt_field));
  if (o.prompt_field != "prompt" &&
      (!absl::StartsWith(o.prompt_field, "extra.") || o.prompt_field.size() == 6)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "params.prompt_field: must be \"prompt\" or \"extra.KEY\", got \"", o.prompt_field, "\""));
  }
  ASSIGN_OR_RETURN(o.max_length, GetIntParam(params, "max_length", 0));
  if (o.max_length < 0) return absl::InvalidArgumentError("params.max_length: must be >= 1");
  ASSIGN_OR_RETURN(o.truncation, GetChoiceParam(params, "truncation", "left", {"left", "reject"}));
  ASSIGN_OR_RETURN(o.label, GetIntParam(params, "label", 0));
  if (o.label < 0) return absl::InvalidArgumentError("params.label: must be >= 0");
  ASSIGN_OR_RETURN(o.normalize,
                   GetChoiceParam(params, "normalize", "none", {"none", "affine", "zscore"}));
  ASSIGN_OR_RETURN(o.shift, GetNumberParam(params, "shift", 0.0));
  ASSIGN_OR_RETURN(o.scale, GetNumberParam(params, "scale", 1.0));
  ASSIGN_OR_RETURN(o.eps, GetNumberParam(params, "eps", 1e-6));
  if (!(o.scale > 0)) return absl::InvalidArgumentError("params.scale: must be > 0");
  if (!(o.eps > 0)) return absl::InvalidArgumentError("params.eps: must be > 0");
  if (o.normalize != "affine" && params.is_object() &&
      (params.contains("shift") || params.contains("scale"))) {
    return absl::InvalidArgumentError(
        "params.shift/scale: only used with \"normalize\": \"affine\"");
  }
  ASSIGN_OR_RETURN(o.batching.max_batch_tokens,
                   GetIntParam(params, "max_batch_tokens", o.batching.max_batch_tokens));
  ASSIGN_OR_RETURN(o.batching.max_batch_seqs,
                   GetIntParam(params, "max_batch_seqs", o.batching.max_batch_seqs));
  RETURN_IF_ERROR(WithContext(o.batching.Validate(), "params"));
  ASSIGN_OR_RETURN(o.deterministic, GetBoolParam(params, "deterministic", false));
  ASSIGN_OR_RETURN(o.device, GetChoiceParam(params, "device", "cpu", {"cpu", "cuda"}));
  return o;
}

ModelReward::ModelReward(ModelRewardOptions options, std::shared_ptr<const RewardModel> model,
                         std::shared_ptr<const Tokenizer> tokenizer,
                         std::optional<ChatTemplate> tmpl)
    : options_(std::move(options)),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      template_(std::move(tmpl)) {}

absl::StatusOr<std::unique_ptr<ModelReward>> ModelReward::Create(
    const ModelRewardOptions& options) {
  if (options.device != "cpu") {
    return absl::UnimplementedError(absl::StrCat(
        "params.device: \"", options.device,
        "\" has no reward-model forward yet (kernels/cuda has no model); use \"cpu\""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RewardModel> model, RewardModel::Load(options.path));
  model->set_batch_invariant(options.deterministic);
  const std::string tok_path =
      options.tokenizer.empty() ? options.path + "/tokenizer.json" : options.tokenizer;
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(tok_path));
  return Create(options, std::move(model), std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<ModelReward>> ModelReward::Create(
    const ModelRewardOptions& options, std::shared_ptr<const RewardModel> model,
    std::shared_ptr<const Tokenizer> tokenizer) {
  if (model == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("model reward: model and tokenizer are required");
  }
  ModelRewardOptions o = options;
  if (o.label >= model->num_labels()) {
    return absl::InvalidArgumentError(absl::StrCat("params.label: ", o.label, " but the model has ",
                                                   model->num_labels(), " label(s)"));
  }
  if (o.max_length == 0) o.max_length = model->max_length();
  if (o.max_length > model->max_length()) {
    return absl::InvalidArgumentError(absl::StrCat("params.max_length: ", o.max_length,
                                                   " is over the model's max_position_embeddings (",
                                                   model->max_length(), ")"));
  }
  RETURN_IF_ERROR(WithContext(o.batching.Validate(), "params"));
  std::optional<ChatTemplate> tmpl;
  if (o.use_template) {
    auto t = ChatTemplate::Create(o.chat_template);
    if (!t.ok()) return WithContext(t.status(), "params.template");
    tmpl = std::move(*t);
  }
  return std::unique_ptr<ModelReward>(
      new ModelReward(std::move(o), std::move(model), std::move(tokenizer), std::move(tmpl)));
}

absl::StatusOr<std::string> ModelReward::RenderPrompt(const RewardInput& input) const {
  Prompt prompt;
  if (options_.prompt_field == "prompt") {
    prompt = Prompt(input.prompt);
  } else {
    const std::string key = options_.prompt_field.substr(6);
    if (!input.extra.is_object() || !input.extra.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_field ", options_.prompt_field,
                                                     ": the item's extra has no \"", key, "\""));
    }
    auto p = PromptFromJson(input.extra[key]);
    if (!p.ok())
      return WithContext(p.status(), absl::StrCat("prompt_field ", options_.prompt_field));
    prompt = std::move(*p);
  }
  if (!template_) {
    if (!prompt.is_text()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt_field ", options_.prompt_field,
          " is a message list, which needs a chat template (\"template\" is \"none\")"));
    }
    return prompt.text();
  }
  return template_->Render(prompt);
}

absl::StatusOr<std::vector<int32_t>> ModelReward::Tokens(const RewardInput& input) const {
  if (!IsValidUtf8(input.completion))
    return absl::InvalidArgumentError("completion: invalid UTF-8");
  ASSIGN_OR_RETURN(std::string prompt, RenderPrompt(input));
  if (!IsValidUtf8(prompt)) return absl::InvalidArgumentError("prompt: invalid UTF-8");
  const std::string answer = absl::StrCat(input.completion, options_.completion_suffix);
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   tokenizer_->Encode(absl::StrCat(prompt, answer), /*add_special_tokens=*/true));
  const int64_t max_len = options_.max_length;
  if (model_->ScoredLength(ids) <= max_len) return ids;
  if (options_.truncation == "reject") {
    return absl::InvalidArgumentError(absl::StrCat(
        model_->ScoredLength(ids), " tokens exceed max_length ", max_len, " (truncation: reject)"));
  }
  // Left truncation of the prompt: tokenize the parts apart so the boundary is exact.
  ASSIGN_OR_RETURN(std::vector<int32_t> head, tokenizer_->Encode(prompt, true));
  ASSIGN_OR_RETURN(std::vector<int32_t> tail, tokenizer_->Encode(answer, false));
  // Trailing pad ids of the answer are not scored (reward/reward_model.h): they need no room.
  const int64_t tail_len = model_->ScoredLength(tail);
  if (tail_len > max_len) {
    return absl::InvalidArgumentError(absl::StrCat("the completion alone is ", tail_len,
                                                   " tokens, over max_length ", max_len,
                                                   " (truncation keeps the whole completion)"));
  }
  tail.resize(tail_len);
  const int64_t keep = std::min<int64_t>(max_len - tail_len, static_cast<int64_t>(head.size()));
  std::vector<int32_t> out(head.end() - keep, head.end());
  out.insert(out.end(), tail.begin(), tail.end());
  if (out.empty()) return absl::InvalidArgumentError("no tokens to score");
  return out;
}

std::vector<RewardOutput> ModelReward::Score(absl::Span<const RewardInput> batch) const {
  std::vector<RewardOutput> outputs(batch.size());
  std::vector<std::vector<int32_t>> seqs;
  std::vector<size_t> seq_item;  // batch index of seqs[k]
  for (size_t i = 0; i < batch.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids = Tokens(batch[i]);
    absl::Status s = ids.ok() ? model_->CheckSequence(*ids) : ids.status();
    if (!s.ok()) {
      outputs[i].error = std::string(s.message());
      continue;
    }
    seqs.push_back(std::move(*ids));
    seq_item.push_back(i);
  }
  if (seqs.empty()) return outputs;
  std::vector<float> logits;
  if (absl::Status s = model_->Score(seqs, options_.batching, &logits); !s.ok()) {
    // CheckSequence passed for every sequence, so this is not the items' fault; say so per item.
    for (size_t i : seq_item) outputs[i].error = absl::StrCat("reward model: ", s.message());
    return outputs;
  }
  const int64_t L = model_->num_labels();
  std::vector<double> raw(seqs.size());
  for (size_t k = 0; k < seqs.size(); ++k) raw[k] = logits[k * L + options_.label];
  double shift = options_.shift, scale = options_.scale;
  if (options_.normalize == "zscore") {
    double mean = 0, var = 0;
    for (double r : raw) mean += r;
    mean /= static_cast<double>(raw.size());
    for (double r : raw) var += (r - mean) * (r - mean);
    shift = mean;
    scale = std::sqrt(var / static_cast<double>(raw.size())) + options_.eps;
  } else if (options_.normalize == "none") {
    shift = 0, scale = 1;
  }
  for (size_t k = 0; k < seqs.size(); ++k) {
    RewardOutput& out = outputs[seq_item[k]];
    out.score = (raw[k] - shift) / scale;
    out.components["raw"] = raw[k];
  }
  return outputs;
}

absl::Status RegisterModelReward(RewardRegistry* registry) {
  return registry->Register(
      "model", [](const nlohmann::json& params) -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
        ASSIGN_OR_RETURN(ModelRewardOptions options, ModelRewardOptions::FromJson(params));
        ASSIGN_OR_RETURN(std::unique_ptr<ModelReward> reward, ModelReward::Create(options));
        return std::unique_ptr<RewardFunction>(std::move(reward));
      });
}

}  // namespace grpo
