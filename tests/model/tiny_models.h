// Tiny configs of every supported family for model tests, and helpers to build models from them.
#pragma once

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "model/params.h"

namespace grpo::testing {

// A Qwen3-MoE with one dense layer (mlp_only_layers), q/k norm, GQA, head_dim != H / nh.
inline nlohmann::json TinyQwen3MoeJson() {
  return {{"model_type", "qwen3_moe"}, {"vocab_size", 37}, {"hidden_size", 16},
          {"intermediate_size", 20}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 6}, {"num_experts", 5},
          {"num_experts_per_tok", 2}, {"moe_intermediate_size", 12}, {"norm_topk_prob", true},
          {"mlp_only_layers", {1}}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
          {"max_position_embeddings", 64}, {"tie_word_embeddings", false}};
}

// A Qwen2-MoE: shared expert with sigmoid gate, q/k/v biases, tied embeddings, no topk renorm.
inline nlohmann::json TinyQwen2MoeJson() {
  return {{"model_type", "qwen2_moe"}, {"vocab_size", 41}, {"hidden_size", 16},
          {"intermediate_size", 20}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"num_experts", 4}, {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 10}, {"shared_expert_intermediate_size", 14},
          {"norm_topk_prob", false}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
          {"max_position_embeddings", 64}, {"tie_word_embeddings", true}};
}

// A dense Llama with attention biases (q/k/v and o) and llama3 RoPE scaling.
inline nlohmann::json TinyLlamaJson() {
  return {{"model_type", "llama"}, {"vocab_size", 29}, {"hidden_size", 16},
          {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 1}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
          {"attention_bias", true}, {"max_position_embeddings", 64},
          {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}}},
          {"tie_word_embeddings", false}};
}

// A dense Qwen2: q/k/v biases without an o_proj bias, tied embeddings.
inline nlohmann::json TinyQwen2Json() {
  return {{"model_type", "qwen2"}, {"vocab_size", 31}, {"hidden_size", 16},
          {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
          {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
          {"max_position_embeddings", 64}, {"tie_word_embeddings", true}};
}

// A small Qwen3-MoE with the GPU kernels' shapes (head_dim 64, 16 experts top-4) and one dense
// layer: the GPU tests' model (tests/gpu/).
inline nlohmann::json MidQwen3MoeJson() {
  return {{"model_type", "qwen3_moe"},   {"vocab_size", 300},
          {"hidden_size", 128},          {"intermediate_size", 160},
          {"num_hidden_layers", 3},      {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"head_dim", 64},
          {"num_experts", 16},           {"num_experts_per_tok", 4},
          {"moe_intermediate_size", 48}, {"norm_topk_prob", true},
          {"mlp_only_layers", {2}},      {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},       {"max_position_embeddings", 256},
          {"tie_word_embeddings", false}};
}

inline ModelConfig MustParse(const nlohmann::json& j) {
  auto c = ParseModelConfig(j, "test config");
  if (!c.ok()) throw std::runtime_error(std::string(c.status().message()));
  return *c;
}

// Random parameters with a larger spread than HF's 0.02 so that logits and routing are decisive.
inline std::vector<float> RandomParams(const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.total);
  InitParams(layout, seed, 0.3f, p.data());
  std::mt19937_64 rng(seed + 17);
  std::normal_distribution<float> n(0.0f, 0.2f);
  for (const ParamTensor& t : layout.tensors) {
    if (t.is_norm || t.is_bias) {
      for (int64_t i = 0; i < t.numel; ++i) p[t.offset + i] += n(rng);
    }
  }
  return p;
}

template <typename Real>
std::unique_ptr<Model<Real>> MakeModel(const ModelConfig& c, uint64_t seed) {
  auto m = Model<Real>::Create(c);
  if (!m.ok()) throw std::runtime_error(std::string(m.status().message()));
  std::vector<float> p = RandomParams((*m)->layout(), seed);
  std::copy(p.begin(), p.end(), (*m)->params());
  return std::move(*m);
}

inline TokenBatch RandomBatch(const std::vector<int>& lengths, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
  TokenBatch b;
  for (int len : lengths) {
    std::vector<int32_t> s(len);
    for (auto& t : s) t = tok(rng);
    b.Add(s);
  }
  return b;
}

}  // namespace grpo::testing
