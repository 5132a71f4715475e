#include "model/params.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {
namespace {

class Placer {
 public:
  explicit Placer(ParamLayout* layout) : layout_(layout) {}
  int64_t Add(std::string name, std::vector<int64_t> shape, bool is_norm = false,
              bool is_bias = false) {
    ParamTensor t;
    t.name = std::move(name);
    t.numel = 1;
    for (int64_t d : shape) t.numel *= d;
    t.shape = std::move(shape);
    t.offset = layout_->total;
    t.is_norm = is_norm;
    t.is_bias = is_bias;
    layout_->total += t.numel;
    layout_->tensors.push_back(std::move(t));
    return layout_->tensors.back().offset;
  }

 private:
  ParamLayout* layout_;
};

}  // namespace

ParamLayout ParamLayout::Build(const ModelConfig& c) {
  ParamLayout L;
  Placer p(&L);
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  L.embed = p.Add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    LayerOffsets o;
    o.ln1 = p.Add(pre + "input_layernorm.weight", {H}, true);
    // q, k, v weights back to back form one (qd + 2 kvd, H) matrix; their biases one vector.
    o.q = p.Add(pre + "self_attn.q_proj.weight", {qd, H});
    o.k = p.Add(pre + "self_attn.k_proj.weight", {kvd, H});
    o.v = p.Add(pre + "self_attn.v_proj.weight", {kvd, H});
    GRPO_CHECK(o.k == o.q + qd * H && o.v == o.k + kvd * H);
    if (c.qkv_bias) {
      o.qb = p.Add(pre + "self_attn.q_proj.bias", {qd}, false, true);
      o.kb = p.Add(pre + "self_attn.k_proj.bias", {kvd}, false, true);
      o.vb = p.Add(pre + "self_attn.v_proj.bias", {kvd}, false, true);
    }
    o.o = p.Add(pre + "self_attn.o_proj.weight", {H, qd});
    if (c.o_bias) o.ob = p.Add(pre + "self_attn.o_proj.bias", {H}, false, true);
    if (c.qk_norm) {
      o.q_norm = p.Add(pre + "self_attn.q_norm.weight", {hd}, true);
      o.k_norm = p.Add(pre + "self_attn.k_norm.weight", {hd}, true);
    }
    o.ln2 = p.Add(pre + "post_attention_layernorm.weight", {H}, true);
    o.moe = c.IsMoeLayer(l);
    if (!o.moe) {
      const int64_t I = c.intermediate_size;
      o.mlp_gate_up = p.Add(pre + "mlp.gate_proj.weight", {I, H});
      p.Add(pre + "mlp.up_proj.weight", {I, H});
      o.mlp_down = p.Add(pre + "mlp.down_proj.weight", {H, I});
    } else {
      const int64_t Im = c.moe_intermediate_size;
      o.router = p.Add(pre + "mlp.gate.weight", {c.num_experts, H});
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string ep = absl::StrCat(pre, "mlp.experts.", e, ".");
        int64_t g = p.Add(ep + "gate_proj.weight", {Im, H});
        p.Add(ep + "up_proj.weight", {Im, H});
        if (e == 0) o.experts_gate_up = g;
      }
      for (int64_t e = 0; e < c.num_experts; ++e) {
        int64_t d = p.Add(absl::StrCat(pre, "mlp.experts.", e, ".down_proj.weight"), {H, Im});
        if (e == 0) o.experts_down = d;
      }
      if (c.HasSharedExpert()) {
        const int64_t Is = c.shared_expert_intermediate_size;
        o.shared_gate_up = p.Add(pre + "mlp.shared_expert.gate_proj.weight", {Is, H});
        p.Add(pre + "mlp.shared_expert.up_proj.weight", {Is, H});
        o.shared_down = p.Add(pre + "mlp.shared_expert.down_proj.weight", {H, Is});
        o.shared_gate = p.Add(pre + "mlp.shared_expert_gate.weight", {1, H});
      }
    }
    L.layers.push_back(o);
  }
  L.norm = p.Add("model.norm.weight", {H}, true);
  L.lm_head = c.tie_word_embeddings ? L.embed : p.Add("lm_head.weight", {c.vocab_size, H});
  return L;
}

void InitParams(const ParamLayout& layout, uint64_t seed, float std, float* params) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, std);
  for (const ParamTensor& t : layout.tensors) {
    float* p = params + t.offset;
    for (int64_t i = 0; i < t.numel; ++i) {
      p[i] = t.is_norm ? 1.0f : t.is_bias ? 0.0f : normal(rng);
    }
  }
}

}  // namespace grpo
