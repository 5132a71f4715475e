// JudgeReward: the generative `judge` reward (reward/judge_reward.h).
#include "reward/judge_reward.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "reward/params.h"
#include "reward/reward_service.h"

namespace grpo {
namespace {

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

}  // namespace

absl::StatusOr<double> ParseJudgeScore(std::string_view verdict, std::string_view prefix) {
  // The last occurrence of prefix, ASCII case-insensitive.
  size_t at = std::string_view::npos;
  if (prefix.size() <= verdict.size()) {
    for (size_t i = verdict.size() - prefix.size() + 1; i-- > 0;) {
      bool eq = true;
      for (size_t k = 0; k < prefix.size() && eq; ++k)
        eq = Lower(verdict[i + k]) == Lower(prefix[k]);
      if (eq) {
        at = i;
        break;
      }
    }
  }
  if (at == std::string_view::npos) {
    return absl::NotFoundError(absl::StrCat("no \"", std::string(prefix), "\" in the verdict"));
  }
  size_t p = at + prefix.size();
  while (p < verdict.size() && (verdict[p] == ' ' || verdict[p] == '\t')) ++p;
  const size_t start = p;
  if (p < verdict.size() && (verdict[p] == '-' || verdict[p] == '+')) ++p;
  const size_t digits = p;
  while (p < verdict.size() && std::isdigit(static_cast<unsigned char>(verdict[p]))) ++p;
  if (p == digits) {
    return absl::NotFoundError(
        absl::StrCat("no number after \"", std::string(prefix), "\" in the verdict"));
  }
  if (p + 1 < verdict.size() && verdict[p] == '.' &&
      std::isdigit(static_cast<unsigned char>(verdict[p + 1]))) {
    ++p;
    while (p < verdict.size() && std::isdigit(static_cast<unsigned char>(verdict[p]))) ++p;
  }
  const std::string number(verdict.substr(start, std::min<size_t>(p - start, 64)));
  return std::strtod(number.c_str(), nullptr);
}

absl::StatusOr<JudgeRewardOptions> JudgeRewardOptions::FromJson(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(
      params, {"path", "tokenizer", "judge_prompt", "template", "score_prefix", "min_score",
               "max_score", "normalize", "max_new_tokens", "temperature", "top_p", "top_k", "seed",
               "stop_token_ids", "deadline_ms", "kv_budget_mb", "max_batch"}));
  JudgeRewardOptions o;
  ASSIGN_OR_RETURN(o.path, GetStringParam(params, "path", ""));
  if (o.path.empty()) {
    return absl::InvalidArgumentError("params.path: required, the judge model directory");
  }
  ASSIGN_OR_RETURN(o.tokenizer, GetStringParam(params, "tokenizer", ""));
  ASSIGN_OR_RETURN(o.judge_prompt, GetStringParam(params, "judge_prompt", o.judge_prompt));
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
          "params.template: must be \"none\" or a chat template object, got ", t.dump()));
    }
  }
  ASSIGN_OR_RETURN(o.score_prefix, GetStringParam(params, "score_prefix", o.score_prefix));
  ASSIGN_OR_RETURN(o.min_score, GetNumberParam(params, "min_score", o.min_score));
  ASSIGN_OR_RETURN(o.max_score, GetNumberParam(params, "max_score", o.max_score));
  if (!(o.max_score > o.min_score)) {
    return absl::InvalidArgumentError("params.max_score: must be greater than min_score");
  }
  ASSIGN_OR_RETURN(o.normalize, GetBoolParam(params, "normalize", o.normalize));
  o.sampling.group_size = 1;
  o.sampling.temperature = 0.0f;
  o.sampling.max_new_tokens = 64;
  ASSIGN_OR_RETURN(int64_t max_new, GetIntParam(params, "max_new_tokens", 64));
  if (max_new < 1 || max_new > 1 << 20) {
    return absl::InvalidArgumentError("params.max_new_tokens: must be in [1, 1048576]");
  }
  o.sampling.max_new_tokens = static_cast<int32_t>(max_new);
  ASSIGN_OR_RETURN(double temperature, GetNumberParam(params, "temperature", 0.0));
  ASSIGN_OR_RETURN(double top_p, GetNumberParam(params, "top_p", 1.0));
  ASSIGN_OR_RETURN(int64_t top_k, GetIntParam(params, "top_k", 0));
  ASSIGN_OR_RETURN(int64_t seed, GetIntParam(params, "seed", 0));
  if (top_k < 0 || top_k > 1 << 30 || seed < 0) {
    return absl::InvalidArgumentError("params.top_k and params.seed: must be >= 0");
  }
  o.sampling.temperature = static_cast<float>(temperature);
  o.sampling.top_p = static_cast<float>(top_p);
  o.sampling.top_k = static_cast<int32_t>(top_k);
  o.sampling.seed = static_cast<uint64_t>(seed);
  if (params.is_object() && params.contains("stop_token_ids")) {
    const nlohmann::json& ids = params["stop_token_ids"];
    if (!ids.is_array()) {
      return absl::InvalidArgumentError("params.stop_token_ids: must be an array of token ids");
    }
    for (const auto& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("params.stop_token_ids: not a token id: ", id.dump()));
      }
      o.sampling.stop_token_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    o.default_stop_tokens = false;
  }
  RETURN_IF_ERROR(WithContext(o.sampling.Validate(), "params"));
  ASSIGN_OR_RETURN(o.deadline_ms, GetIntParam(params, "deadline_ms", o.deadline_ms));
  if (o.deadline_ms < 1 || o.deadline_ms > int64_t{24} * 3600 * 1000) {
    return absl::InvalidArgumentError("params.deadline_ms: must be in [1, 86400000]");
  }
  ASSIGN_OR_RETURN(int64_t kv_mb, GetIntParam(params, "kv_budget_mb", 256));
  if (kv_mb < 1 || kv_mb > 1 << 20) {
    return absl::InvalidArgumentError("params.kv_budget_mb: must be in [1, 1048576]");
  }
  o.engine.kv_budget_bytes = kv_mb << 20;
  ASSIGN_OR_RETURN(o.engine.max_batch, GetIntParam(params, "max_batch", o.engine.max_batch));
  RETURN_IF_ERROR(WithContext(o.engine.Validate(), "params"));
  return o;
}

