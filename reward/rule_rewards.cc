// The built-in rule rewards format, countdown, gsm8k, exact_match and overlong (see
// reward/rule_rewards.h; regex_match lives in reward/regex_reward.cc).
#include "reward/rule_rewards.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/arith.h"
#include "reward/params.h"

namespace grpo {
namespace {

constexpr std::string_view kWhitespace = " \t\n\r\f\v";

std::string_view Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(kWhitespace);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kWhitespace);
  return s.substr(b, e - b + 1);
}

size_t CountOccurrences(std::string_view s, std::string_view needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string_view::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

// The last non-greedy <answer>(.*?)</answer> match of Python's re.finditer, or nullopt.
std::optional<std::string_view> LastAnswerTag(std::string_view s) {
  constexpr std::string_view kOpen = "<answer>", kClose = "</answer>";
  std::optional<std::string_view> last;
  size_t pos = 0;
  while (true) {
    const size_t open = s.find(kOpen, pos);
    if (open == std::string_view::npos) break;
    const size_t close = s.find(kClose, open + kOpen.size());
    if (close == std::string_view::npos) break;  // no later open tag can close either
    last = s.substr(open + kOpen.size(), close - open - kOpen.size());
    pos = close + kClose.size();
  }
  return last;
}

// The score params every rule reward shares: `score` for a hit and a named miss score.
struct ScorePair {
  double hit = 1.0;
  double miss = 0.0;
};

absl::StatusOr<ScorePair> GetScorePair(const nlohmann::json& params, const std::string& miss_key,
                                       ScorePair defaults) {
  ScorePair s;
  ASSIGN_OR_RETURN(s.hit, GetNumberParam(params, "score", defaults.hit));
  ASSIGN_OR_RETURN(s.miss, GetNumberParam(params, miss_key, defaults.miss));
  return s;
}

// ---- format ----

struct FormatConfig {
  bool strict = true;
  bool prefix_from_prompt = true;  // a prompt ending in "<think>" opens the think block
  ScorePair scores;
};

class FormatReward : public RuleReward {
 public:
  explicit FormatReward(FormatConfig c) : RuleReward("format"), c_(c) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    std::string text;
    const std::string_view prompt = Trim(in.prompt);
    const bool opened = c_.prefix_from_prompt && prompt.size() >= 7 &&
                        prompt.substr(prompt.size() - 7) == "<think>";
    if (opened) text = "<think>";
    text += in.completion;
    const bool ok = c_.strict ? IsStrictR1Format(text) : IsLenientR1Format(text);
    RewardOutput out;
    out.score = ok ? c_.scores.hit : c_.scores.miss;
    return out;
  }

 private:
  FormatConfig c_;
};

// ---- countdown ----

struct CountdownRewardConfig {
  double score = 1.0;         // correct equation
  double format_score = 0.1;  // an answer was found but is not a correct equation
  bool require_marker = false;
};

class CountdownReward : public RuleReward {
 public:
  explicit CountdownReward(CountdownRewardConfig c) : RuleReward("countdown"), c_(c) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    const nlohmann::json& gt = in.ground_truth;
    if (!gt.is_object() || !gt.contains("target") || !gt.contains("numbers")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "countdown ground_truth must be {\"target\": int, \"numbers\": [int, ...]}, got ",
          gt.is_object() ? absl::StrCat("an object without \"", gt.contains("target") ? "numbers" : "target", "\"")
                         : JsonTypeName(gt)));
    }
    if (!gt["target"].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "countdown ground_truth.target must be an integer, got ", gt["target"].dump()));
    }
    const nlohmann::json& nums = gt["numbers"];
    if (!nums.is_array()) {
      return absl::InvalidArgumentError("countdown ground_truth.numbers must be an array");
    }
    std::vector<int64_t> numbers;
    for (const auto& n : nums) {
      if (!n.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "countdown ground_truth.numbers must hold integers, got ", n.dump()));
      }
      numbers.push_back(n.get<int64_t>());
    }
    const int64_t target = gt["target"].get<int64_t>();

    RewardOutput out;
    const std::optional<std::string> answer =
        ExtractCountdownAnswer(in.prompt, in.completion, c_.require_marker);
    out.components["has_answer"] = answer.has_value() ? 1.0 : 0.0;
    out.components["correct"] = 0.0;
    if (!answer.has_value()) {
      out.score = 0.0;
      out.info = "no <answer> on the last line";
      return out;
    }
    const CountdownCheck check = VerifyCountdown(*answer, numbers, target);
    if (check.verdict == CountdownVerdict::kCorrect) {
      out.score = c_.score;
      out.components["correct"] = 1.0;
    } else {
      out.score = c_.format_score;
      out.info = check.detail;
    }
    return out;
  }

 private:
  CountdownRewardConfig c_;
};

