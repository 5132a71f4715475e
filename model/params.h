// Where every parameter lives: one flat array per model (weights, and the same layout for
// gradients and optimizer state), cut into the Hugging Face tensors a checkpoint holds. Each HF
// tensor is one contiguous block, and blocks are placed so that a layer's fused views are
// contiguous too: gate_proj then up_proj rows form one (2I, H) matrix, and expert e's gate/up and
// down blocks sit at a fixed stride, like transformers v5's fused `gate_up_proj` / `down_proj`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace grpo {

struct ParamTensor {
  std::string name;            // HF name, e.g. "model.layers.0.mlp.experts.3.up_proj.weight"
  std::vector<int64_t> shape;  // HF shape, [out, in] for linear weights
  int64_t offset = 0;          // into the flat array
  int64_t numel = 0;
  bool is_norm = false;        // RMSNorm weight: initialized to 1
  bool is_bias = false;        // initialized to 0
};

// Offsets of one decoder layer's parameters into the flat array; -1 where absent.
struct LayerOffsets {
  int64_t ln1 = -1, ln2 = -1;                  // (H)
  int64_t q = -1, k = -1, v = -1, o = -1;      // (nh*hd, H), (nkv*hd, H) x2, (H, nh*hd)
  int64_t qb = -1, kb = -1, vb = -1, ob = -1;  // biases
  // NOTES: k == q + nh*hd*H and v == k + nkv*hd*H (one fused qkv matrix); likewise the biases.
  int64_t q_norm = -1, k_norm = -1;            // (hd)
  bool moe = false;
  int64_t mlp_gate_up = -1, mlp_down = -1;     // dense: (2I, H), (H, I)
  int64_t router = -1;                         // (E, H)
  int64_t experts_gate_up = -1;                // (E, 2Im, H)
  int64_t experts_down = -1;                   // (E, H, Im)
  int64_t shared_gate_up = -1, shared_down = -1;  // (2Is, H), (H, Is)
  int64_t shared_gate = -1;                    // (1, H)
};

struct ParamLayout {
  std::vector<ParamTensor> tensors;  // in placement order
  std::vector<LayerOffsets> layers;
  int64_t embed = -1;    // (V, H)
  int64_t norm = -1;     // (H)
  int64_t lm_head = -1;  // (V, H); == embed when tied
  int64_t total = 0;

  static ParamLayout Build(const ModelConfig& config);
};

// Fills `params` (layout.total values) the way transformers initializes a fresh model: linear
// and embedding weights ~ N(0, std), norms 1, biases 0. Deterministic in `seed`.
void InitParams(const ParamLayout& layout, uint64_t seed, float std, float* params);

}  // namespace grpo
