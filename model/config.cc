#include "model/config.h"

#include <algorithm>
#include <climits>
#include <utility>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/status.h"

namespace grpo {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "': ", what));
}

// Reads an optional integer field; absent or null keeps *out. Present but not an integer: error.
absl::Status GetInt(const json& j, const std::string& source, const char* field, int64_t* out,
                    bool required = false) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (required) return FieldError(source, field, "missing; it is required for this model_type");
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return FieldError(source, field, absl::StrCat("must be an integer, got ", JsonTypeName(*it)));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status GetDouble(const json& j, const std::string& source, const char* field, double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return FieldError(source, field, absl::StrCat("must be a number, got ", JsonTypeName(*it)));
  }
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& j, const std::string& source, const char* field, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return FieldError(source, field, absl::StrCat("must be true or false, got ", JsonTypeName(*it)));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

const char* FamilyType(ModelFamily f) {
  switch (f) {
    case ModelFamily::kQwen3Moe: return "qwen3_moe";
    case ModelFamily::kQwen2Moe: return "qwen2_moe";
    case ModelFamily::kQwen3: return "qwen3";
    case ModelFamily::kQwen2: return "qwen2";
    case ModelFamily::kLlama: return "llama";
  }
  return "?";
}

const char* Architecture(ModelFamily f) {
  switch (f) {
    case ModelFamily::kQwen3Moe: return "Qwen3MoeForCausalLM";
    case ModelFamily::kQwen2Moe: return "Qwen2MoeForCausalLM";
    case ModelFamily::kQwen3: return "Qwen3ForCausalLM";
    case ModelFamily::kQwen2: return "Qwen2ForCausalLM";
    case ModelFamily::kLlama: return "LlamaForCausalLM";
  }
  return "?";
}

bool IsMoeFamily(ModelFamily f) {
  return f == ModelFamily::kQwen3Moe || f == ModelFamily::kQwen2Moe;
}

absl::Status ParseRope(const json& j, const std::string& source, ModelConfig* c) {
  RETURN_IF_ERROR(GetDouble(j, source, "rope_theta", &c->rope_theta));
  // transformers v5 nests rope settings in `rope_parameters`; v4 uses `rope_scaling`.
  const json* scaling = nullptr;
  std::string field = "rope_scaling";
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    scaling = &*it;
    field = "rope_parameters";
    RETURN_IF_ERROR(GetDouble(*it, source + ": " + field, "rope_theta", &c->rope_theta));
  } else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && !it2->is_null()) {
    if (!it2->is_object()) return FieldError(source, "rope_scaling", "must be an object or null");
    scaling = &*it2;
  }
  if (scaling != nullptr) {
    std::string type = "default";
    for (const char* key : {"rope_type", "type"}) {
      if (auto t = scaling->find(key); t != scaling->end() && t->is_string()) {
        type = t->get<std::string>();
        break;
      }
    }
    const std::string sub = source + ": " + field;
    if (type == "default") {
      // nothing
    } else if (type == "linear") {
      RETURN_IF_ERROR(GetDouble(*scaling, sub, "factor", &c->rope_factor));
    } else if (type == "llama3") {
      RETURN_IF_ERROR(GetDouble(*scaling, sub, "factor", &c->rope_factor));
      RETURN_IF_ERROR(GetDouble(*scaling, sub, "low_freq_factor", &c->rope_low_freq_factor));
      RETURN_IF_ERROR(GetDouble(*scaling, sub, "high_freq_factor", &c->rope_high_freq_factor));
      RETURN_IF_ERROR(GetInt(*scaling, sub, "original_max_position_embeddings",
                             &c->rope_original_max_position));
    } else {
      return FieldError(source, field + ".rope_type",
                        absl::StrCat("'", type, "' is not supported (supported: default, linear, "
                                     "llama3)"));
    }
    c->rope_type = type;
  }
  return absl::OkStatus();
}

}  // namespace

bool ModelConfig::IsMoeLayer(int64_t layer_idx) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer_idx) !=
      mlp_only_layers.end()) {
    return false;
  }
  return (layer_idx + 1) % decoder_sparse_step == 0;
}

int64_t ModelConfig::NumMoeLayers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += IsMoeLayer(l);
  return n;
}

