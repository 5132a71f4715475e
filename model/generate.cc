#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {

int32_t SampleToken(const float* logits, int64_t V, float temperature, double u) {
  if (temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  }
  const float mx = *std::max_element(logits, logits + V);
  double total = 0;
  for (int64_t v = 0; v < V; ++v) total += std::exp(double(logits[v] - mx) / temperature);
  double target = u * total, acc = 0;
  for (int64_t v = 0; v < V; ++v) {
    acc += std::exp(double(logits[v] - mx) / temperature);
    if (acc > target) return static_cast<int32_t>(v);
  }
  return static_cast<int32_t>(V - 1);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    Model<float>& model, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& opt) {
  const ModelConfig& c = model.config();
  const int64_t V = c.vocab_size;
  if (opt.max_new_tokens < 0) return absl::InvalidArgumentError("generate: max_new_tokens < 0");
  if (!(opt.temperature >= 0) || !std::isfinite(opt.temperature)) {
    return absl::InvalidArgumentError("generate: temperature must be finite and >= 0");
  }
  std::vector<std::vector<int32_t>> out(prompts.size());
  if (opt.max_new_tokens == 0) return out;
  const int64_t n = static_cast<int64_t>(prompts.size());
  const int64_t max_batch = std::max<int64_t>(1, opt.max_batch);
  for (int64_t first = 0; first < n; first += max_batch) {
    const int64_t count = std::min(max_batch, n - first);
    int64_t max_prompt = 0;
    for (int64_t i = 0; i < count; ++i) {
      if (prompts[first + i].empty()) {
        return absl::InvalidArgumentError(absl::StrCat("generate: prompt ", first + i, " is empty"));
      }
      max_prompt = std::max<int64_t>(max_prompt, prompts[first + i].size());
    }
    // The last generated token is never fed back, so a sequence holds prompt + max_new - 1.
    const int64_t max_len = max_prompt + opt.max_new_tokens - 1;
    if (opt.max_new_tokens > c.max_position_embeddings || max_len > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(
          "generate: a prompt of ", max_prompt, " tokens plus ", opt.max_new_tokens,
          " new tokens exceeds the model's max_position_embeddings (", c.max_position_embeddings,
          "); lower max_new_tokens"));
    }
    KvCache<float> cache(c, count, max_len);
    std::vector<std::mt19937_64> rngs;
    for (int64_t i = 0; i < count; ++i) {
      rngs.emplace_back(opt.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(first + i));
    }
    std::vector<int64_t> slots(count);
    std::vector<absl::Span<const int32_t>> feed(count);
    for (int64_t i = 0; i < count; ++i) {
      slots[i] = i;
      feed[i] = prompts[first + i];
    }
    std::vector<float> logits(count * V);
    std::vector<int32_t> next(count);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    while (!slots.empty()) {
      RETURN_IF_ERROR(model.Extend(&cache, slots, feed, logits.data()));
      std::vector<int64_t> live;
      for (size_t j = 0; j < slots.size(); ++j) {
        const int64_t i = slots[j];
        const int32_t tok = SampleToken(logits.data() + j * V, V, opt.temperature, uniform(rngs[i]));
        std::vector<int32_t>& gen = out[first + i];
        gen.push_back(tok);
        const bool stop = std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), tok) !=
                          opt.stop_tokens.end();
        if (!stop && static_cast<int64_t>(gen.size()) < opt.max_new_tokens) live.push_back(i);
      }
      slots = live;
      feed.resize(slots.size());
      for (size_t j = 0; j < slots.size(); ++j) {
        next[slots[j]] = out[first + slots[j]].back();
        feed[j] = absl::Span<const int32_t>(&next[slots[j]], 1);
      }
    }
  }
  return out;
}

}  // namespace grpo
