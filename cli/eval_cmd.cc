// `grpo eval --model DIR --data FILE.jsonl --reward R.json [--samples K] ...`: samples K
// completions per dataset prompt with the in-process rollout engine, scores them with a reward
// config and prints accuracy, pass@k, mean reward (per component), mean response length and
// counts (learner/eval.h). --json prints the summary as one JSON object instead; --out writes one
// JSONL record per prompt with its completions, rewards and verdicts.
// Exit codes: 0 done, 1 runtime error (unreadable model, data or tokenizer), 2 usage or config
// error (a bad flag value, a bad reward config, a template or stop token that does not exist).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status.h"
#include "learner/dataset.h"
#include "learner/eval.h"
#include "model/chat_template.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "reward/reward_set.h"

namespace grpo::cli {
namespace {

namespace fs = std::filesystem;

// Tokens that end a completion when --stop-tokens is "auto": the end-of-turn and end-of-text
// markers of ChatML / Qwen tokenizers (and of the toy tokenizer), whichever the tokenizer has.
constexpr const char* kAutoStopTokens[] = {"<|im_end|>", "<|endoftext|>"};

// --template: a built-in name, or a custom template string with a {prompt} placeholder.
absl::StatusOr<ChatTemplateConfig> TemplateFromFlags(const Flags& f) {
  ChatTemplateConfig c;
  const std::string t = f.Get("template");
  if (t == "chatml" || t == "r1_zero" || t == "countdown") {
    c.name = t;
  } else if (t.find("{prompt}") != std::string::npos) {
    c.name = "custom";
    c.custom = t;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--template: '", t, "' is neither chatml, r1_zero, countdown nor a custom template string "
        "containing {prompt}"));
  }
  c.system_prompt = f.Get("system-prompt");
  RETURN_IF_ERROR(WithContext(c.Validate(), "--template"));
  return c;
}

absl::StatusOr<std::vector<int32_t>> StopTokensFromFlags(const Flags& f, const Tokenizer& tok,
                                                         const std::string& tokenizer_path) {
  const std::string v = f.Get("stop-tokens");
  std::vector<int32_t> ids;
  if (v == "none") return ids;
  if (v == "auto") {
    for (const char* s : kAutoStopTokens) {
      if (auto id = tok.TokenToId(s)) ids.push_back(*id);
    }
    return ids;
  }
  for (absl::string_view s : absl::StrSplit(v, ',')) {
    auto id = tok.TokenToId(std::string_view(s.data(), s.size()));
    if (!id) {
      return absl::InvalidArgumentError(absl::StrCat("--stop-tokens: '", std::string(s),
                                                     "' is not a token of ", tokenizer_path));
    }
    ids.push_back(*id);
  }
  return ids;
}