std::vector<float> ModelConfig::RopeInvFreq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    // Same fp32 arithmetic as transformers: 1 / theta^(2i/dim).
    float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(rope_theta), expo);
  }
  if (rope_type == "linear") {
    for (float& f : inv) f = static_cast<float>(f / rope_factor);
  } else if (rope_type == "llama3") {
    const double low_wl = rope_original_max_position / rope_low_freq_factor;
    const double high_wl = rope_original_max_position / rope_high_freq_factor;
    for (float& f : inv) {
      const double wl = 2 * M_PI / f;
      if (wl > low_wl) {
        f = static_cast<float>(f / rope_factor);
      } else if (wl >= high_wl) {
        const double s = (rope_original_max_position / wl - rope_low_freq_factor) /
                         (rope_high_freq_factor - rope_low_freq_factor);
        f = static_cast<float>((1 - s) * f / rope_factor + s * f);
      }
    }
  }
  return inv;
}

int64_t ModelConfig::NumParameters() const {
  const int64_t H = hidden_size;
  int64_t n = vocab_size * H * (tie_word_embeddings ? 1 : 2) + H;
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    n += 2 * H;                                   // norms
    n += H * q + 2 * H * kv + q * H;              // q k v o
    if (qkv_bias) n += q + 2 * kv;
    if (o_bias) n += H;
    if (qk_norm) n += 2 * head_dim;
    if (IsMoeLayer(l)) {
      n += num_experts * H + num_experts * 3 * H * moe_intermediate_size;
      if (HasSharedExpert()) n += 3 * H * shared_expert_intermediate_size + H;
    } else {
      n += 3 * H * intermediate_size;
    }
  }
  return n;
}

