// Drawing one token from a row of logits with temperature, top-k and top-p, and its logprob
// under the distribution it was drawn from (ALGORITHMS.md section 10), plus the per-sample random
// stream. Pure functions: the engine calls them per sequence, tests call them directly.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace grpo {

struct SampledToken {
  int32_t token = 0;
  float logprob = 0;
};

// logits (V) raw (temperature 1). temperature 0: argmax (lowest id on ties), logprob at
// temperature 1. Otherwise z = logits / temperature; top_k > 0 keeps the k largest (ties: lower
// id); top_p < 1 then keeps the smallest prefix of the rest, most probable first, whose
// probability sums to >= top_p (at least one token); the kept set is renormalized and sampled
// with u in [0, 1). With top_k 0 (or >= V) and top_p 1 the logprob comes from
// cpu::LogprobForward, the learner's kernel, so it is bitwise the learner's for equal logits.
// scratch is reused between calls.
SampledToken SampleFromLogits(const float* logits, int64_t V, float temperature, int32_t top_k,
                              float top_p, double u,
                              std::vector<std::pair<float, int32_t>>* scratch);

// The uniform in [0, 1) a sample uses for its token number `step`: a counter-based hash of
// (seed, prompt_id, sample_index, step), so it depends on nothing else.
double SampleUniform(uint64_t seed, uint64_t prompt_id, int64_t sample_index, int64_t step);

}  // namespace grpo
