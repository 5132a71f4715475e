// The regex_match rule reward: `score` when a PCRE2 pattern is found in the completion, else
// `fail_score`. Patterns compile once at config time (a bad pattern is a config error naming the
// offset). Matching is byte-wise (no UTF mode, so invalid UTF-8 in a completion is harmless) and
// runs under PCRE2 match and depth limits, so a catastrophic pattern costs bounded work: hitting a
// limit is that item's error, not a hang.
#include <memory>
#include <string>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "reward/params.h"
#include "reward/rule_rewards.h"

namespace grpo {
namespace {

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return absl::StrCat("PCRE2 error ", code);
  return std::string(reinterpret_cast<const char*>(buf));
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* c) const { pcre2_match_context_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* d) const { pcre2_match_data_free(d); }
};

struct RegexMatchConfig {
  std::string pattern;
  bool full = false;             // the whole completion must match (anchored both ends)
  int64_t match_limit = 1'000'000;  // PCRE2 match() calls; bounds backtracking work per item
  double score = 1.0;
  double fail_score = 0.0;
};

class RegexMatchReward : public RuleReward {
 public:
  RegexMatchReward(RegexMatchConfig c, std::unique_ptr<pcre2_code, CodeDeleter> code,
                   std::unique_ptr<pcre2_match_context, MatchContextDeleter> context)
      : RuleReward("regex_match"), c_(std::move(c)), code_(std::move(code)),
        context_(std::move(context)) {}

 protected:
  absl::StatusOr<RewardOutput> ScoreOne(const RewardInput& in) const override {
    // Match data per call: the compiled code and context are read-only and may be shared.
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (data == nullptr) return absl::ResourceExhaustedError("regex_match: out of memory");
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(in.completion.data()),
                               in.completion.size(), 0, 0, data.get(), context_.get());
    RewardOutput out;
    if (rc >= 0) {
      out.score = c_.score;
    } else if (rc == PCRE2_ERROR_NOMATCH) {
      out.score = c_.fail_score;
    } else {
      return absl::ResourceExhaustedError(
          absl::StrCat("regex_match: matching failed: ", Pcre2Message(rc)));
    }
    return out;
  }

 private:
  RegexMatchConfig c_;
  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeRegexMatchReward(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(params, {"pattern", "full", "match_limit", "score", "fail_score"}));
  RegexMatchConfig c;
  if (!params.is_object() || !params.contains("pattern")) {
    return absl::InvalidArgumentError("regex_match needs params 'pattern' (a PCRE2 regex)");
  }
  ASSIGN_OR_RETURN(c.pattern, GetStringParam(params, "pattern", ""));
  ASSIGN_OR_RETURN(c.full, GetBoolParam(params, "full", false));
  ASSIGN_OR_RETURN(c.match_limit, GetIntParam(params, "match_limit", c.match_limit));
  ASSIGN_OR_RETURN(c.score, GetNumberParam(params, "score", 1.0));
  ASSIGN_OR_RETURN(c.fail_score, GetNumberParam(params, "fail_score", 0.0));
  if (c.match_limit < 1 || c.match_limit > 100'000'000) {
    return absl::InvalidArgumentError(
        absl::StrCat("'match_limit' must be in [1, 100000000], got ", c.match_limit));
  }
  int error = 0;
  PCRE2_SIZE offset = 0;
  const uint32_t options = c.full ? (PCRE2_ANCHORED | PCRE2_ENDANCHORED) : 0;
  std::unique_ptr<pcre2_code, CodeDeleter> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(c.pattern.data()), c.pattern.size(), options,
                    &error, &offset, nullptr));
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("'pattern' does not compile at offset ", offset,
                                                   ": ", Pcre2Message(error)));
  }
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context(
      pcre2_match_context_create(nullptr));
  if (context == nullptr) return absl::ResourceExhaustedError("regex_match: out of memory");
  pcre2_set_match_limit(context.get(), static_cast<uint32_t>(c.match_limit));
  pcre2_set_depth_limit(context.get(), 10'000);
  return std::make_unique<RegexMatchReward>(std::move(c), std::move(code), std::move(context));
}

}  // namespace grpo