JudgeReward::JudgeReward(JudgeRewardOptions options, std::vector<Piece> pieces,
                         std::optional<ChatTemplate> tmpl, std::unique_ptr<Tokenizer> tokenizer,
                         std::unique_ptr<Engine> engine)
    : options_(std::move(options)),
      pieces_(std::move(pieces)),
      template_(std::move(tmpl)),
      tokenizer_(std::move(tokenizer)),
      engine_(std::move(engine)) {}

JudgeReward::~JudgeReward() { engine_->Shutdown(); }

absl::StatusOr<std::unique_ptr<JudgeReward>> JudgeReward::Create(
    const JudgeRewardOptions& options) {
  JudgeRewardOptions o = options;
  // Parse judge_prompt once: {prompt}, {completion}, {ground_truth}, {{, }}.
  std::vector<Piece> pieces;
  const std::string& t = o.judge_prompt;
  std::string text;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '}') {
      if (i + 1 < t.size() && t[i + 1] == '}') {
        text += '}';
        ++i;
        continue;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("params.judge_prompt: lone '}' at offset ", i, " (write }} for a brace)"));
    }
    if (t[i] != '{') {
      text += t[i];
      continue;
    }
    if (i + 1 < t.size() && t[i + 1] == '{') {
      text += '{';
      ++i;
      continue;
    }
    const size_t close = t.find('}', i);
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("params.judge_prompt: unterminated '{' at offset ", i));
    }
    const std::string name = t.substr(i + 1, close - i - 1);
    Piece::Kind kind;
    if (name == "prompt") {
      kind = Piece::Kind::kPrompt;
    } else if (name == "completion") {
      kind = Piece::Kind::kCompletion;
    } else if (name == "ground_truth") {
      kind = Piece::Kind::kGroundTruth;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("params.judge_prompt: unknown placeholder {", name, "} at offset ", i,
                       "; known: {prompt}, {completion}, {ground_truth} (write {{ for a brace)"));
    }
    if (!text.empty()) pieces.push_back({Piece::Kind::kText, std::move(text)});
    text.clear();
    pieces.push_back({kind, ""});
    i = close;
  }
  if (!text.empty()) pieces.push_back({Piece::Kind::kText, std::move(text)});

  std::optional<ChatTemplate> tmpl;
  if (o.use_template) {
    auto c = ChatTemplate::Create(o.chat_template);
    if (!c.ok()) return WithContext(c.status(), "params.template");
    tmpl = std::move(*c);
  }
  const std::string tok_path = o.tokenizer.empty() ? o.path + "/tokenizer.json" : o.tokenizer;
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(tok_path));
  if (o.default_stop_tokens) {
    for (const char* s : {"<|im_end|>", "<|endoftext|>"}) {
      if (auto id = tokenizer->TokenToId(s)) o.sampling.stop_token_ids.push_back(*id);
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> model, LoadModel(o.path));
  for (int32_t id : o.sampling.stop_token_ids) {
    if (id >= model->config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "params.stop_token_ids: ", id, " is outside the judge model's vocabulary [0, ",
          model->config().vocab_size, ")"));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(std::move(model), nullptr, o.engine));
  return std::unique_ptr<JudgeReward>(new JudgeReward(
      std::move(o), std::move(pieces), std::move(tmpl), std::move(tokenizer), std::move(engine)));
}

