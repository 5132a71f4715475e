// Tests for learner/config.h: defaults fill what a config leaves out, --set overrides, unknown keys
// and wrong types are rejected by their full name, ranges are checked (G = 1 under GRPO).
#include "learner/config.h"

#include <catch2/catch.hpp>
#include <string>

namespace grpo {
namespace {

nlohmann::json Minimal() {
  return {{"model", "m"},
          {"output_dir", "o"},
          {"data", {{"path", "train.jsonl"}}},
          {"reward", {{"rewards", {{{"name", "exact_match"}}}}}}};
}

std::string Error(const nlohmann::json& j) {
  auto c = ParseLearnerConfig(j, "run.json");
  REQUIRE(!c.ok());
  return std::string(c.status().message());
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_CASE("config: defaults fill every key the file leaves out", "[config]") {
  auto c = ParseLearnerConfig(Minimal(), "run.json");
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  CHECK(c->rollout.group_size == 8);
  CHECK(c->algorithm.loss.clip_low == 0.2);
  CHECK(c->algorithm.loss.aggregation == LossAggregation::kTokenMean);
  CHECK(c->algorithm.loss.kl_estimator == KlEstimator::kK3);
  CHECK(c->algorithm.loss.norm_length == 64);  // = rollout.max_new_tokens
  CHECK(c->optimizer.lr == 1e-6);
  CHECK(c->optimizer.max_grad_norm == 1.0);
  CHECK(c->checkpoint_keep == 3);
  CHECK(c->data.path == "train.jsonl");
}

TEST_CASE("config: --set overrides nested keys with JSON or string values", "[config]") {
  nlohmann::json j = Minimal();
  REQUIRE(ApplyOverride("algorithm.clip_high=0.28", &j).ok());
  REQUIRE(ApplyOverride("algorithm.aggregation=seq-mean-token-mean", &j).ok());
  REQUIRE(ApplyOverride("rollout.stop_tokens=[\"<|im_end|>\"]", &j).ok());
  REQUIRE(ApplyOverride("data.shuffle=false", &j).ok());  // inside a pass-through subtree
  auto c = ParseLearnerConfig(j, "run.json");
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  CHECK(c->algorithm.loss.clip_high == 0.28);
  CHECK(c->algorithm.loss.aggregation == LossAggregation::kSeqMeanTokenMean);
  CHECK(c->rollout.stop_tokens == std::vector<std::string>{"<|im_end|>"});
  CHECK(!c->data.shuffle);
  auto bad = ApplyOverride("algorithm.clip_hgh=0.3", &j);
  REQUIRE(!bad.ok());
  CHECK(Contains(std::string(bad.message()), "unknown key 'algorithm.clip_hgh'"));
  CHECK(!ApplyOverride("noequals", &j).ok());
}

TEST_CASE("config: unknown keys and wrong types are errors naming the key", "[config]") {
  nlohmann::json j = Minimal();
  j["algorithm"] = {{"kl_coeff", 0.1}};
  CHECK(Contains(Error(j), "unknown key 'algorithm.kl_coeff'"));
  CHECK(Contains(Error(j), "run.json"));
  j = Minimal();
  j["optimizer"] = {{"lr", "fast"}};
  CHECK(Contains(Error(j), "'optimizer.lr' must be a number, not string"));
  j = Minimal();
  j["rollout"] = {{"group_size", 2.5}};
  CHECK(Contains(Error(j), "'rollout.group_size' must be an integer"));
  j = Minimal();
  j["data"] = {{"path", "x"}, {"shufle", true}};
  CHECK(Contains(Error(j), "data"));
  j = Minimal();
  j["reward"] = {{"rewards", {{{"name", "exact_match"}, {"wieght", 1}}}}};
  CHECK(Contains(Error(j), "reward"));
}

TEST_CASE("config: ranges and G = 1 under GRPO", "[config]") {
  nlohmann::json j = Minimal();
  j["rollout"] = {{"group_size", 1}};
  CHECK(Contains(Error(j), "group_size"));
  j["algorithm"] = {{"advantage", "rloo"}};
  CHECK(ParseLearnerConfig(j, "run.json").ok());  // RLOO takes groups of one
  j = Minimal();
  j["algorithm"] = {{"clip_low", 1.5}};
  CHECK(Contains(Error(j), "clip_low"));
  j = Minimal();
  j["algorithm"] = {{"mini_batches", 3}};  // 16 prompts do not split in 3
  CHECK(Contains(Error(j), "mini_batches"));
  j = Minimal();
  j["algorithm"] = {{"aggregation", "mean"}};
  CHECK(Contains(Error(j), "algorithm.aggregation"));
  j = Minimal();
  j["optimizer"] = {{"schedule", "linear"}};
  CHECK(Contains(Error(j), "optimizer.schedule"));
  j = Minimal();
  j.erase("model");
  CHECK(Contains(Error(j), "'model' is required"));
  j = Minimal();
  j["seed"] = -1;
  CHECK(Contains(Error(j), "seed"));
}

TEST_CASE("config: device is cpu, cuda or auto, and cuda refuses what only the CPU does",
          "[config]") {
  auto c = ParseLearnerConfig(Minimal(), "run.json");
  REQUIRE(c.ok());
  CHECK(c->device == "cpu");
  nlohmann::json j = Minimal();
  j["device"] = "gpu";
  CHECK(Contains(Error(j), "'device' must be one of cpu, cuda, auto"));
  j["device"] = "cuda";
  CHECK(ParseLearnerConfig(j, "run.json").ok());  // parsing never needs the GPU itself
  j["rollout"] = {{"deterministic", true}};
  CHECK(Contains(Error(j), "'rollout.deterministic' needs 'device' cpu"));
  j = Minimal();
  j["weight_sync"] = {{"transport", "ipc"}};  // the learner's GPU weights, device to device
  CHECK(Contains(Error(j), "'weight_sync.transport' \"ipc\""));
  CHECK(Contains(Error(j), "needs 'device' \"cuda\""));
  j["device"] = "cuda";  // in-process engines on the CPU, or remote servers: fine
  CHECK(ParseLearnerConfig(j, "run.json").ok());
  j["rollout"] = {{"local_device", "cuda"}};
  CHECK(ParseLearnerConfig(j, "run.json").ok());
  j = Minimal();
  j["device"] = "cuda";
  j["data_parallel"] = {{"ranks", 2}};  // GPU ranks: threads of this process, a GPU each
  CHECK(ParseLearnerConfig(j, "run.json").ok());
  j = Minimal();
  j["rollout"] = {{"local_device", "tpu"}};
  CHECK(Contains(Error(j), "'rollout.local_device' must be one of cpu, cuda, auto"));
  j["rollout"] = {{"local_device", "cuda"}, {"deterministic", true}};
  CHECK(Contains(Error(j), "'rollout.deterministic' needs 'rollout.local_device' cpu"));
}

}  // namespace
}  // namespace grpo
