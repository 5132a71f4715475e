// Helpers for the rollout tests: tiny random models, engines over them, and a reference sampler
// that draws one sample at a time with a private KV cache (no batching, no forking).
#pragma once

#include <memory>
#include <vector>

#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/sampling.h"
#include "tests/model/tiny_models.h"

namespace grpo::testing {

inline std::unique_ptr<Engine> MakeEngine(const ModelConfig& c, uint64_t seed,
                                          EngineOptions options = {},
                                          std::unique_ptr<Tokenizer> tokenizer = nullptr) {
  // Tiny models need little KV memory; the default budget would cost time to allocate.
  options.kv_budget_bytes = std::min<int64_t>(options.kv_budget_bytes, int64_t{4} << 20);
  auto engine = Engine::Create(MakeModel<float>(c, seed), std::move(tokenizer), options);
  if (!engine.ok()) throw std::runtime_error(std::string(engine.status().message()));
  return std::move(*engine);
}

inline std::vector<int32_t> RandomTokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % V);
  return t;
}

// Sample `sample_index` of prompt (prompt_id, tokens) drawn alone: prefill, then decode one
// token at a time, with batch-invariant kernels; same random stream and stop rules (stop tokens
// and length only).
inline Completion ReferenceSample(Model<float>& model, const std::vector<int32_t>& prompt,
                                  uint64_t prompt_id, int32_t sample_index,
                                  const SamplingParams& sp) {
  const int64_t V = model.config().vocab_size;
  KvCache<float> cache(model.config(), 1, static_cast<int64_t>(prompt.size()) + sp.max_new_tokens);
  std::vector<float> logits(V);
  std::vector<std::pair<float, int32_t>> scratch;
  Completion c;
  c.sample_index = sample_index;
  const int64_t slot = 0;
  model.set_batch_invariant(true);
  absl::Span<const int32_t> feed(prompt);
  if (!model.Extend(&cache, {slot}, {feed}, logits.data()).ok()) throw std::runtime_error("extend");
  int32_t last = 0;
  for (int64_t step = 0;; ++step) {
    const double u = SampleUniform(sp.seed, prompt_id, sample_index, step);
    const SampledToken t =
        SampleFromLogits(logits.data(), V, sp.temperature, sp.top_k, sp.top_p, u, &scratch);
    c.token_ids.push_back(t.token);
    c.logprobs.push_back(t.logprob);
    if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), t.token) !=
        sp.stop_token_ids.end()) {
      c.finish_reason = FinishReason::kStop;
      c.stop_token_id = t.token;
      break;
    }
    if (static_cast<int64_t>(c.token_ids.size()) >= sp.max_new_tokens) {
      c.finish_reason = FinishReason::kLength;
      break;
    }
    last = t.token;
    absl::Span<const int32_t> one(&last, 1);
    if (!model.Extend(&cache, {slot}, {one}, logits.data()).ok())
      throw std::runtime_error("extend");
  }
  model.set_batch_invariant(false);
  return c;
}

}  // namespace grpo::testing
