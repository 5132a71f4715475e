// Held-out evaluation (learner/eval.h): the pass@k estimator on hand-computed cases, and Evaluate
// on the tiny learner fixture (a random Qwen3-MoE, one-digit arithmetic, a regex reward that a
// random policy hits about a third of the time): counts, summary consistent with the per-row
// records, greedy and seeded determinism, and errors that name the dataset line.
#include <catch2/catch.hpp>

#include <filesystem>
#include <memory>
#include <set>

#include "learner/eval.h"
#include "model/checkpoint.h"
#include "tests/learner/learner_fixture.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

TEST_CASE("pass@k matches hand-computed values", "[learner][eval]") {
  // 1 - C(n-c, k) / C(n, k).
  CHECK(PassAtK(4, 1, 2) == Approx(0.5).margin(1e-15));   // 1 - C(3,2)/C(4,2) = 1 - 3/6
  CHECK(PassAtK(4, 0, 2) == 0.0);
  CHECK(PassAtK(4, 4, 2) == 1.0);
  CHECK(PassAtK(5, 2, 2) == Approx(0.7).margin(1e-15));   // 1 - C(3,2)/C(5,2) = 1 - 3/10
  CHECK(PassAtK(8, 3, 1) == Approx(3.0 / 8).margin(1e-15));  // k = 1: the fraction correct
  CHECK(PassAtK(4, 2, 3) == 1.0);                          // fewer than k wrong
  CHECK(PassAtK(10, 1, 10) == 1.0);
  CHECK(PassAtK(10, 3, 4) == Approx(1.0 - 35.0 / 210).margin(1e-15));  // C(7,4)=35, C(10,4)=210

  CHECK(PassAtKValues(1) == std::vector<int64_t>{1});
  CHECK(PassAtKValues(4) == std::vector<int64_t>{1, 2, 4});
  CHECK(PassAtKValues(6) == std::vector<int64_t>{1, 2, 4, 6});
  CHECK(PassAtKValues(8) == std::vector<int64_t>{1, 2, 4, 8});
}

TEST_CASE("eval options: temperature defaults and range checks", "[learner][eval]") {
  EvalOptions o;
  CHECK(o.EffectiveTemperature() == 0.0);  // one sample: greedy
  o.samples = 4;
  CHECK(o.EffectiveTemperature() == 1.0);
  o.temperature = 0.7;
  CHECK(o.EffectiveTemperature() == 0.7);
  CHECK(o.Validate().ok());
  o.samples = 0;
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("eval.samples"));
  o.samples = 1;
  o.top_p = 0;
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("eval.top_p"));
  o.top_p = 1;
  o.temperature = -1;
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("eval.temperature"));
}

// The learner fixture's model, tokenizer, data, template and reward, loaded once per test.
struct EvalFixture {
  std::unique_ptr<Model<float>> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Dataset> dataset;
  std::unique_ptr<ChatTemplate> tmpl;
  std::unique_ptr<RewardSet> rewards;

  explicit EvalFixture(const std::string& name) {
    const std::string dir = (fs::temp_directory_path() / ("grpo_eval_test_" + name)).string();
    const nlohmann::json cfg = testing::MakeLearnerFixture(dir);
    auto m = LoadModel(cfg["model"].get<std::string>());
    REQUIRE(m.ok());
    model = std::move(*m);
    auto t = Tokenizer::FromFile((fs::path(cfg["model"].get<std::string>()) / "tokenizer.json").string());
    REQUIRE(t.ok());
    tokenizer = std::move(*t);
    DatasetConfig dc;
    dc.path = cfg["data"]["path"].get<std::string>();
    auto d = Dataset::Load(dc);
    REQUIRE(d.ok());
    dataset = std::make_unique<Dataset>(std::move(*d));
    auto tc = ChatTemplateConfigFromJson(cfg["chat_template"]);
    REQUIRE(tc.ok());
    auto ct = ChatTemplate::Create(*tc);
    REQUIRE(ct.ok());
    tmpl = std::make_unique<ChatTemplate>(std::move(*ct));
    auto rc = RewardSetConfig::FromJson(cfg["reward"]);
    REQUIRE(rc.ok());
    auto rs = RewardSet::Create(*rc);
    REQUIRE(rs.ok());
    rewards = std::make_unique<RewardSet>(std::move(*rs));
  }

  EvalResult Run(const EvalOptions& o) {
    auto r = Evaluate(*model, *tokenizer, *dataset, *tmpl, *rewards, o);
    INFO(r.status().message());
    REQUIRE(r.ok());
    return std::move(*r);
  }
};

std::vector<std::string> Texts(const EvalResult& r) {
  std::vector<std::string> t;
  for (const EvalRecord& rec : r.records) {
    for (const EvalCompletion& c : rec.completions) t.push_back(c.text);
  }
  return t;
}

