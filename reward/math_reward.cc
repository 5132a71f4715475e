// The "math" RewardFunction: params, ground-truth handling and scoring around
// ExtractFinalAnswer / MathAnswersEqual (reward/math_reward.h).
#include "reward/math_reward.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace grpo {
namespace {

struct MathRewardParams {
  double correct = 1.0;
  double wrong = 0.0;
  double no_answer = 0.0;
};

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    if (c < 0x80) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

class MathReward : public RewardFunction {
 public:
  explicit MathReward(MathRewardParams params) : params_(params) {}
  const std::string& name() const override { return name_; }

  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override {
    std::vector<RewardOutput> out;
    out.reserve(batch.size());
    for (const RewardInput& in : batch) out.push_back(ScoreOne(in));
    return out;
  }

 private:
  RewardOutput ScoreOne(const RewardInput& in) const {
    RewardOutput o;
    o.score = params_.wrong;
    o.components = {{"answer_found", 0.0}, {"correct", 0.0}};
    std::string gold;
    const nlohmann::json& gt = in.ground_truth;
    if (gt.is_string()) {
      gold = gt.get<std::string>();
    } else if (gt.is_number_integer() || gt.is_number_unsigned()) {
      gold = gt.dump();
    } else if (gt.is_number_float()) {
      gold = gt.dump();
    } else {
      o.error = absl::StrCat("math: ground_truth must be a string or a number, got ",
                             std::string(gt.type_name()));
      return o;
    }
    if (gold.empty() || gold.size() > kMaxAnswerBytes || !ValidUtf8(gold)) {
      o.error = "math: ground_truth is empty, longer than 4096 bytes or not valid UTF-8";
      return o;
    }
    if (!ValidUtf8(in.completion)) {
      o.error = "math: completion is not valid UTF-8";
      return o;
    }
    std::optional<std::string> answer = ExtractFinalAnswer(in.completion);
    if (!answer) {
      o.score = params_.no_answer;
      o.info = "no answer found";
      return o;
    }
    o.components["answer_found"] = 1.0;
    bool correct = MathAnswersEqual(gold, *answer);
    o.components["correct"] = correct ? 1.0 : 0.0;
    o.score = correct ? params_.correct : params_.wrong;
    o.info = answer->size() > 200 ? answer->substr(0, 200) + "..." : *answer;
    return o;
  }

  std::string name_ = "math";
  MathRewardParams params_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RewardFunction>> MakeMathReward(const nlohmann::json& params) {
  MathRewardParams p;
  if (params.is_null()) return std::make_unique<MathReward>(p);
  if (!params.is_object()) return absl::InvalidArgumentError("math: params must be an object");
  for (const auto& [key, value] : params.items()) {
    double* field = key == "correct" ? &p.correct : key == "wrong" ? &p.wrong
                  : key == "no_answer" ? &p.no_answer : nullptr;
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "math: unknown param \"", key, "\" (known: correct, wrong, no_answer)"));
    }
    if (!value.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("math: param \"", key, "\" must be a number"));
    }
    *field = value.get<double>();
    if (!std::isfinite(*field)) {
      return absl::InvalidArgumentError(absl::StrCat("math: param \"", key, "\" must be finite"));
    }
  }
  return std::make_unique<MathReward>(p);
}

}  // namespace grpo