absl::StatusOr<EvalOptions> OptionsFromFlags(const Flags& f) {
  EvalOptions o;
  ASSIGN_OR_RETURN(o.samples, f.GetInt("samples"));
  if (!f.Get("temperature").empty()) {
    ASSIGN_OR_RETURN(double t, f.GetDouble("temperature"));
    o.temperature = t;
  }
  ASSIGN_OR_RETURN(o.top_p, f.GetDouble("top-p"));
  ASSIGN_OR_RETURN(o.top_k, f.GetInt("top-k"));
  ASSIGN_OR_RETURN(o.max_new_tokens, f.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(int64_t seed, f.GetInt("seed"));
  if (seed < 0) return absl::InvalidArgumentError("--seed must be >= 0");
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(o.correct_threshold, f.GetDouble("threshold"));
  ASSIGN_OR_RETURN(o.limit, f.GetInt("limit"));
  ASSIGN_OR_RETURN(o.deterministic, GetBoolFlag(f, "deterministic"));
  ASSIGN_OR_RETURN(o.device, ResolveDevice(f.Get("device")));
  absl::Status s = o.Validate();
  if (!s.ok()) {
    // Name the flag, not the library's field ("eval.max_new_tokens" -> "--max-new-tokens").
    std::string msg(s.message());
    if (msg.rfind("eval.", 0) == 0) {
      msg = "--" + msg.substr(5);
      const size_t colon = msg.find_first_of(": ");
      std::replace(msg.begin(), msg.begin() + static_cast<std::ptrdiff_t>(colon), '_', '-');
      if (msg.rfind("--correct-threshold", 0) == 0) msg = "--threshold" + msg.substr(19);
    }
    return absl::InvalidArgumentError(msg);
  }
  return o;
}

std::string Summary(const EvalResult& r, const EvalOptions& o) {
  std::string out = absl::StrFormat(
      "eval: %d prompts x %d samples = %d completions (temperature %g, max_new_tokens %d)\n",
      r.num_prompts, r.samples, r.num_completions, r.temperature, o.max_new_tokens);
  const int64_t correct = static_cast<int64_t>(std::llround(r.accuracy * r.num_completions));
  absl::StrAppendFormat(&out, "accuracy       %.4f  (%d/%d completions with reward >= %g)\n",
                        r.accuracy, correct, r.num_completions, o.correct_threshold);
  for (const auto& [k, v] : r.pass_at_k) {
    absl::StrAppendFormat(&out, "%-14s %.4f\n", absl::StrCat("pass@", k), v);
  }
  absl::StrAppendFormat(&out, "mean reward    %.4f\n", r.mean_reward);
  for (const auto& [name, v] : r.component_means) {
    absl::StrAppendFormat(&out, "  %-12s %.4f\n", name, v);
  }
  absl::StrAppendFormat(&out, "mean length    %.2f tokens (%d of %d truncated at max_new_tokens)\n",
                        r.mean_response_tokens, r.num_truncated, r.num_completions);
  absl::StrAppendFormat(&out, "reward errors  %d\n", r.num_reward_errors);
  return out;
}

}  // namespace

