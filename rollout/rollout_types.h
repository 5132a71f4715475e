// Plain C++ types of the rollout interface, shared by the engine (rollout/engine.h), the gRPC
// client the learner uses (rollout/rollout_client.h) and the server. They mirror
// proto/rollout.proto field for field; see there for the full contract of each field. No proto
// types here, so callers need not include generated code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace grpo {

struct SamplingParams {
  int32_t group_size = 1;       // G >= 1
  float temperature = 1.0f;     // >= 0; 0 = greedy (logprobs then at temperature 1)
  float top_p = 1.0f;           // (0, 1]; 1 = off
  int32_t top_k = 0;            // >= 0; 0 = off
  int32_t max_new_tokens = 16;  // >= 1
  std::vector<int32_t> stop_token_ids;
  // Checked against the decoded completion text (needs a tokenizer); the token that completes a
  // match ends the completion and is kept (nothing is cut; see Completion::stop_string).
  std::vector<std::string> stop_strings;
  uint64_t seed = 0;
  bool return_routing = false;
  // Logprobs bitwise equal to Model<float>::Forward with set_batch_invariant(true) on the same
  // tokens and weights (the CPU engine always gives this; the CUDA one refuses it: engine.h).
  bool deterministic = false;

  // Checks ranges only (vocab-dependent checks happen in the engine). Errors name the field
  // ("sampling.top_p: 1.5 is outside (0, 1]").
  absl::Status Validate() const;
};

struct RolloutPrompt {
  uint64_t prompt_id = 0;          // echoed in GroupResult; keys the random streams
  std::vector<int32_t> token_ids;  // (P) non-empty
};

enum class FinishReason { kUnspecified = 0, kStop = 1, kLength = 2, kAbort = 3 };
const char* FinishReasonName(FinishReason r);  // "stop", "length", "abort", "unspecified"

// (num_moe_layers, num_tokens, top_k) flattened; num_tokens = prompt + completion length.
// Exactly Model::Forward's replay_routing layout for the sequence prompt + completion.
struct RoutingData {
  int32_t num_moe_layers = 0;
  int32_t num_tokens = 0;
  int32_t top_k = 0;
  std::vector<int32_t> expert_ids;
};

struct Completion {
  int32_t sample_index = 0;
  std::vector<int32_t> token_ids;  // (N) generated tokens only
  std::vector<float> logprobs;     // (N) under the sampling distribution
  FinishReason finish_reason = FinishReason::kUnspecified;
  int32_t stop_token_id = -1;  // the stop token emitted, else -1
  std::string stop_string;     // the stop string matched, else empty
  uint64_t weight_version = 0;
  RoutingData routing;  // empty unless return_routing on an MoE model
};

struct GroupResult {
  uint64_t prompt_id = 0;
  int32_t prompt_index = 0;             // index in the request's prompts
  std::vector<Completion> completions;  // (G) by sample_index
};

struct RolloutStatus {
  uint64_t weight_version = 0;
  uint64_t staged_version = 0;  // 0 = none pending
  int64_t queued_sequences = 0;
  int64_t running_sequences = 0;
  double tokens_per_second = 0;
  int64_t total_tokens = 0;
  int64_t kv_bytes_budget = 0;
  int64_t kv_bytes_used = 0;
  int64_t max_context = 0;
  int64_t num_params = 0;
  uint64_t layout_fingerprint = 0;
  std::string model_type;
  int32_t vocab_size = 0;
  std::string device;  // "cpu" or "cuda"
};

}  // namespace grpo
