// Checkpoint directories and config.json: save -> load round trips (F32 bitwise, BF16 rounded,
// sharded), and each kind of malformed checkpoint or config rejected with a message naming it.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/json_util.h"
#include "model/checkpoint.h"
#include "tests/model/tiny_models.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;
using testing::MakeModel;
using testing::MustParse;

std::string TmpDir(const std::string& name) {
  std::string d = std::string(GRPO_BINARY_DIR) + "/test_tmp/checkpoint/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

bool Contains(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

float RoundBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

TEST_CASE("save then load round-trips bitwise in F32, for every family", "[checkpoint]") {
  for (const auto& j : {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson(),
                        testing::TinyLlamaJson(), testing::TinyQwen2Json()}) {
    ModelConfig c = MustParse(j);
    INFO(c.model_type);
    auto model = MakeModel<float>(c, 3);
    const std::string dir = TmpDir("roundtrip_" + c.model_type);
    REQUIRE(SaveModel(*model, dir).ok());
    CHECK(fs::exists(dir + "/model.safetensors"));
    auto loaded = LoadModel(dir);
    REQUIRE(loaded.ok());
    REQUIRE((*loaded)->num_params() == model->num_params());
    CHECK(std::memcmp((*loaded)->params(), model->params(), sizeof(float) * model->num_params()) == 0);
    CHECK((*loaded)->config().tie_word_embeddings == c.tie_word_embeddings);
    CHECK((*loaded)->config().ToJson() == c.ToJson());
  }
}

TEST_CASE("tied embeddings: no lm_head.weight written", "[checkpoint]") {
  ModelConfig c = MustParse(testing::TinyQwen2MoeJson());
  auto model = MakeModel<float>(c, 4);
  const std::string dir = TmpDir("tied");
  REQUIRE(SaveModel(*model, dir).ok());
  auto ckpt = CheckpointDir::Open(dir);
  REQUIRE(ckpt.ok());
  CHECK((*ckpt)->Find("lm_head.weight").file == nullptr);
  CHECK((*ckpt)->Find("model.embed_tokens.weight").file != nullptr);
  CHECK((*ckpt)->Find("model.layers.1.mlp.shared_expert_gate.weight").file != nullptr);
  CHECK((*ckpt)->Find("model.layers.0.mlp.experts.3.down_proj.weight").file != nullptr);
}

TEST_CASE("tied checkpoints that also hold lm_head.weight", "[checkpoint]") {
  ModelConfig c = MustParse(testing::TinyQwen2MoeJson());
  auto model = MakeModel<float>(c, 12);
  const ParamLayout& L = model->layout();
  std::vector<TensorToWrite> ts;
  for (const ParamTensor& t : L.tensors) ts.push_back({t.name, t.shape, model->params() + t.offset});
  const ParamTensor& embed = L.tensors.front();
  ts.push_back({"lm_head.weight", embed.shape, model->params() + embed.offset});
  const std::string dir = TmpDir("tied_with_head");
  REQUIRE(SaveModel(*model, dir).ok());
  REQUIRE(WriteCheckpointWeights(dir, ts).ok());
  auto ok = LoadModel(dir);
  REQUIRE(ok.ok());  // an exact copy of the embedding is accepted
  CHECK(std::memcmp((*ok)->params(), model->params(), sizeof(float) * model->num_params()) == 0);
  std::vector<float> other(model->params() + embed.offset, model->params() + embed.offset + embed.numel);
  other[3] += 1.0f;
  ts.back().data = other.data();
  REQUIRE(WriteCheckpointWeights(dir, ts).ok());
  auto bad = LoadModel(dir);
  REQUIRE_FALSE(bad.ok());
  CHECK(Contains(bad.status(), "lm_head.weight differs"));
}

TEST_CASE("BF16 save loads back as the rounded values", "[checkpoint]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 5);
  const std::string dir = TmpDir("bf16");
  SaveOptions opt;
  opt.dtype = Dtype::kBF16;
  REQUIRE(SaveModel(*model, dir, opt).ok());
  auto loaded = LoadModel(dir);
  REQUIRE(loaded.ok());
  int64_t mismatches = 0;
  for (int64_t i = 0; i < model->num_params(); ++i) {
    mismatches += (*loaded)->params()[i] != RoundBf16(model->params()[i]);
  }
  CHECK(mismatches == 0);
  auto cfg = ReadJsonFile(dir + "/config.json");
  REQUIRE(cfg.ok());
  CHECK((*cfg)["torch_dtype"] == "bfloat16");
}

TEST_CASE("sharded save loads back bitwise", "[checkpoint]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 6);
  const std::string dir = TmpDir("sharded");
  SaveOptions opt;
  opt.max_shard_bytes = 4096;
  REQUIRE(SaveModel(*model, dir, opt).ok());
  CHECK(fs::exists(dir + "/model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(dir + "/model.safetensors"));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    shards += e.path().filename().string().rfind("model-", 0) == 0;
  }
  CHECK(shards >= 3);
  auto loaded = LoadModel(dir);
  REQUIRE(loaded.ok());
  CHECK(std::memcmp((*loaded)->params(), model->params(), sizeof(float) * model->num_params()) == 0);
}

// Saves a model, then writes its weights again without / with a changed tensor.
std::string SaveMutated(const std::string& name, const std::string& drop,
                        const std::string& reshape, const std::string& extra) {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 7);
  const std::string dir = TmpDir(name);
  REQUIRE(SaveModel(*model, dir).ok());
  std::vector<TensorToWrite> ts;
  for (const ParamTensor& t : model->layout().tensors) {
    if (t.name == drop) continue;
    TensorToWrite w{t.name, t.shape, model->params() + t.offset, Dtype::kF32};
    if (t.name == reshape) w.shape = {t.numel};
    ts.push_back(w);
  }
  if (!extra.empty()) ts.push_back({extra, {2}, model->params(), Dtype::kF32});
  REQUIRE(WriteCheckpointWeights(dir, ts).ok());
  return dir;
}

TEST_CASE("malformed checkpoints are rejected with a clear message", "[checkpoint]") {
  SECTION("missing tensor") {
    const std::string dir = SaveMutated("missing", "model.layers.0.mlp.experts.2.up_proj.weight", "", "");
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "model.layers.0.mlp.experts.2.up_proj.weight"));
    CHECK(Contains(m.status(), "missing"));
  }
  SECTION("wrong shape") {
    const std::string dir = SaveMutated("shape", "", "model.layers.1.self_attn.k_proj.weight", "");
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "model.layers.1.self_attn.k_proj.weight"));
    CHECK(Contains(m.status(), "shape"));
  }
  SECTION("unexpected tensor") {
    const std::string dir = SaveMutated("extra", "", "", "model.layers.7.mlp.gate.weight");
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "unexpected tensor 'model.layers.7.mlp.gate.weight'"));
  }
  SECTION("wrong dtype") {
    // Rewrite the file with the final norm stored as I32 (same byte size as F32).
    ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
    auto model = MakeModel<float>(c, 8);
    const std::string dir = TmpDir("dtype");
    REQUIRE(SaveModel(*model, dir).ok());
    auto bytes = ReadFile(dir + "/model.safetensors");
    REQUIRE(bytes.ok());
    uint64_t n;
    std::memcpy(&n, bytes->data(), 8);
    std::string header = bytes->substr(8, n);
    const size_t at = header.find("\"model.norm.weight\":{");
    REQUIRE(at != std::string::npos);
    const size_t f32 = header.find("\"F32\"", at);
    REQUIRE(f32 != std::string::npos);
    header.replace(f32 + 1, 3, "I32");
    std::string out = bytes->substr(0, 8) + header + bytes->substr(8 + n);
    REQUIRE(WriteFileAtomic(dir + "/model.safetensors", out).ok());
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "model.norm.weight"));
    CHECK(Contains(m.status(), "I32"));
  }
  SECTION("truncated file") {
    ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
    auto model = MakeModel<float>(c, 9);
    const std::string dir = TmpDir("truncated");
    REQUIRE(SaveModel(*model, dir).ok());
    const std::string f = dir + "/model.safetensors";
    fs::resize_file(f, fs::file_size(f) - 100);
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "model.safetensors"));
  }
  SECTION("lying header length") {
    ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
    auto model = MakeModel<float>(c, 10);
    const std::string dir = TmpDir("lying");
    REQUIRE(SaveModel(*model, dir).ok());
    auto bytes = ReadFile(dir + "/model.safetensors");
    REQUIRE(bytes.ok());
    std::string out = *bytes;
    uint64_t huge = uint64_t{1} << 40;
    std::memcpy(out.data(), &huge, 8);
    REQUIRE(WriteFileAtomic(dir + "/model.safetensors", out).ok());
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), "model.safetensors"));
  }
  SECTION("no weights at all") {
    const std::string dir = TmpDir("empty");
    REQUIRE(WriteFileAtomic(dir + "/config.json", testing::TinyQwen3MoeJson().dump()).ok());
    auto m = LoadModel(dir);
    REQUIRE_FALSE(m.ok());
    CHECK(Contains(m.status(), dir));
  }
}