// ---- gsm8k ----

struct Gsm8kConfig {
  bool flexible = false;
  double score = 1.0;
  double format_score = 0.0;  // an answer was extracted but is wrong
};

// Ground truth as the string verl compares against: a string as is, an integer in decimal.
absl::StatusOr<std::string> GroundTruthString(const nlohmann::json& gt, std::string_view who) {
  if (gt.is_string()) return gt.get<std::string>();
  if (gt.is_number_integer()) return gt.dump();
  return absl::InvalidArgumentError(absl::StrCat(std::string(who),
                                                 " ground_truth must be a string or an integer, got ",
                                                 JsonTypeName(gt)));
}

class Gsm8kReward : public RuleReward {
 public:
  explicit Gsm8kReward(Gsm8kConfig c) : RuleReward("gsm8k"), c_(c) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    ASSIGN_OR_RETURN(const std::string truth, GroundTruthString(in.ground_truth, "gsm8k"));
    const std::optional<std::string> answer = ExtractGsm8kAnswer(in.completion, c_.flexible);
    RewardOutput out;
    out.components["has_answer"] = answer.has_value() ? 1.0 : 0.0;
    const bool correct = answer.has_value() && *answer == truth;
    out.components["correct"] = correct ? 1.0 : 0.0;
    out.score = !answer.has_value() ? 0.0 : correct ? c_.score : c_.format_score;
    if (answer.has_value() && !correct) out.info = absl::StrCat("answer \"", *answer, "\"");
    return out;
  }

 private:
  Gsm8kConfig c_;
};

// ---- exact_match ----

struct ExactMatchConfig {
  bool strip = true;
  bool lowercase = false;
  bool answer_tag = false;  // compare the last <answer>…</answer> instead of the completion
  ScorePair scores;
};

class ExactMatchReward : public RuleReward {
 public:
  explicit ExactMatchReward(ExactMatchConfig c) : RuleReward("exact_match"), c_(c) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    std::vector<std::string> truths;
    if (in.ground_truth.is_array()) {
      for (const auto& t : in.ground_truth) {
        ASSIGN_OR_RETURN(std::string s, GroundTruthString(t, "exact_match"));
        truths.push_back(Normalize(s));
      }
    } else {
      ASSIGN_OR_RETURN(std::string s, GroundTruthString(in.ground_truth, "exact_match"));
      truths.push_back(Normalize(s));
    }
    RewardOutput out;
    std::string_view candidate = in.completion;
    if (c_.answer_tag) {
      const auto tag = LastAnswerTag(in.completion);
      if (!tag.has_value()) {
        out.score = c_.scores.miss;
        out.info = "no <answer>…</answer>";
        return out;
      }
      candidate = *tag;
    }
    const std::string got = Normalize(candidate);
    const bool hit = std::find(truths.begin(), truths.end(), got) != truths.end();
    out.score = hit ? c_.scores.hit : c_.scores.miss;
    return out;
  }

 private:
  std::string Normalize(std::string_view s) const {
    std::string t(c_.strip ? Trim(s) : s);
    if (c_.lowercase) {
      for (char& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
    return t;
  }
  ExactMatchConfig c_;
};

// ---- overlong ----

struct OverlongConfig {
  int64_t max_length = 0;
  int64_t cache_length = 0;
  double penalty_factor = 1.0;
  std::string unit = "tokens";  // "tokens" | "chars" | "auto" (tokens when ids are given)

  absl::Status Validate() const {
    if (max_length < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("'max_length' must be a positive integer, got ", max_length));
    }
    if (cache_length < 1 || cache_length > max_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'cache_length' must be in [1, max_length=", max_length, "], got ", cache_length));
    }
    if (penalty_factor < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("'penalty_factor' must be >= 0, got ", penalty_factor));
    }
    return absl::OkStatus();
  }
};

class OverlongReward : public RuleReward {
 public:
  explicit OverlongReward(OverlongConfig c) : RuleReward("overlong"), c_(std::move(c)) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    int64_t length = 0;
    const bool use_tokens =
        c_.unit == "tokens" || (c_.unit == "auto" && !in.completion_ids.empty());
    if (use_tokens) {
      if (in.completion_ids.empty() && !in.completion.empty()) {
        return absl::InvalidArgumentError(
            "overlong counts tokens but the item has no completion_ids; set params.unit to "
            "\"chars\" or \"auto\" for text-only input");
      }
      length = static_cast<int64_t>(in.completion_ids.size());
    } else {
      length = CountCodePoints(in.completion);
    }
    RewardOutput out;
    out.score = SoftOverlongPenalty(length, c_.max_length, c_.cache_length, c_.penalty_factor);
    out.components["length"] = static_cast<double>(length);
    return out;
  }

 private:
  OverlongConfig c_;
};

}  // namespace