absl::Status ModelConfig::Validate() const {
  const std::string src = "model config";
  auto positive = [&](const char* field, int64_t v) -> absl::Status {
    if (v <= 0) return FieldError(src, field, absl::StrCat("must be > 0, got ", v));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  RETURN_IF_ERROR(positive("num_hidden_layers", num_hidden_layers));
  RETURN_IF_ERROR(positive("num_attention_heads", num_attention_heads));
  RETURN_IF_ERROR(positive("num_key_value_heads", num_key_value_heads));
  RETURN_IF_ERROR(positive("head_dim", head_dim));
  RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
  // Upper bounds keep every product below int64 and token ids within int32.
  const int64_t kMaxDim = int64_t{1} << 24;
  for (auto [field, v] : {std::pair<const char*, int64_t>{"hidden_size", hidden_size},
                          {"num_hidden_layers", num_hidden_layers},
                          {"num_attention_heads", num_attention_heads},
                          {"head_dim", head_dim},
                          {"intermediate_size", intermediate_size},
                          {"moe_intermediate_size", moe_intermediate_size},
                          {"shared_expert_intermediate_size", shared_expert_intermediate_size},
                          {"num_experts", num_experts}}) {
    if (v > kMaxDim) {
      return FieldError(src, field, absl::StrCat("is implausibly large (", v, " > ", kMaxDim, ")"));
    }
  }
  if (vocab_size > INT32_MAX) {
    return FieldError(src, "vocab_size", absl::StrCat("must fit token ids in int32, got ", vocab_size));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return FieldError(src, "num_key_value_heads",
                      absl::StrCat("must divide num_attention_heads (", num_attention_heads,
                                   "), got ", num_key_value_heads));
  }
  if (head_dim % 2 != 0) {
    return FieldError(src, "head_dim", absl::StrCat("must be even for RoPE, got ", head_dim));
  }
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) {
    return FieldError(src, "rms_norm_eps", "must be a positive finite number");
  }
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return FieldError(src, "rope_theta", "must be a positive finite number");
  }
  if (!(rope_factor > 0)) return FieldError(src, "rope_scaling.factor", "must be > 0");
  if (rope_type == "llama3" && !(rope_high_freq_factor > rope_low_freq_factor)) {
    return FieldError(src, "rope_scaling.high_freq_factor", "must exceed low_freq_factor");
  }
  bool any_dense = false;
  for (int64_t l = 0; l < num_hidden_layers; ++l) any_dense |= !IsMoeLayer(l);
  if (any_dense) RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  // Parameter count in floating point (no overflow); 2^40 floats is far beyond any CPU run.
  {
    const double H = hidden_size, V = vocab_size, L = num_hidden_layers;
    const double q = double(num_attention_heads) * head_dim, kv = double(num_key_value_heads) * head_dim;
    const double ffn = 3.0 * H * std::max<double>({double(intermediate_size),
        double(num_experts) * moe_intermediate_size + shared_expert_intermediate_size});
    const double total = 2 * V * H + L * (2 * H * q + 2 * H * kv + ffn);
    if (total > std::pow(2.0, 40)) {
      return FieldError(src, "hidden_size", absl::StrCat("the model would have ~", total,
                                                         " parameters, beyond what grpo can hold"));
    }
  }
  if (IsMoeFamily(family)) {
    RETURN_IF_ERROR(positive("num_experts", num_experts));
    RETURN_IF_ERROR(positive("num_experts_per_tok", num_experts_per_tok));
    RETURN_IF_ERROR(positive("moe_intermediate_size", moe_intermediate_size));
    RETURN_IF_ERROR(positive("decoder_sparse_step", decoder_sparse_step));
    if (num_experts_per_tok > num_experts) {
      return FieldError(src, "num_experts_per_tok",
                        absl::StrCat("must be <= num_experts (", num_experts, "), got ",
                                     num_experts_per_tok));
    }
    if (family == ModelFamily::kQwen2Moe) {
      RETURN_IF_ERROR(positive("shared_expert_intermediate_size", shared_expert_intermediate_size));
    }
    for (int64_t l : mlp_only_layers) {
      if (l < 0 || l >= num_hidden_layers) {
        return FieldError(src, "mlp_only_layers",
                          absl::StrCat("layer ", l, " is outside 0..", num_hidden_layers - 1));
      }
    }
    if (router_aux_loss_coef < 0) {
      return FieldError(src, "router_aux_loss_coef", "must be >= 0");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(const json& j, const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  }
  ModelConfig c;
  c.raw = j;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) {
    return FieldError(source, "model_type",
                      "missing or not a string; expected one of qwen3_moe, qwen2_moe, qwen3, "
                      "qwen2, llama");
  }
  c.model_type = mt->get<std::string>();
  if (c.model_type == "qwen3_moe") {
    c.family = ModelFamily::kQwen3Moe;
  } else if (c.model_type == "qwen2_moe") {
    c.family = ModelFamily::kQwen2Moe;
  } else if (c.model_type == "qwen3") {
    c.family = ModelFamily::kQwen3;
  } else if (c.model_type == "qwen2") {
    c.family = ModelFamily::kQwen2;
  } else if (c.model_type == "llama") {
    c.family = ModelFamily::kLlama;
  } else {
    return FieldError(source, "model_type",
                      absl::StrCat("'", c.model_type,
                                   "' is not supported (supported: qwen3_moe, qwen2_moe, qwen3, "
                                   "qwen2, llama)"));
  }
  const bool qwen3 = c.family == ModelFamily::kQwen3 || c.family == ModelFamily::kQwen3Moe;
  const bool qwen2 = c.family == ModelFamily::kQwen2 || c.family == ModelFamily::kQwen2Moe;
  const bool moe = IsMoeFamily(c.family);

  RETURN_IF_ERROR(GetInt(j, source, "vocab_size", &c.vocab_size, true));
  RETURN_IF_ERROR(GetInt(j, source, "hidden_size", &c.hidden_size, true));
  RETURN_IF_ERROR(GetInt(j, source, "num_hidden_layers", &c.num_hidden_layers, true));
  RETURN_IF_ERROR(GetInt(j, source, "num_attention_heads", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(GetInt(j, source, "num_key_value_heads", &c.num_key_value_heads));
  // Dense Qwen3Config defaults head_dim to 128; Qwen3-MoE attention (like the others) falls back
  // to H / nh when the field is absent.
  c.head_dim = c.family == ModelFamily::kQwen3
                   ? 128
                   : (c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  RETURN_IF_ERROR(GetInt(j, source, "head_dim", &c.head_dim));
  RETURN_IF_ERROR(GetInt(j, source, "intermediate_size", &c.intermediate_size, !moe));
  double eps = c.rms_norm_eps;
  RETURN_IF_ERROR(GetDouble(j, source, "rms_norm_eps", &eps));
  c.rms_norm_eps = static_cast<float>(eps);
  RETURN_IF_ERROR(GetInt(j, source, "max_position_embeddings", &c.max_position_embeddings));
  RETURN_IF_ERROR(GetBool(j, source, "tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(ParseRope(j, source, &c));

  if (auto act = j.find("hidden_act"); act != j.end() && !act->is_null()) {
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return FieldError(source, "hidden_act", "only \"silu\" (SwiGLU) is supported");
    }
  }
  bool sliding = false;
  RETURN_IF_ERROR(GetBool(j, source, "use_sliding_window", &sliding));
  if (sliding) {
    return FieldError(source, "use_sliding_window", "sliding-window attention is not supported");
  }
  bool mlp_bias = false;
  RETURN_IF_ERROR(GetBool(j, source, "mlp_bias", &mlp_bias));
  if (mlp_bias) return FieldError(source, "mlp_bias", "MLP biases are not supported");

  if (qwen2) {
    // Qwen2 attention hard-codes q/k/v biases and no o_proj bias.
    c.qkv_bias = true;
    RETURN_IF_ERROR(GetBool(j, source, "qkv_bias", &c.qkv_bias));
  } else {
    bool attention_bias = false;
    RETURN_IF_ERROR(GetBool(j, source, "attention_bias", &attention_bias));
    c.qkv_bias = c.o_bias = attention_bias;
  }
  c.qk_norm = qwen3;

  if (moe) {
    // transformers v5 writes Qwen3-MoE's expert count as `num_local_experts`.
    const char* experts_field = j.contains("num_experts") || !j.contains("num_local_experts")
                                    ? "num_experts"
                                    : "num_local_experts";
    RETURN_IF_ERROR(GetInt(j, source, experts_field, &c.num_experts, true));
    RETURN_IF_ERROR(GetInt(j, source, "num_experts_per_tok", &c.num_experts_per_tok, true));
    RETURN_IF_ERROR(GetInt(j, source, "moe_intermediate_size", &c.moe_intermediate_size, true));
    RETURN_IF_ERROR(GetInt(j, source, "decoder_sparse_step", &c.decoder_sparse_step));
    RETURN_IF_ERROR(GetBool(j, source, "norm_topk_prob", &c.norm_topk_prob));
    RETURN_IF_ERROR(GetDouble(j, source, "router_aux_loss_coef", &c.router_aux_loss_coef));
    if (c.family == ModelFamily::kQwen2Moe) {
      RETURN_IF_ERROR(GetInt(j, source, "shared_expert_intermediate_size",
                             &c.shared_expert_intermediate_size, true));
    }
    if (auto it = j.find("mlp_only_layers"); it != j.end() && !it->is_null()) {
      if (!it->is_array()) return FieldError(source, "mlp_only_layers", "must be a list of ints");
      for (const auto& v : *it) {
        if (!v.is_number_integer()) {
          return FieldError(source, "mlp_only_layers", "must be a list of ints");
        }
        c.mlp_only_layers.push_back(v.get<int64_t>());
      }
    }
  }
  RETURN_IF_ERROR(WithContext(c.Validate(), source));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  return ParseModelConfig(j, path);
}

json ModelConfig::ToJson() const {
  json j = raw.is_object() ? raw : json::object();
  j["architectures"] = {Architecture(family)};
  j["model_type"] = FamilyType(family);
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  if (intermediate_size > 0) j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_type != "default" && !j.contains("rope_scaling") && !j.contains("rope_parameters")) {
    json s = {{"rope_type", rope_type}, {"factor", rope_factor}};
    if (rope_type == "llama3") {
      s["low_freq_factor"] = rope_low_freq_factor;
      s["high_freq_factor"] = rope_high_freq_factor;
      s["original_max_position_embeddings"] = rope_original_max_position;
    }
    j["rope_scaling"] = s;
  }
  j["max_position_embeddings"] = max_position_embeddings;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (family == ModelFamily::kQwen2 || family == ModelFamily::kQwen2Moe) {
    j["use_sliding_window"] = false;
    if (!qkv_bias) j["qkv_bias"] = false;
  } else {
    j["attention_bias"] = qkv_bias;
  }
  if (num_experts > 0) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    j["decoder_sparse_step"] = decoder_sparse_step;
    j["mlp_only_layers"] = mlp_only_layers;
    j["router_aux_loss_coef"] = router_aux_loss_coef;
    if (family == ModelFamily::kQwen2Moe) {
      j["shared_expert_intermediate_size"] = shared_expert_intermediate_size;
    }
  }
  if (!j.contains("torch_dtype") && !j.contains("dtype")) j["torch_dtype"] = "float32";
  return j;
}

}  // namespace grpo
