// Parity with Hugging Face transformers: small random Qwen3-MoE, Qwen2-MoE and dense Qwen3
// checkpoints saved by transformers' save_pretrained (the dense one sharded), with logprobs,
// entropies and routing recorded by transformers in fp32 (scripts/make_hf_fixtures.py). Our
// fp32 forward must match within 1e-4 (the bar; observed errors are ~1e-6).
#include <catch2/catch.hpp>

#include <cmath>

#include "common/json_util.h"
#include "model/checkpoint.h"

namespace grpo {
namespace {

const std::string kFixtures = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/hf/";

void CheckParity(const std::string& name, const std::string& file) {
  auto model = LoadModel(kFixtures + name);
  INFO(name << "/" << file);
  REQUIRE(model.ok());
  auto ref = ReadJsonFile(kFixtures + name + "/" + file);
  REQUIRE(ref.ok());
  const nlohmann::json& j = *ref;
  ForwardOptions opt;
  opt.temperature = j["temperature"].get<float>();
  opt.record_routing = j.contains("routing");
  const auto& seqs = j["sequences"];
  REQUIRE(seqs.size() >= 3);
  double worst_lp = 0, worst_ent = 0;
  int64_t routing_mismatch = 0, compared = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    TokenBatch batch;
    batch.Add(seqs[s].get<std::vector<int32_t>>());
    ForwardResult<float> r;
    REQUIRE((*model)->Forward(batch, opt, &r).ok());
    const auto lp = j["logprobs"][s].get<std::vector<double>>();
    const auto ent = j["entropy"][s].get<std::vector<double>>();
    REQUIRE(lp.size() + 1 == batch.tokens.size());
    for (size_t i = 0; i < lp.size(); ++i) {
      worst_lp = std::max(worst_lp, std::abs(r.logprobs[i] - lp[i]));
      worst_ent = std::max(worst_ent, std::abs(r.entropy[i] - ent[i]));
      ++compared;
    }
    if (opt.record_routing) {
      // routing[s][moe_layer][token][k], in torch.topk order; ours is (layer, T, K).
      const auto& rs = j["routing"][s];
      const int64_t T = batch.num_tokens();
      const int64_t K = (*model)->config().num_experts_per_tok;
      for (size_t l = 0; l < rs.size(); ++l) {
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t k = 0; k < K; ++k) {
            routing_mismatch += rs[l][t][k].get<int32_t>() != r.routing[(l * T + t) * K + k];
          }
        }
      }
    }
  }
  INFO("max |logprob diff| " << worst_lp << ", max |entropy diff| " << worst_ent);
  CHECK(compared > 50);
  CHECK(worst_lp < 1e-4);
  CHECK(worst_ent < 1e-4);
  CHECK(routing_mismatch == 0);
}

TEST_CASE("transformers parity: qwen3_moe", "[model][hf]") {
  CheckParity("qwen3_moe", "logprobs.json");
  CheckParity("qwen3_moe", "logprobs_t07.json");
}

TEST_CASE("transformers parity: qwen2_moe (shared expert, tied embeddings)", "[model][hf]") {
  CheckParity("qwen2_moe", "logprobs.json");
}

TEST_CASE("transformers parity: qwen3 dense, sharded checkpoint", "[model][hf]") {
  CheckParity("qwen3", "logprobs.json");
}

}  // namespace
}  // namespace grpo