int RunEvalCommand(const std::vector<std::string>& raw_args) {
  Flags f("grpo eval --model DIR --data FILE.jsonl --reward R.json [--samples K] [options]",
          "Samples K completions per prompt of a dataset (rows as for `grpo learner`: prompt,\n"
          "ground_truth, data_source, extra) and scores them with a reward config. Prints accuracy\n"
          "(completions with reward >= --threshold), pass@k for k = 1, 2, 4, ... <= K (unbiased\n"
          "estimator), mean reward per component, mean response length and counts.\n"
          "  --json   print the summary as one JSON object on stdout instead");
  f.Add("model", "model directory (HF config.json + safetensors)", "", true);
  f.Add("data", "JSONL dataset", "", true);
  f.Add("reward", "reward config JSON ({\"rewards\": [...], \"failure_score\": 0})", "", true);
  f.Add("samples", "completions per prompt (K)", "1", false, Flags::Kind::kInt);
  f.Add("temperature", "sampling temperature; unset: 0 (greedy) when K = 1, else 1.0", "", false,
        Flags::Kind::kNumber);
  f.Add("top-p", "nucleus sampling threshold in (0, 1]", "1", false, Flags::Kind::kNumber);
  f.Add("top-k", "top-k sampling; 0 = off", "0", false, Flags::Kind::kInt);
  f.Add("max-new-tokens", "most tokens generated per completion", "256", false, Flags::Kind::kInt);
  f.Add("template", "chatml, r1_zero, countdown, or a custom template string with {prompt}",
        "chatml");
  f.Add("system-prompt", "chatml: system message; custom: the {system} text", "");
  f.Add("stop-tokens",
        "comma-separated token strings that end a completion; auto = <|im_end|> and "
        "<|endoftext|> where the tokenizer has them; none = only max-new-tokens",
        "auto");
  f.Add("tokenizer", "tokenizer.json; default MODEL/tokenizer.json", "");
  f.Add("seed", "sampling seed", "0", false, Flags::Kind::kInt);
  f.Add("limit", "evaluate the first N rows only; 0 = all", "0", false, Flags::Kind::kInt);
  f.Add("threshold", "a completion is correct when its reward >= this", "1", false,
        Flags::Kind::kNumber);
  f.Add("deterministic", "batch-invariant prefill too (true|false)", "false");
  f.Add("device",
        "cpu, cuda (bf16 weights and K/V; not with --deterministic) or auto (cuda when a GPU is "
        "present)",
        "cpu");
  f.Add("out", "write one JSONL record per prompt (completions, rewards, verdicts) here", "");

  // --json is a switch; every other flag takes a value.
  bool json = false;
  std::vector<std::string> args;
  for (size_t i = 0; i < raw_args.size(); ++i) {
    const std::string& a = raw_args[i];
    if (a == "--json") {
      json = true;
      continue;
    }
    args.push_back(a);
    if (a.rfind("--", 0) == 0 && a.find('=') == std::string::npos && a != "--help" && a != "-h" &&
        i + 1 < raw_args.size()) {
      args.push_back(raw_args[++i]);
    }
  }
  if (int code = ParseFlags(f, args); code >= 0) return code;

  auto options = OptionsFromFlags(f);
  if (!options.ok()) return UsageError(options.status(), f);
  auto tmpl_config = TemplateFromFlags(f);
  if (!tmpl_config.ok()) return UsageError(tmpl_config.status(), f);
  auto tmpl = ChatTemplate::Create(*tmpl_config);
  if (!tmpl.ok()) return UsageError(WithContext(tmpl.status(), "--template"), f);

  const std::string reward_path = f.Get("reward");
  auto reward_json = ReadJsonFile(reward_path);
  if (!reward_json.ok()) return Fail(reward_json.status());
  auto reward_config = RewardSetConfig::FromJson(*reward_json);
  absl::StatusOr<RewardSet> rewards = reward_config.ok()
                                          ? RewardSet::Create(*reward_config)
                                          : absl::StatusOr<RewardSet>(reward_config.status());
  if (!rewards.ok()) {
    std::fprintf(stderr, "grpo: error: %s: %s\n", reward_path.c_str(),
                 std::string(rewards.status().message()).c_str());
    return 2;
  }

  const std::string model_dir = f.Get("model");
  const std::string tokenizer_path =
      f.Get("tokenizer").empty() ? (fs::path(model_dir) / "tokenizer.json").string() : f.Get("tokenizer");
  if (!fs::exists(tokenizer_path)) {
    return Fail(absl::NotFoundError(
        absl::StrCat("tokenizer ", tokenizer_path, " not found; pass --tokenizer FILE")));
  }
  auto tokenizer = Tokenizer::FromFile(tokenizer_path);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto stop = StopTokensFromFlags(f, **tokenizer, tokenizer_path);
  if (!stop.ok()) return UsageError(stop.status(), f);
  options->stop_token_ids = *stop;

  DatasetConfig dc;
  dc.path = f.Get("data");
  dc.shuffle = false;
  auto dataset = Dataset::Load(dc);
  if (!dataset.ok()) return Fail(dataset.status());

  auto model = LoadModel(model_dir);
  if (!model.ok()) return Fail(model.status());
  if ((*tokenizer)->vocab_size() > (*model)->config().vocab_size) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", tokenizer_path, " has ", (*tokenizer)->vocab_size(),
        " ids but the model's vocab_size is ", (*model)->config().vocab_size)));
  }

  if (options->samples > 1 && options->EffectiveTemperature() == 0) {
    GRPO_LOG(WARNING, "--temperature 0 with --samples %d: every sample of a prompt is the same "
             "greedy completion, so pass@k equals pass@1", static_cast<int>(options->samples));
  }
  options->source = dc.path;
  auto result = Evaluate(**model, **tokenizer, *dataset, *tmpl, *rewards, *options);
  if (!result.ok()) return Fail(result.status());

  if (!f.Get("out").empty()) {
    std::vector<nlohmann::json> lines;
    lines.reserve(result->records.size());
    for (const EvalRecord& rec : result->records) lines.push_back(rec.ToJson());
    absl::Status s = WriteJsonLines(f.Get("out"), lines);
    if (!s.ok()) return Fail(s);
  }
  if (json) {
    std::printf("%s\n", result->SummaryJson().dump().c_str());
  } else {
    std::fputs(Summary(*result, *options).c_str(), stdout);
  }
  return 0;
}

}  // namespace grpo::cli