TEST_CASE("Evaluate: counts and a summary consistent with the records", "[learner][eval]") {
  EvalFixture fx("summary");
  EvalOptions o;
  o.samples = 4;
  o.max_new_tokens = 6;
  o.limit = 8;
  o.seed = 11;
  const EvalResult r = fx.Run(o);
  REQUIRE(r.num_prompts == 8);
  REQUIRE(r.num_completions == 32);
  REQUIRE(r.samples == 4);
  REQUIRE(r.temperature == 1.0);
  REQUIRE(r.records.size() == 8);

  int64_t correct = 0, tokens = 0, truncated = 0, any_correct = 0;
  double reward = 0, pass1 = 0, pass2 = 0;
  for (size_t i = 0; i < r.records.size(); ++i) {
    const EvalRecord& rec = r.records[i];
    CHECK(rec.row_idx == static_cast<int64_t>(i));
    CHECK(rec.line == static_cast<int64_t>(i) + 1);
    CHECK(rec.prompt == fx.dataset->row(i).prompt.text() + " ");  // template "{prompt} "
    REQUIRE(rec.completions.size() == 4);
    int64_t c = 0;
    for (const EvalCompletion& comp : rec.completions) {
      CHECK(comp.correct == (comp.reward >= 1.0));
      CHECK(comp.num_tokens >= 1);
      CHECK(comp.num_tokens <= 6);
      CHECK(comp.components.count("regex_match") == 1);
      c += comp.correct ? 1 : 0;
      tokens += comp.num_tokens;
      reward += comp.reward;
      truncated += comp.finish_reason == FinishReason::kLength ? 1 : 0;
    }
    CHECK(rec.num_correct == c);
    correct += c;
    any_correct += c > 0 ? 1 : 0;
    pass1 += c / 4.0;
    pass2 += c == 0 ? 0.0 : (c >= 3 ? 1.0 : 1.0 - (4.0 - c) * (3.0 - c) / 12.0);  // 1 - C(4-c,2)/6
  }
  // The regex reward must split the completions, or the checks below would be vacuous.
  REQUIRE(correct > 0);
  REQUIRE(correct < 32);
  CHECK(r.accuracy == Approx(correct / 32.0).margin(1e-12));
  CHECK(r.mean_reward == Approx(reward / 32).margin(1e-12));
  CHECK(r.component_means.at("regex_match") == Approx(reward / 32).margin(1e-12));
  CHECK(r.mean_response_tokens == Approx(tokens / 32.0).margin(1e-12));
  CHECK(r.num_truncated == truncated);
  CHECK(r.num_reward_errors == 0);
  REQUIRE(r.pass_at_k.size() == 3);
  CHECK(r.pass_at_k[0].first == 1);
  CHECK(r.pass_at_k[0].second == Approx(pass1 / 8).margin(1e-12));
  CHECK(r.pass_at_k[0].second == Approx(r.accuracy).margin(1e-12));  // equal K for every prompt
  CHECK(r.pass_at_k[1].first == 2);
  CHECK(r.pass_at_k[1].second == Approx(pass2 / 8).margin(1e-12));
  CHECK(r.pass_at_k[2].first == 4);
  CHECK(r.pass_at_k[2].second == Approx(any_correct / 8.0).margin(1e-12));

  const nlohmann::json s = r.SummaryJson();
  CHECK(s["prompts"] == 8);
  CHECK(s["completions"] == 32);
  CHECK(s["pass_at_k"]["4"].get<double>() == r.pass_at_k[2].second);
  const nlohmann::json rec = r.records[0].ToJson();
  CHECK(rec["completions"].size() == 4);
  CHECK(rec["completions"][0]["error"].is_null());

  // A threshold every score meets makes every completion correct.
  o.correct_threshold = 0.0;
  const EvalResult all = fx.Run(o);
  CHECK(all.accuracy == 1.0);
  CHECK(all.pass_at_k[0].second == 1.0);
  CHECK(Texts(all) == Texts(r));  // the threshold does not change sampling
}

