// Tests for reward/reward_set.h: config parsing and validation (errors name the field), routing by
// data_source, weighted sums, component naming, and per-item errors. Uses a private registry of
// test functions whose outputs are obvious, plus the real built-ins for an end-to-end case.
#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <vector>

#include "reward/reward_set.h"

namespace grpo {
namespace {

// Scores every item params.value (default 1) with component "half" = value / 2; an item whose
// completion is "fail" gets an error; with params.drop, returns one output too few.
class ConstReward : public RewardFunction {
 public:
  ConstReward(double value, bool drop) : value_(value), drop_(drop) {}
  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override {
    std::vector<RewardOutput> out(batch.size() - (drop_ && !batch.empty() ? 1 : 0));
    for (size_t i = 0; i < out.size(); ++i) {
      if (batch[i].completion == "fail") {
        out[i].error = "cannot score 'fail'";
        continue;
      }
      out[i].score = value_;
      out[i].components["half"] = value_ / 2;
    }
    return out;
  }

 private:
  std::string name_ = "const";
  double value_;
  bool drop_;
};

RewardRegistry TestRegistry() {
  RewardRegistry r;
  REQUIRE(r.Register("const", [](const nlohmann::json& p)
                                  -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
            if (p.is_object() && p.contains("bad")) return absl::InvalidArgumentError("'bad' field");
            const double v = p.is_object() ? p.value("value", 1.0) : 1.0;
            const bool drop = p.is_object() && p.value("drop", false);
            return std::make_unique<ConstReward>(v, drop);
          }).ok());
  return r;
}

RewardSet MakeSet(const std::string& text, const RewardRegistry& registry) {
  auto config = RewardSetConfig::FromJson(nlohmann::json::parse(text));
  INFO(text << ": " << config.status().ToString());
  REQUIRE(config.ok());
  auto set = RewardSet::Create(*config, registry);
  INFO(set.status().ToString());
  REQUIRE(set.ok());
  return std::move(*set);
}

std::string ConfigError(const std::string& text) {
  auto config = RewardSetConfig::FromJson(nlohmann::json::parse(text));
  INFO(text);
  REQUIRE_FALSE(config.ok());
  return std::string(config.status().message());
}

RewardInput Item(const std::string& data_source, const std::string& completion = "ok") {
  RewardInput in;
  in.data_source = data_source;
  in.completion = completion;
  return in;
}

TEST_CASE("reward config validation names the field", "[rewards]") {
  CHECK(ConfigError(R"({"rewards":[{"name":"const"}],"failure":0})").find("unknown field 'failure'") !=
        std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const","wieght":2}]})")
            .find("unknown field 'wieght' in rewards[0]") != std::string::npos);
  CHECK(ConfigError(R"({"rewards":[]})").find("at least one reward") != std::string::npos);
  CHECK(ConfigError(R"({})").find("'rewards'") != std::string::npos);
  CHECK(ConfigError(R"([])").find("must be an object") != std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"weight":1}]})").find("rewards[0] needs 'name'") !=
        std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const","weight":"1"}]})")
            .find("rewards[0]: 'weight' must be a number") != std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const","data_sources":"gsm8k"}]})")
            .find("'data_sources' must be an array") != std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const","params":[1]}]})").find("'params' must be an object") !=
        std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const"},{"name":"const"}]})")
            .find("rewards[1]: key \"const\" is used twice") != std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const","key":"a/b"}]})").find("'key'") !=
        std::string::npos);
  CHECK(ConfigError(R"({"rewards":[{"name":"const"}],"failure_score":"x"})").find("'failure_score'") !=
        std::string::npos);

  RewardSetConfig c;
  c.rewards.push_back({"const", "const", std::numeric_limits<double>::infinity(), nullptr, {}});
  CHECK(c.Validate().message() == "rewards[0]: 'weight' must be finite");
  c.rewards[0].weight = 1;
  CHECK(c.Validate().ok());
  c.failure_score = std::numeric_limits<double>::quiet_NaN();
  CHECK_FALSE(c.Validate().ok());

  // Unknown function and bad params are errors at Create, naming the entry.
  const RewardRegistry registry = TestRegistry();
  auto unknown = RewardSet::Create(*RewardSetConfig::FromJson(
      nlohmann::json::parse(R"({"rewards":[{"name":"const"},{"name":"nope"}]})")), registry);
  REQUIRE_FALSE(unknown.ok());
  CHECK(std::string(unknown.status().message()).find("rewards[1] (nope): unknown reward function 'nope'") == 0);
  auto bad = RewardSet::Create(*RewardSetConfig::FromJson(
      nlohmann::json::parse(R"({"rewards":[{"name":"const","params":{"bad":1}}]})")), registry);
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()) == "rewards[0] (const): reward 'const' params: 'bad' field");
}