// ---- RuleReward ----

std::vector<RewardOutput> RuleReward::Score(absl::Span<const RewardInput> batch) const {
  std::vector<RewardOutput> outputs(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    try {
      absl::StatusOr<RewardOutput> r = ScoreOne(batch[i]);
      if (r.ok()) {
        outputs[i] = std::move(*r);
      } else {
        outputs[i].error = std::string(r.status().message());
      }
    } catch (const std::exception& e) {  // e.g. a JSON type error we did not foresee
      outputs[i] = RewardOutput{};
      outputs[i].error = absl::StrCat(name_, ": unexpected error: ", e.what());
    }
  }
  return outputs;
}

// ---- Pure pieces ----

bool IsStrictR1Format(std::string_view text) {
  const std::string_view t = Trim(text);
  for (std::string_view tag : {"<think>", "</think>", "<answer>", "</answer>"}) {
    if (CountOccurrences(t, tag) != 1) return false;
  }
  if (t.substr(0, 7) != "<think>" || t.size() < 9 || t.substr(t.size() - 9) != "</answer>") {
    return false;
  }
  const size_t think_end = t.find("</think>");
  const size_t answer_start = t.find("<answer>");
  if (think_end == std::string_view::npos || answer_start == std::string_view::npos ||
      answer_start < think_end + 8) {
    return false;
  }
  // Only whitespace between </think> and <answer>; the tags occur once, so the order is fixed.
  return Trim(t.substr(think_end + 8, answer_start - think_end - 8)).empty() &&
         t.find("</answer>") > answer_start;
}

bool IsLenientR1Format(std::string_view text) {
  const size_t a = text.find("<think>");
  if (a == std::string_view::npos) return false;
  const size_t b = text.find("</think>", a + 7);
  if (b == std::string_view::npos) return false;
  const size_t c = text.find("<answer>", b + 8);
  if (c == std::string_view::npos) return false;
  return text.find("</answer>", c + 8) != std::string_view::npos;
}

std::optional<std::string> ExtractCountdownAnswer(std::string_view prompt,
                                                  std::string_view completion,
                                                  bool require_marker) {
  const std::string full = absl::StrCat(std::string(prompt), std::string(completion));
  std::string_view s = full;
  size_t cut = s.find("Assistant:");
  if (cut != std::string_view::npos) {
    s = s.substr(cut + 10);
  } else if ((cut = s.find("<|im_start|>assistant")) != std::string_view::npos) {
    s = s.substr(cut + 21);
  } else if (require_marker) {
    return std::nullopt;
  } else {
    s = s.substr(prompt.size());  // the completion alone
  }
  const size_t nl = s.rfind('\n');
  if (nl != std::string_view::npos) s = s.substr(nl + 1);
  const std::optional<std::string_view> tag = LastAnswerTag(s);
  if (!tag.has_value()) return std::nullopt;
  return std::string(Trim(*tag));
}

namespace {
bool IsGsm8kChar(char c) { return (c >= '0' && c <= '9') || c == '.' || c == ','; }

// Length of the match of "\-?[0-9\.\,]+" at s[i], or 0.
size_t NumberMatchAt(std::string_view s, size_t i) {
  size_t k = i;
  if (k < s.size() && s[k] == '-') ++k;
  if (k >= s.size() || !IsGsm8kChar(s[k])) return 0;
  while (k < s.size() && IsGsm8kChar(s[k])) ++k;
  return k - i;
}
}  // namespace

