// Plain batched generation on top of Model<float>::Extend: prefill every prompt, then decode all
// live sequences together one token per step. Temperature 0 is greedy (lowest id on ties);
// otherwise softmax(logits / T) sampling from a per-sequence RNG seeded by (seed, index), so a
// sequence's sample does not depend on what it was batched with. The rollout engine (rollout/)
// does continuous batching and group sampling; this is the simple reference path.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace grpo {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  float temperature = 0.0f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_tokens;  // generation of a sequence ends after emitting one of these
  int64_t max_batch = 64;            // sequences decoded together
};

// Returns, per prompt, the generated tokens only (not the prompt). Prompts must be non-empty.
absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    Model<float>& model, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& options);

// Draws a token from logits (V) at `temperature` (0: argmax) with uniform u in [0, 1).
int32_t SampleToken(const float* logits, int64_t V, float temperature, double u);

}  // namespace grpo