absl::StatusOr<std::string> JudgeReward::RenderJudgePrompt(const RewardInput& input) const {
  if (!IsValidUtf8(input.prompt) || !IsValidUtf8(input.completion)) {
    return absl::InvalidArgumentError("invalid UTF-8 in prompt or completion");
  }
  std::string text;
  for (const Piece& p : pieces_) {
    switch (p.kind) {
      case Piece::Kind::kText:
        text += p.text;
        break;
      case Piece::Kind::kPrompt:
        text += input.prompt;
        break;
      case Piece::Kind::kCompletion:
        text += input.completion;
        break;
      case Piece::Kind::kGroundTruth:
        text +=
            input.ground_truth.is_string()
                ? input.ground_truth.get<std::string>()
                : input.ground_truth.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        break;
    }
  }
  if (!template_) return text;
  return template_->Render(Prompt(text));
}

std::vector<RewardOutput> JudgeReward::Score(absl::Span<const RewardInput> batch) const {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(options_.deadline_ms);
  std::vector<RewardOutput> outputs(batch.size());
  std::vector<RolloutPrompt> prompts;
  const int64_t V = engine_->config().vocab_size;
  for (size_t i = 0; i < batch.size(); ++i) {
    absl::StatusOr<std::string> text = RenderJudgePrompt(batch[i]);
    absl::StatusOr<std::vector<int32_t>> ids =
        text.ok() ? tokenizer_->Encode(*text) : absl::StatusOr<std::vector<int32_t>>(text.status());
    if (!ids.ok()) {
      outputs[i].error = absl::StrCat("judge prompt: ", ids.status().message());
      continue;
    }
    const int64_t need = static_cast<int64_t>(ids->size()) + options_.sampling.max_new_tokens;
    if (ids->empty()) {
      outputs[i].error = "judge prompt: no tokens (empty text and no template)";
      continue;
    }
    if (need > engine_->max_context()) {
      outputs[i].error =
          absl::StrCat("judge prompt of ", ids->size(), " tokens + max_new_tokens ",
                       options_.sampling.max_new_tokens, " is over the judge's context (",
                       engine_->max_context(), ")");
      continue;
    }
    if (auto bad = std::find_if(ids->begin(), ids->end(), [&](int32_t t) { return t >= V; });
        bad != ids->end()) {
      outputs[i].error =
          absl::StrCat("judge prompt: token ", *bad, " is outside the judge model's vocabulary");
      continue;
    }
    prompts.push_back({static_cast<uint64_t>(i), std::move(*ids)});
  }
  if (prompts.empty()) return outputs;
  std::vector<bool> submitted(batch.size(), false);
  for (const RolloutPrompt& p : prompts) submitted[p.prompt_id] = true;  // pending until proven
  absl::StatusOr<std::shared_ptr<RolloutRequest>> request =
      engine_->Submit(std::move(prompts), options_.sampling);
  if (!request.ok()) {
    for (size_t i = 0; i < batch.size(); ++i) {
      if (submitted[i]) outputs[i].error = absl::StrCat("judge: ", request.status().message());
    }
    return outputs;
  }
  std::vector<bool> delivered(batch.size(), false);
  auto take = [&](const GroupResult& group) {
    const size_t i = group.prompt_id;
    delivered[i] = true;
    RewardOutput& out = outputs[i];
    if (group.completions.empty()) {
      out.error = "judge: no completion";
      return;
    }
    const Completion& c = group.completions[0];
    absl::StatusOr<std::string> verdict = tokenizer_->Decode(c.token_ids, true);
    if (!verdict.ok()) {
      out.error = absl::StrCat("judge verdict: ", verdict.status().message());
      return;
    }
    out.info = verdict->substr(0, 200);
    absl::StatusOr<double> n = ParseJudgeScore(*verdict, options_.score_prefix);
    if (!n.ok()) {
      out.error = absl::StrCat("judge: ", n.status().message(), " (finish ",
                               FinishReasonName(c.finish_reason), ")");
      return;
    }
    if (!(*n >= options_.min_score && *n <= options_.max_score)) {
      out.error = absl::StrCat("judge: score ", *n, " is outside [", options_.min_score, ", ",
                               options_.max_score, "]");
      return;
    }
    out.components["verdict"] = *n;
    out.score = options_.normalize
                    ? (*n - options_.min_score) / (options_.max_score - options_.min_score)
                    : *n;
  };
  GroupResult group;
  bool timed_out = false;
  for (;;) {
    const RolloutRequest::Wait w = (*request)->Next(&group, deadline - absl::Now());
    if (w == RolloutRequest::Wait::kDone) break;
    if (w == RolloutRequest::Wait::kGroup) {
      take(group);
      continue;
    }
    if (absl::Now() < deadline) continue;
    timed_out = true;
    engine_->Cancel(*request);
    // Verdicts that arrived before the cancel still count.
    while ((*request)->Next(&group, absl::ZeroDuration()) == RolloutRequest::Wait::kGroup) {
      take(group);
    }
    break;
  }
  const absl::Status status = (*request)->status();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!submitted[i] || delivered[i]) continue;
    outputs[i].error =
        timed_out ? absl::StrCat("judge: no verdict within deadline_ms ", options_.deadline_ms)
                  : absl::StrCat("judge: ", status.ok() ? "no verdict" : status.message());
  }
  return outputs;
}

absl::Status RegisterJudgeReward(RewardRegistry* registry) {
  return registry->Register(
      "judge", [](const nlohmann::json& params) -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
        ASSIGN_OR_RETURN(JudgeRewardOptions options, JudgeRewardOptions::FromJson(params));
        ASSIGN_OR_RETURN(std::unique_ptr<JudgeReward> judge, JudgeReward::Create(options));
        return std::unique_ptr<RewardFunction>(std::move(judge));
      });
}

}  // namespace grpo