std::optional<std::string> ExtractGsm8kAnswer(std::string_view text, bool flexible) {
  constexpr int64_t kClipChars = 300;  // verl's _SOLUTION_CLIP_CHARS
  size_t start = text.size();
  for (int64_t n = 0; start > 0 && n < kClipChars;) {
    --start;
    if ((static_cast<unsigned char>(text[start]) & 0xC0) != 0x80) ++n;
  }
  const std::string_view s = text.substr(start);
  std::vector<std::string_view> matches;
  for (size_t i = 0; i < s.size();) {
    size_t len = 0;
    size_t group = i;
    if (!flexible) {
      if (s.compare(i, 5, "#### ") == 0) {
        group = i + 5;
        len = NumberMatchAt(s, group);
      }
    } else {
      len = NumberMatchAt(s, i);
    }
    if (len == 0) {
      ++i;
      continue;
    }
    matches.push_back(s.substr(group, len));
    i = group + len;
  }
  if (matches.empty()) return std::nullopt;
  if (!flexible) {
    std::string a;
    for (char c : matches.back()) {
      if (c != ',' && c != '$') a += c;
    }
    return a;
  }
  // verl: `for final_answer in reversed(answer): if final_answer not in ["", "."]: break` -- when
  // every match is ".", the loop ends on the first match.
  for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
    if (*it != ".") return std::string(*it);
  }
  return std::string(matches.front());
}

double SoftOverlongPenalty(int64_t length, int64_t max_length, int64_t cache_length,
                           double penalty_factor) {
  const int64_t expected = max_length - cache_length;
  if (length <= expected) return 0.0;
  if (length > max_length) return -penalty_factor;
  return -static_cast<double>(length - expected) / static_cast<double>(cache_length) *
         penalty_factor;
}

int64_t CountCodePoints(std::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// ---- Factories ----

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeFormatReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(params, {"mode", "prefix_from_prompt", "score", "fail_score"}));
  FormatConfig c;
  ASSIGN_OR_RETURN(const std::string mode, GetChoiceParam(params, "mode", "strict", {"strict", "lenient"}));
  c.strict = mode == "strict";
  ASSIGN_OR_RETURN(c.prefix_from_prompt, GetBoolParam(params, "prefix_from_prompt", true));
  ASSIGN_OR_RETURN(c.scores, GetScorePair(params, "fail_score", {1.0, 0.0}));
  return std::make_unique<FormatReward>(c);
}

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeCountdownReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(params, {"score", "format_score", "require_marker"}));
  CountdownRewardConfig c;
  ASSIGN_OR_RETURN(c.score, GetNumberParam(params, "score", 1.0));
  ASSIGN_OR_RETURN(c.format_score, GetNumberParam(params, "format_score", 0.1));
  ASSIGN_OR_RETURN(c.require_marker, GetBoolParam(params, "require_marker", false));
  return std::make_unique<CountdownReward>(c);
}

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeGsm8kReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(params, {"method", "score", "format_score"}));
  Gsm8kConfig c;
  absl::StatusOr<std::string> method =
      GetChoiceParam(params, "method", "strict", {"strict", "flexible"});
  if (!method.ok()) return method.status();
  c.flexible = *method == "flexible";
  ASSIGN_OR_RETURN(c.score, GetNumberParam(params, "score", 1.0));
  ASSIGN_OR_RETURN(c.format_score, GetNumberParam(params, "format_score", 0.0));
  return std::make_unique<Gsm8kReward>(c);
}

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeExactMatchReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(
      CheckKnownKeys(params, {"strip", "lowercase", "extract", "score", "fail_score"}));
  ExactMatchConfig c;
  ASSIGN_OR_RETURN(c.strip, GetBoolParam(params, "strip", true));
  ASSIGN_OR_RETURN(c.lowercase, GetBoolParam(params, "lowercase", false));
  ASSIGN_OR_RETURN(const std::string extract,
                   GetChoiceParam(params, "extract", "none", {"none", "answer_tag"}));
  c.answer_tag = extract == "answer_tag";
  ASSIGN_OR_RETURN(c.scores, GetScorePair(params, "fail_score", {1.0, 0.0}));
  return std::make_unique<ExactMatchReward>(c);
}

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeOverlongReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(
      CheckKnownKeys(params, {"max_length", "cache_length", "penalty_factor", "unit"}));
  if (!params.is_object() || !params.contains("max_length") || !params.contains("cache_length")) {
    return absl::InvalidArgumentError(
        "overlong needs params 'max_length' and 'cache_length' (DAPO: 20480 and 4096)");
  }
  OverlongConfig c;
  ASSIGN_OR_RETURN(c.max_length, GetIntParam(params, "max_length", 0));
  ASSIGN_OR_RETURN(c.cache_length, GetIntParam(params, "cache_length", 0));
  ASSIGN_OR_RETURN(c.penalty_factor, GetNumberParam(params, "penalty_factor", 1.0));
  ASSIGN_OR_RETURN(c.unit, GetChoiceParam(params, "unit", "tokens", {"tokens", "chars", "auto"}));
  RETURN_IF_ERROR(c.Validate());
  return std::make_unique<OverlongReward>(std::move(c));
}

}  // namespace grpo
