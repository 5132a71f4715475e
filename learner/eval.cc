// Held-out evaluation (see eval.h): render, tokenize, generate K samples per prompt on one engine
// request, decode, score in one RewardSet batch, summarize.
#include "learner/eval.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {

double EvalOptions::EffectiveTemperature() const {
  if (temperature.has_value()) return *temperature;
  return samples == 1 ? 0.0 : 1.0;
}

absl::Status EvalOptions::Validate() const {
  if (deterministic && device == Device::kCuda) {
    return absl::InvalidArgumentError(
        "eval: deterministic needs the CPU engine (the GPU's kernels are not batch-invariant); use "
        "device cpu");
  }
  if (samples < 1 || samples > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.samples: ", samples, " must be >= 1 (and < 2^31)"));
  }
  if (temperature.has_value() && !(std::isfinite(*temperature) && *temperature >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.temperature: ", *temperature, " must be a finite number >= 0"));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("eval.top_p: ", top_p, " is outside (0, 1]"));
  }
  if (top_k < 0 || top_k > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("eval.top_k: ", top_k, " must be >= 0"));
  }
  if (max_new_tokens < 1 || max_new_tokens > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.max_new_tokens: ", max_new_tokens, " must be >= 1"));
  }
  if (!std::isfinite(correct_threshold)) {
    return absl::InvalidArgumentError("eval.correct_threshold must be finite");
  }
  if (limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("eval.limit: ", limit, " must be >= 0 (0 = all)"));
  }
  return absl::OkStatus();
}

double PassAtK(int64_t n, int64_t c, int64_t k) {
  GRPO_CHECK(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n);
  // Every k-subset holds a correct sample once fewer than k are wrong.
  if (n - c < k) return 1.0;
  // C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i): no large binomials.
  double all_wrong = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i) {
    all_wrong *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  }
  return 1.0 - all_wrong;
}

std::vector<int64_t> PassAtKValues(int64_t samples) {
  std::vector<int64_t> ks;
  for (int64_t k = 1; k <= samples; k *= 2) ks.push_back(k);
  if (ks.empty() || ks.back() != samples) ks.push_back(samples);
  return ks;
}

nlohmann::json EvalRecord::ToJson() const {
  nlohmann::json comps = nlohmann::json::array();
  for (const EvalCompletion& c : completions) {
    comps.push_back({{"text", c.text},
                     {"num_tokens", c.num_tokens},
                     {"finish_reason", FinishReasonName(c.finish_reason)},
                     {"reward", c.reward},
                     {"components", c.components},
                     {"correct", c.correct},
                     {"error", c.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.error)}});
  }
  return {{"row", row_idx},          {"line", line},
          {"prompt", prompt},        {"data_source", data_source},
          {"ground_truth", ground_truth}, {"num_correct", num_correct},
          {"completions", comps}};
}

nlohmann::json EvalResult::SummaryJson() const {
  nlohmann::json pass = nlohmann::json::object();
  for (const auto& [k, v] : pass_at_k) pass[std::to_string(k)] = v;
  return {{"prompts", num_prompts},
          {"completions", num_completions},
          {"samples", samples},
          {"temperature", temperature},
          {"accuracy", accuracy},
          {"mean_reward", mean_reward},
          {"reward_components", component_means},
          {"mean_response_tokens", mean_response_tokens},
          {"truncated", num_truncated},
          {"reward_errors", num_reward_errors},
          {"pass_at_k", pass}};
}