TEST_CASE("reward set routes by data_source and sums weighted scores", "[rewards]") {
  const RewardRegistry registry = TestRegistry();
  const RewardSet set = MakeSet(R"({"rewards":[
      {"name":"const","key":"a","weight":2,"params":{"value":1},"data_sources":["x"]},
      {"name":"const","key":"b","weight":-1,"params":{"value":3},"data_sources":["x","y"]},
      {"name":"const","key":"all","weight":0.5,"params":{"value":4}}],
      "failure_score":-7})", registry);
  const std::vector<RewardInput> batch = {Item("x"), Item("y"), Item("z"), Item("x", "fail")};
  const std::vector<RewardOutput> out = set.Score(batch);
  REQUIRE(out.size() == 4);
  // x: 2*1 - 1*3 + 0.5*4 = 1
  CHECK(out[0].error.empty());
  CHECK(out[0].score == 1.0);
  CHECK(out[0].components == std::map<std::string, double>{{"a", 1}, {"a/half", 0.5}, {"b", 3},
                                                           {"b/half", 1.5}, {"all", 4},
                                                           {"all/half", 2}});
  // y: -3 + 2 = -1; z: only "all" = 2
  CHECK(out[1].score == -1.0);
  CHECK(out[1].components.count("a") == 0);
  CHECK(out[2].score == 2.0);
  CHECK(out[2].components == std::map<std::string, double>{{"all", 4}, {"all/half", 2}});
  // An item error: failure_score, and the error names every function that failed.
  CHECK(out[3].score == -7.0);
  CHECK(out[3].error == "a: cannot score 'fail'; b: cannot score 'fail'; all: cannot score 'fail'");
}

TEST_CASE("reward set reports unrouted items and broken functions", "[rewards]") {
  const RewardRegistry registry = TestRegistry();
  const RewardSet set = MakeSet(
      R"({"rewards":[{"name":"const","data_sources":["x"]}],"failure_score":0.25})", registry);
  const std::vector<RewardOutput> out = set.Score(std::vector<RewardInput>{Item("x"), Item("q")});
  REQUIRE(out.size() == 2);
  CHECK(out[0].score == 1.0);
  CHECK(out[1].score == 0.25);
  CHECK(out[1].error == "no reward function for data_source \"q\"");
  CHECK(set.Score({}).empty());

  const RewardSet dropping = MakeSet(R"({"rewards":[{"name":"const","params":{"drop":true}}]})", registry);
  const std::vector<RewardOutput> d = dropping.Score(std::vector<RewardInput>{Item("x"), Item("x")});
  REQUIRE(d.size() == 2);
  CHECK(d[0].error == "const: returned 1 outputs for 2 inputs");
  CHECK(d[1].score == 0.0);
}

TEST_CASE("the example countdown config scores with the built-ins", "[rewards]") {
  auto json = nlohmann::json::parse(R"({"rewards":[
      {"name":"countdown","data_sources":["countdown"]},
      {"name":"format","weight":0.5,"params":{"mode":"lenient"},"data_sources":["countdown"]},
      {"name":"gsm8k","data_sources":["gsm8k"]}]})");
  auto config = RewardSetConfig::FromJson(json);
  REQUIRE(config.ok());
  auto set = RewardSet::Create(*config);
  REQUIRE(set.ok());
  RewardInput cd = Item("countdown", "<think>55+36=91</think>\n<answer>55 + 36 - 7 - 19</answer>");
  cd.ground_truth = {{"target", 65}, {"numbers", {19, 36, 55, 7}}};
  RewardInput gsm = Item("gsm8k", "#### 72");
  gsm.ground_truth = "72";
  RewardInput bad = Item("countdown", "<answer>1</answer>");  // no ground truth
  const std::vector<RewardOutput> out = set->Score(std::vector<RewardInput>{cd, gsm, bad});
  CHECK(out[0].score == 1.5);
  CHECK(out[0].components.at("countdown/correct") == 1.0);
  CHECK(out[0].components.at("format") == 1.0);
  CHECK(out[1].score == 1.0);
  CHECK(out[1].components.count("countdown") == 0);
  CHECK(out[2].score == 0.0);
  CHECK(out[2].error.rfind("countdown: countdown ground_truth must be", 0) == 0);
}

}  // namespace
}  // namespace grpo