TEST_CASE("Evaluate: reproducible in the seed, greedy by default, rows independent of limit",
          "[learner][eval]") {
  EvalFixture fx("determinism");
  EvalOptions o;
  o.samples = 3;
  o.max_new_tokens = 5;
  o.limit = 6;
  o.seed = 7;
  const std::vector<std::string> a = Texts(fx.Run(o));
  CHECK(Texts(fx.Run(o)) == a);
  o.seed = 8;
  CHECK(Texts(fx.Run(o)) != a);

  // limit 3 reproduces the first three rows of limit 6: samples are keyed by the dataset row.
  o.seed = 7;
  o.limit = 3;
  const std::vector<std::string> b = Texts(fx.Run(o));
  REQUIRE(b.size() == 9);
  CHECK(std::vector<std::string>(a.begin(), a.begin() + 9) == b);

  // One sample, temperature unset: greedy, so the seed does not matter; forcing greedy with K
  // samples gives K equal completions.
  EvalOptions g;
  g.max_new_tokens = 5;
  g.limit = 4;
  g.seed = 1;
  const EvalResult g1 = fx.Run(g);
  CHECK(g1.temperature == 0.0);
  g.seed = 2;
  CHECK(Texts(fx.Run(g)) == Texts(g1));
  g.samples = 2;
  g.temperature = 0.0;
  const EvalResult g2 = fx.Run(g);
  for (size_t i = 0; i < g2.records.size(); ++i) {
    REQUIRE(g2.records[i].completions.size() == 2);
    CHECK(g2.records[i].completions[0].text == g2.records[i].completions[1].text);
    CHECK(g2.records[i].completions[0].text == g1.records[i].completions[0].text);
  }
}

TEST_CASE("Evaluate on a caller's engine equals the private-engine overload", "[learner][eval]") {
  EvalFixture fx("engine");
  EvalOptions o;
  o.samples = 2;
  o.max_new_tokens = 4;
  o.limit = 5;
  o.seed = 3;
  auto copy = Model<float>::Create(fx.model->config());
  REQUIRE(copy.ok());
  std::copy_n(fx.model->params(), fx.model->num_params(), (*copy)->params());
  EngineOptions eo;
  eo.kv_budget_bytes = int64_t{4} << 20;
  auto engine = Engine::Create(std::move(*copy), nullptr, eo);
  REQUIRE(engine.ok());
  auto r = Evaluate(**engine, *fx.tokenizer, *fx.dataset, *fx.tmpl, *fx.rewards, o);
  REQUIRE(r.ok());
  CHECK(Texts(*r) == Texts(fx.Run(o)));
}

TEST_CASE("Evaluate counts reward errors and scores them failure_score", "[learner][eval]") {
  EvalFixture fx("reward_errors");
  // A reward that takes no item of the dataset's data_source: every completion is an error.
  auto rc = RewardSetConfig::FromJson(
      {{"rewards", {{{"name", "regex_match"}, {"params", {{"pattern", "[0-9]"}}},
                     {"data_sources", {"no_such_source"}}}}},
       {"failure_score", -0.5}});
  REQUIRE(rc.ok());
  auto rs = RewardSet::Create(*rc);
  REQUIRE(rs.ok());
  EvalOptions o;
  o.samples = 2;
  o.max_new_tokens = 3;
  o.limit = 3;
  auto r = Evaluate(*fx.model, *fx.tokenizer, *fx.dataset, *fx.tmpl, *rs, o);
  REQUIRE(r.ok());
  CHECK(r->num_reward_errors == 6);
  CHECK(r->mean_reward == -0.5);
  CHECK(r->accuracy == 0.0);
  CHECK(r->component_means.empty());
  for (const EvalRecord& rec : r->records) {
    for (const EvalCompletion& c : rec.completions) CHECK_FALSE(c.error.empty());
  }
  CHECK_FALSE(r->records[0].ToJson()["completions"][0]["error"].is_null());
}

TEST_CASE("Evaluate errors name the option or the dataset line", "[learner][eval]") {
  EvalFixture fx("errors");
  EvalOptions o;
  o.samples = 0;
  auto r = Evaluate(*fx.model, *fx.tokenizer, *fx.dataset, *fx.tmpl, *fx.rewards, o);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("eval.samples"));

  o.samples = 1;
  o.max_new_tokens = 10000;  // beyond the fixture model's 128 positions
  r = Evaluate(*fx.model, *fx.tokenizer, *fx.dataset, *fx.tmpl, *fx.rewards, o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("line 1:"));
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("max_new_tokens"));

  // A template that cannot render a row names it.
  ChatTemplateConfig tc;
  tc.name = "custom";
  tc.custom = "{prompt}";
  auto ct = ChatTemplate::Create(tc);
  REQUIRE(ct.ok());
  std::vector<Example> rows = {fx.dataset->row(0)};
  rows[0].line = 42;
  o.source = "held_out.jsonl";
  rows[0].prompt = Prompt(std::vector<ChatMessage>{{"assistant", "hi"}});
  o.max_new_tokens = 4;
  auto engine_model = Model<float>::Create(fx.model->config());
  REQUIRE(engine_model.ok());
  EngineOptions eo;
  eo.kv_budget_bytes = int64_t{1} << 20;
  auto engine = Engine::Create(std::move(*engine_model), nullptr, eo);
  REQUIRE(engine.ok());
  r = Evaluate(**engine, *fx.tokenizer, rows, *ct, *fx.rewards, o);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("held_out.jsonl:42:"));
}

}  // namespace
}  // namespace grpo