TEST_CASE("config.json errors name the field", "[config]") {
  auto bad = [](nlohmann::json j) { return ParseModelConfig(j, "cfg.json").status(); };
  nlohmann::json j = testing::TinyQwen3MoeJson();
  j["model_type"] = "gpt2";
  CHECK(Contains(bad(j), "field 'model_type'"));
  j = testing::TinyQwen3MoeJson();
  j.erase("hidden_size");
  CHECK(Contains(bad(j), "field 'hidden_size': missing"));
  j = testing::TinyQwen3MoeJson();
  j["num_key_value_heads"] = 3;
  CHECK(Contains(bad(j), "field 'num_key_value_heads'"));
  j = testing::TinyQwen3MoeJson();
  j["num_experts_per_tok"] = 9;
  CHECK(Contains(bad(j), "field 'num_experts_per_tok'"));
  j = testing::TinyQwen3MoeJson();
  j["vocab_size"] = "many";
  CHECK(Contains(bad(j), "field 'vocab_size': must be an integer, got string"));
  j = testing::TinyQwen3MoeJson();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  CHECK(Contains(bad(j), "'yarn' is not supported"));
  j = testing::TinyQwen3MoeJson();
  j["mlp_only_layers"] = {5};
  CHECK(Contains(bad(j), "field 'mlp_only_layers'"));
  j = testing::TinyQwen2MoeJson();
  j.erase("shared_expert_intermediate_size");
  CHECK(Contains(bad(j), "shared_expert_intermediate_size"));
  CHECK(Contains(ParseModelConfig(nlohmann::json::array(), "cfg.json").status(), "JSON object"));
  j = testing::TinyQwen3MoeJson();
  j["vocab_size"] = int64_t{1} << 33;
  CHECK(Contains(bad(j), "field 'vocab_size': must fit token ids in int32"));
  j = testing::TinyQwen3MoeJson();
  j["hidden_size"] = int64_t{1} << 40;
  CHECK(Contains(bad(j), "field 'hidden_size'"));
  j = testing::TinyQwen3MoeJson();
  j["hidden_size"] = 1 << 20;
  j["vocab_size"] = 1 << 30;
  CHECK(Contains(bad(j), "parameters"));
  // Without head_dim, Qwen3-MoE attention uses H / nh (only dense Qwen3 defaults to 128).
  j = testing::TinyQwen3MoeJson();
  j.erase("head_dim");
  auto no_hd = ParseModelConfig(j, "cfg.json");
  REQUIRE(no_hd.ok());
  CHECK(no_hd->head_dim == 16 / 4);
  j = {{"model_type", "qwen3"}, {"vocab_size", 10}, {"hidden_size", 16}, {"intermediate_size", 8},
       {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
  auto dense = ParseModelConfig(j, "cfg.json");
  REQUIRE(dense.ok());
  CHECK(dense->head_dim == 128);
  // transformers v5 spells the expert count num_local_experts.
  j = testing::TinyQwen3MoeJson();
  j["num_local_experts"] = j["num_experts"];
  j.erase("num_experts");
  auto v5 = ParseModelConfig(j, "cfg.json");
  REQUIRE(v5.ok());
  CHECK(v5->num_experts == 5);
  // Valid configs parse, with the documented defaults.
  auto ok = ParseModelConfig(testing::TinyQwen2MoeJson(), "cfg.json");
  REQUIRE(ok.ok());
  CHECK(ok->qkv_bias);
  CHECK_FALSE(ok->o_bias);
  CHECK(ok->head_dim == 4);
  CHECK(ok->IsMoeLayer(0));
  auto q3 = ParseModelConfig(testing::TinyQwen3MoeJson(), "cfg.json");
  REQUIRE(q3.ok());
  CHECK(q3->qk_norm);
  CHECK_FALSE(q3->IsMoeLayer(1));
  CHECK(q3->NumMoeLayers() == 1);
}

}  // namespace
}  // namespace grpo
