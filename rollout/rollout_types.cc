// SamplingParams::Validate and FinishReasonName (rollout/rollout_types.h).
#include "rollout/rollout_types.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace grpo {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    default:
      return "unspecified";
  }
}

absl::Status SamplingParams::Validate() const {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError("sampling." + msg); };
  if (group_size < 1) return bad(absl::StrCat("group_size: ", group_size, " must be >= 1"));
  if (!std::isfinite(temperature) || temperature < 0) {
    return bad(absl::StrCat("temperature: ", temperature, " must be finite and >= 0 (0 = greedy)"));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return bad(absl::StrCat("top_p: ", top_p, " is outside (0, 1]"));
  }
  if (top_k < 0) return bad(absl::StrCat("top_k: ", top_k, " must be >= 0 (0 = off)"));
  if (max_new_tokens < 1) {
    return bad(absl::StrCat("max_new_tokens: ", max_new_tokens, " must be >= 1"));
  }
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) return bad(absl::StrCat("stop_strings[", i, "] is empty"));
  }
  return absl::OkStatus();
}

}  // namespace grpo