absl::StatusOr<EvalResult> Evaluate(Engine& engine, const Tokenizer& tokenizer,
                                    absl::Span<const Example> examples, const ChatTemplate& chat_template,
                                    const RewardSet& rewards, const EvalOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (options.limit > 0 && static_cast<int64_t>(examples.size()) > options.limit) {
    examples = examples.subspan(0, static_cast<size_t>(options.limit));
  }
  if (examples.empty()) return absl::InvalidArgumentError("eval: no dataset rows to evaluate");
  const int64_t num_prompts = static_cast<int64_t>(examples.size());
  const int64_t K = options.samples;

  SamplingParams sp;
  sp.group_size = static_cast<int32_t>(K);
  sp.temperature = static_cast<float>(options.EffectiveTemperature());
  sp.top_p = static_cast<float>(options.top_p);
  sp.top_k = static_cast<int32_t>(options.top_k);
  sp.max_new_tokens = static_cast<int32_t>(options.max_new_tokens);
  sp.stop_token_ids = options.stop_token_ids;
  sp.seed = options.seed;
  sp.deterministic = options.deterministic;

  EvalResult r;
  r.num_prompts = num_prompts;
  r.samples = K;
  r.temperature = options.EffectiveTemperature();
  r.records.resize(num_prompts);
  std::vector<RolloutPrompt> prompts(num_prompts);
  for (int64_t i = 0; i < num_prompts; ++i) {
    const Example& e = examples[i];
    EvalRecord& rec = r.records[i];
    rec.row_idx = e.row_idx;
    rec.line = e.line;
    rec.ground_truth = e.ground_truth;
    rec.data_source = e.data_source;
    const std::string where = options.source.empty() ? absl::StrCat("line ", e.line)
                                                     : absl::StrCat(options.source, ":", e.line);
    auto text = chat_template.Render(e.prompt);
    if (!text.ok()) return WithContext(text.status(), where);
    rec.prompt = *std::move(text);
    auto ids = tokenizer.Encode(rec.prompt);
    if (!ids.ok()) return WithContext(ids.status(), where);
    const int64_t P = static_cast<int64_t>(ids->size());
    if (P == 0) return absl::InvalidArgumentError(absl::StrCat(where, ": the prompt renders to no tokens"));
    if (P + options.max_new_tokens > engine.max_context()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the prompt has ", P, " tokens; with max_new_tokens ", options.max_new_tokens,
          " that exceeds the model's context of ", engine.max_context(),
          " tokens (lower max_new_tokens or shorten the prompt)"));
    }
    prompts[i].prompt_id = static_cast<uint64_t>(e.row_idx);
    prompts[i].token_ids = *std::move(ids);
  }

  ASSIGN_OR_RETURN(std::vector<GroupResult> groups, engine.GenerateAll(std::move(prompts), sp));
  GRPO_CHECK(static_cast<int64_t>(groups.size()) == num_prompts);

  std::vector<RewardInput> inputs;
  inputs.reserve(num_prompts * K);
  for (int64_t i = 0; i < num_prompts; ++i) {
    const Example& e = examples[i];
    EvalRecord& rec = r.records[i];
    GRPO_CHECK(static_cast<int64_t>(groups[i].completions.size()) == K);
    for (const Completion& comp : groups[i].completions) {
      EvalCompletion ec;
      ec.num_tokens = static_cast<int64_t>(comp.token_ids.size());
      ec.finish_reason = comp.finish_reason;
      ASSIGN_OR_RETURN(ec.text, tokenizer.Decode(comp.token_ids, /*skip_special_tokens=*/true));
      RewardInput in;
      in.prompt = rec.prompt;
      in.completion = ec.text;
      in.completion_ids = comp.token_ids;
      in.ground_truth = e.ground_truth;
      in.data_source = e.data_source;
      in.extra = e.extra;
      inputs.push_back(std::move(in));
      rec.completions.push_back(std::move(ec));
    }
  }
  const std::vector<RewardOutput> outs = rewards.Score(inputs);
  GRPO_CHECK(outs.size() == inputs.size());

  double sum_reward = 0, sum_tokens = 0, num_correct = 0;
  std::map<std::string, std::pair<double, int64_t>> comps;  // key -> (sum, count)
  const std::vector<int64_t> ks = PassAtKValues(K);
  std::vector<double> pass_sums(ks.size(), 0.0);  // parallel to ks
  for (int64_t i = 0; i < num_prompts; ++i) {
    EvalRecord& rec = r.records[i];
    for (int64_t s = 0; s < K; ++s) {
      const RewardOutput& o = outs[i * K + s];
      EvalCompletion& ec = rec.completions[s];
      ec.reward = o.score;
      ec.components = o.components;
      ec.error = o.error;
      ec.correct = o.score >= options.correct_threshold;
      rec.num_correct += ec.correct ? 1 : 0;
      sum_reward += o.score;
      sum_tokens += static_cast<double>(ec.num_tokens);
      if (ec.finish_reason == FinishReason::kLength) ++r.num_truncated;
      if (!o.error.empty()) ++r.num_reward_errors;
      for (const auto& [k, v] : o.components) {
        comps[k].first += v;
        comps[k].second += 1;
      }
    }
    num_correct += static_cast<double>(rec.num_correct);
    for (size_t j = 0; j < ks.size(); ++j) pass_sums[j] += PassAtK(K, rec.num_correct, ks[j]);
  }
  r.num_completions = num_prompts * K;
  const double n = static_cast<double>(r.num_completions);
  r.accuracy = num_correct / n;
  r.mean_reward = sum_reward / n;
  r.mean_response_tokens = sum_tokens / n;
  for (const auto& [k, v] : comps) r.component_means[k] = v.first / static_cast<double>(v.second);
  for (size_t j = 0; j < ks.size(); ++j) {
    r.pass_at_k.emplace_back(ks[j], pass_sums[j] / static_cast<double>(num_prompts));
  }
  return r;
}

absl::StatusOr<EvalResult> Evaluate(Engine& engine, const Tokenizer& tokenizer, const Dataset& dataset,
                                    const ChatTemplate& chat_template, const RewardSet& rewards,
                                    const EvalOptions& options) {
  int64_t n = dataset.size();
  if (options.limit > 0) n = std::min(n, options.limit);
  std::vector<Example> rows;
  rows.reserve(n);
  for (int64_t i = 0; i < n; ++i) rows.push_back(dataset.row(i));
  return Evaluate(engine, tokenizer, rows, chat_template, rewards, options);
}

absl::StatusOr<EvalResult> Evaluate(const Model<float>& model, const Tokenizer& tokenizer,
                                    const Dataset& dataset, const ChatTemplate& chat_template,
                                    const RewardSet& rewards, const EvalOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  const ModelConfig& c = model.config();
  EngineOptions eo;
  // Enough KV rows for a full decode batch at the model's context, capped at the engine's default
  // pool: a tiny model then allocates kilobytes, not the default's 256 MiB.
  const int64_t row_bytes = KvBytesPerToken(c, sizeof(float));
  const int64_t want = row_bytes * eo.max_batch * c.max_position_embeddings;
  if (want > 0 && want / eo.max_batch / c.max_position_embeddings == row_bytes) {  // no overflow
    eo.kv_budget_bytes = std::min(eo.kv_budget_bytes, want);
  }
  eo.device = options.device;
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> copy, Model<float>::Create(c));
  std::copy_n(model.params(), model.num_params(), copy->params());
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(std::move(copy), nullptr, eo));
  return Evaluate(*engine, tokenizer, dataset, chat_template, rewards, options);
}

}  // namespace grpo
