// Model architecture from a Hugging Face config.json: qwen3_moe, qwen2_moe, qwen3, qwen2, llama.
// Parsing validates every field it uses and names the field in its errors; fields it does not
// use are kept (raw) so that a config written back loses nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo {

enum class ModelFamily { kQwen3Moe, kQwen2Moe, kQwen3, kQwen2, kLlama };

struct ModelConfig {
  ModelFamily family = ModelFamily::kQwen3Moe;
  std::string model_type = "qwen3_moe";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;         // H
  int64_t intermediate_size = 0;   // dense MLP width (dense layers only)
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // nh
  int64_t num_key_value_heads = 0;  // nkv; divides nh
  int64_t head_dim = 0;             // hd; may differ from H / nh
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  // rope_scaling: "default", "linear" (factor) or "llama3" (factor, low/high freq, original ctx).
  std::string rope_type = "default";
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 8192;
  int64_t max_position_embeddings = 32768;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have biases (qwen2*, or attention_bias)
  bool o_bias = false;    // o_proj has a bias (attention_bias in llama/qwen3)
  bool qk_norm = false;   // per-head RMSNorm on q and k before RoPE (qwen3*)

  // MoE (num_experts == 0: dense model).
  int64_t num_experts = 0;          // E
  int64_t num_experts_per_tok = 0;  // K
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe: one sigmoid-gated shared expert
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  double router_aux_loss_coef = 0.001;

  // The config.json this came from (or was built into); fields we do not model ride along.
  nlohmann::json raw = nlohmann::json::object();

  bool IsMoeLayer(int64_t layer_idx) const;
  int64_t NumMoeLayers() const;
  bool HasSharedExpert() const { return shared_expert_intermediate_size > 0; }
  // HF RoPE inverse frequencies (head_dim / 2 values), with rope_scaling applied.
  std::vector<float> RopeInvFreq() const;
  // Parameter count (tied embeddings counted once).
  int64_t NumParameters() const;
  // Checks internal consistency; errors name the field.
  absl::Status Validate() const;
  // A config.json a Hugging Face loader accepts, with `raw`'s other fields preserved.
  nlohmann::json ToJson() const;
};

// Parses a config.json object. `source` (a path) prefixes error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& j, const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace grpo
