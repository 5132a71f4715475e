// Tests for reward/rule_rewards.h: the case tables in tests/fixtures/reward/ (made and checked
// against Python twins of TinyZero / verl by make_cases.py) must all match, plus params validation,
// item errors, the overlong formula, exact_match and regex_match.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "reward/reward.h"
#include "reward/rule_rewards.h"

namespace grpo {
namespace {

std::vector<nlohmann::json> ReadCases(const std::string& name) {
  const std::string path = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/reward/" + name;
  std::ifstream in(path);
  INFO(path);
  REQUIRE(in.good());
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

std::unique_ptr<RewardFunction> Make(const std::string& name, const nlohmann::json& params) {
  auto fn = RewardRegistry::Global().Create(name, params);
  INFO(name << " " << params.dump() << ": " << fn.status().ToString());
  REQUIRE(fn.ok());
  return std::move(*fn);
}

RewardOutput ScoreOne(const RewardFunction& fn, const RewardInput& in) {
  std::vector<RewardOutput> out = fn.Score({&in, 1});
  REQUIRE(out.size() == 1);
  return out[0];
}

RewardInput Input(const std::string& completion, nlohmann::json ground_truth = nullptr,
                  const std::string& prompt = "") {
  RewardInput in;
  in.completion = completion;
  in.ground_truth = std::move(ground_truth);
  in.prompt = prompt;
  return in;
}

// Every row of a case table: score == expected exactly (the scores are constants), no error.
void CheckTable(const std::string& function, const std::string& file) {
  const std::vector<nlohmann::json> rows = ReadCases(file);
  CHECK(rows.size() >= 30);
  int mismatches = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const nlohmann::json& row = rows[i];
    auto fn = Make(function, row.value("params", nlohmann::json()));
    RewardInput in = Input(row["completion"], row.value("ground_truth", nlohmann::json()),
                           row.value("prompt", std::string()));
    const RewardOutput out = ScoreOne(*fn, in);
    const double expected = row["expected"].get<double>();
    INFO(file << " row " << i << " (" << row["note"].get<std::string>() << "): got " << out.score
              << ", expected " << expected << "; info: " << out.info << "; error: " << out.error);
    CHECK(out.error.empty());
    CHECK(out.score == expected);
    mismatches += out.score != expected;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("countdown matches the TinyZero case table", "[rewards]") {
  CheckTable("countdown", "countdown_cases.jsonl");
}

TEST_CASE("format matches the R1-Zero case table", "[rewards]") {
  CheckTable("format", "format_cases.jsonl");
}

TEST_CASE("gsm8k matches the verl case table", "[rewards]") {
  CheckTable("gsm8k", "gsm8k_cases.jsonl");
}

TEST_CASE("countdown components and malformed ground truth", "[rewards]") {
  auto fn = Make("countdown", nullptr);
  const nlohmann::json gt = {{"target", 65}, {"numbers", {19, 36, 55, 7}}};
  RewardOutput ok = ScoreOne(*fn, Input("<answer>55 + 36 - 7 - 19</answer>", gt));
  CHECK(ok.score == 1.0);
  CHECK(ok.components == std::map<std::string, double>{{"has_answer", 1}, {"correct", 1}});
  RewardOutput wrong = ScoreOne(*fn, Input("<answer>55 + 36</answer>", gt));
  CHECK(wrong.score == 0.1);
  CHECK(wrong.components.at("correct") == 0);
  CHECK(wrong.info.find("expected [7, 19, 36, 55]") != std::string::npos);

  for (const nlohmann::json& bad :
       {nlohmann::json(nullptr), nlohmann::json("65"), nlohmann::json({{"target", 65}}),
        nlohmann::json({{"target", "65"}, {"numbers", {1}}}),
        nlohmann::json({{"target", 65}, {"numbers", 7}}),
        nlohmann::json({{"target", 65}, {"numbers", {1, "x"}}})}) {
    INFO(bad.dump());
    RewardOutput out = ScoreOne(*fn, Input("<answer>1</answer>", bad));
    CHECK(out.error.find("countdown ground_truth") != std::string::npos);
    CHECK(out.score == 0.0);
  }
  // Custom scores.
  auto custom = Make("countdown", {{"score", 2.0}, {"format_score", -0.5}});
  CHECK(ScoreOne(*custom, Input("<answer>55 + 36 - 7 - 19</answer>", gt)).score == 2.0);
  CHECK(ScoreOne(*custom, Input("<answer>1</answer>", gt)).score == -0.5);
  CHECK(ScoreOne(*custom, Input("nothing", gt)).score == 0.0);
}

TEST_CASE("answer extraction follows TinyZero and verl", "[rewards]") {
  CHECK(ExtractCountdownAnswer("", "<answer> 1+2 </answer>", false) == "1+2");
  CHECK(ExtractCountdownAnswer("", "<answer> 1+2 </answer>", true) == std::nullopt);
  CHECK(ExtractCountdownAnswer("x Assistant:", "<answer>1</answer>\n", false) == std::nullopt);
  // The first marker counts: a later one on the last line does not cut the line.
  CHECK(ExtractCountdownAnswer("Assistant:", "<answer>3</answer> Assistant: x", false) == "3");
  CHECK(ExtractGsm8kAnswer("#### 1,000,000", false) == "1000000");
  CHECK(ExtractGsm8kAnswer("no", false) == std::nullopt);
  CHECK(ExtractGsm8kAnswer("a 1 b 2 .", true) == "2");
  CHECK(ExtractGsm8kAnswer(". .", true) == ".");  // verl's loop ends on the first match
  CHECK(CountCodePoints("a\u00e9\u4e2d") == 3);
  CHECK(IsStrictR1Format("<think>a</think><answer>b</answer>"));
  CHECK_FALSE(IsStrictR1Format("<think>a</think>x<answer>b</answer>"));
  CHECK(IsLenientR1Format("x<think>a</think>x<answer>b</answer>x"));
}

TEST_CASE("gsm8k rejects a ground truth it cannot compare", "[rewards]") {
  auto fn = Make("gsm8k", nullptr);
  for (const nlohmann::json& bad : {nlohmann::json(nullptr), nlohmann::json(7.5),
                                    nlohmann::json::array({"7"})}) {
    RewardOutput out = ScoreOne(*fn, Input("#### 7", bad));
    CHECK(out.error.find("gsm8k ground_truth must be a string or an integer") != std::string::npos);
  }
  RewardOutput out = ScoreOne(*fn, Input("#### 7", "8"));
  CHECK(out.components == std::map<std::string, double>{{"has_answer", 1}, {"correct", 0}});
}

TEST_CASE("rule reward params are validated and errors name the field", "[rewards]") {
  auto error = [](const std::string& name, const nlohmann::json& params) {
    auto fn = RewardRegistry::Global().Create(name, params);
    REQUIRE_FALSE(fn.ok());
    return std::string(fn.status().message());
  };
  CHECK(error("format", {{"mode", "strict"}, {"bogus", 1}}).find("unknown field 'bogus'") !=
        std::string::npos);
  CHECK(error("format", {{"mode", "loose"}}).find("'mode' must be one of") != std::string::npos);
  CHECK(error("format", {{"score", "1"}}).find("'score' must be a number") != std::string::npos);
  CHECK(error("countdown", {{"format_scor", 0.1}}).find("'format_scor'") != std::string::npos);
  CHECK(error("countdown", {{"require_marker", 1}}).find("'require_marker' must be true or false") !=
        std::string::npos);
  CHECK(error("countdown", nlohmann::json::array()).find("must be an object") != std::string::npos);
  CHECK(error("gsm8k", {{"method", "fuzzy"}}).find("'method'") != std::string::npos);
  CHECK(error("exact_match", {{"lower", true}}).find("'lower'") != std::string::npos);
  CHECK(error("regex_match", nlohmann::json::object()).find("'pattern'") != std::string::npos);
  CHECK(error("regex_match", {{"pattern", "("}}).find("does not compile at offset 1") !=
        std::string::npos);
  CHECK(error("overlong", {{"max_length", 100}}).find("'cache_length'") != std::string::npos);
  CHECK(error("overlong", {{"max_length", 100}, {"cache_length", 200}})
            .find("'cache_length' must be in [1, max_length=100]") != std::string::npos);
  CHECK(error("overlong", {{"max_length", 100}, {"cache_length", 10}, {"unit", "bytes"}})
            .find("'unit'") != std::string::npos);
  CHECK(error("overlong", {{"max_length", 1.5}, {"cache_length", 1}}).find("'max_length' must be an integer") !=
        std::string::npos);
  // The registry adds the function's name.
  CHECK(error("format", {{"x", 1}}).rfind("reward 'format' params: ", 0) == 0);
}

TEST_CASE("overlong is DAPO's soft punishment", "[rewards]") {
  // L_max 20, L_cache 4: no penalty up to 16, linear to -1 at 20, -1 past it.
  CHECK(SoftOverlongPenalty(0, 20, 4, 1.0) == 0.0);
  CHECK(SoftOverlongPenalty(16, 20, 4, 1.0) == 0.0);
  CHECK(SoftOverlongPenalty(17, 20, 4, 1.0) == -0.25);
  CHECK(SoftOverlongPenalty(18, 20, 4, 1.0) == -0.5);
  CHECK(SoftOverlongPenalty(20, 20, 4, 1.0) == -1.0);
  CHECK(SoftOverlongPenalty(25, 20, 4, 1.0) == -1.0);
  CHECK(SoftOverlongPenalty(18, 20, 4, 0.5) == -0.25);
  // DAPO's constants: 18432 tokens is half-way into the 4096-token buffer.
  CHECK(SoftOverlongPenalty(18432, 20480, 4096, 1.0) == -0.5);

  auto tokens = Make("overlong", {{"max_length", 20}, {"cache_length", 4}});
  RewardInput in = Input("some text");
  in.completion_ids = std::vector<int32_t>(18, 1);
  RewardOutput out = ScoreOne(*tokens, in);
  CHECK(out.score == -0.5);
  CHECK(out.components.at("length") == 18);
  in.completion_ids.clear();
  CHECK(ScoreOne(*tokens, in).error.find("no completion_ids") != std::string::npos);
  CHECK(ScoreOne(*tokens, Input("")).score == 0.0);  // an empty completion has no ids

  auto chars = Make("overlong", {{"max_length", 20}, {"cache_length", 4}, {"unit", "chars"}});
  CHECK(ScoreOne(*chars, Input(std::string(17, 'x'))).score == -0.25);
  CHECK(ScoreOne(*chars, Input("\u00e9\u00e9\u00e9")).components.at("length") == 3);
  auto automatic = Make("overlong", {{"max_length", 20}, {"cache_length", 4}, {"unit", "auto"}});
  in.completion = std::string(20, 'x');
  CHECK(ScoreOne(*automatic, in).score == -1.0);  // no ids: 20 chars
  in.completion_ids = std::vector<int32_t>(3, 1);
  CHECK(ScoreOne(*automatic, in).score == 0.0);  // ids given: 3 tokens
}

TEST_CASE("exact_match normalizes as configured", "[rewards]") {
  auto plain = Make("exact_match", nullptr);
  CHECK(ScoreOne(*plain, Input("  Paris \n", "Paris")).score == 1.0);
  CHECK(ScoreOne(*plain, Input("paris", "Paris")).score == 0.0);
  CHECK(ScoreOne(*plain, Input("42", 42)).score == 1.0);
  CHECK(ScoreOne(*plain, Input("b", nlohmann::json::array({"a", "b"}))).score == 1.0);
  CHECK(ScoreOne(*plain, Input("c", nlohmann::json::array({"a", "b"}))).score == 0.0);
  CHECK_FALSE(ScoreOne(*plain, Input("c", nullptr)).error.empty());
  auto nostrip = Make("exact_match", {{"strip", false}});
  CHECK(ScoreOne(*nostrip, Input(" Paris", "Paris")).score == 0.0);
  auto lower = Make("exact_match", {{"lowercase", true}});
  CHECK(ScoreOne(*lower, Input("PARIS", "paris")).score == 1.0);
  auto tag = Make("exact_match", {{"extract", "answer_tag"}, {"fail_score", -1.0}});
  CHECK(ScoreOne(*tag, Input("<think>x</think><answer> Paris </answer>", "Paris")).score == 1.0);
  CHECK(ScoreOne(*tag, Input("<answer>Rome</answer><answer>Paris</answer>", "Paris")).score == 1.0);
  CHECK(ScoreOne(*tag, Input("Paris", "Paris")).score == -1.0);
}

TEST_CASE("regex_match finds patterns and bounds catastrophic ones", "[rewards]") {
  auto fn = Make("regex_match", {{"pattern", "\\\\boxed\\{\\d+\\}"}});
  CHECK(ScoreOne(*fn, Input("so \\boxed{42}.")).score == 1.0);
  CHECK(ScoreOne(*fn, Input("so \\boxed{x}.")).score == 0.0);
  CHECK(ScoreOne(*fn, Input(std::string("\xff\xfe \\boxed{1}", 13))).score == 1.0);  // bytes
  auto full = Make("regex_match", {{"pattern", "\\d+"}, {"full", true}, {"score", 0.5}});
  CHECK(ScoreOne(*full, Input("123")).score == 0.5);
  CHECK(ScoreOne(*full, Input("123 ")).score == 0.0);
  // (a+)+$ on "aaa…ab" backtracks exponentially; the match limit turns it into an item error.
  auto evil = Make("regex_match", {{"pattern", "^(a+)+$"}, {"match_limit", 100000}});
  RewardOutput out = ScoreOne(*evil, Input(std::string(40, 'a') + "b"));
  CHECK(out.error.find("regex_match: matching failed") != std::string::npos);
  CHECK(ScoreOne(*evil, Input("aaaa")).score == 1.0);
}

TEST_CASE("rule rewards score a batch in order", "[rewards]") {
  auto fn = Make("gsm8k", nullptr);
  std::vector<RewardInput> batch = {Input("#### 1", "1"), Input("#### 2", nullptr), Input("x", "3"),
                                    Input("#### 4", "4")};
  std::vector<RewardOutput> out = fn->Score(batch);
  REQUIRE(out.size() == 4);
  CHECK(out[0].score == 1.0);
  CHECK_FALSE(out[1].error.empty());
  CHECK(out[2].score == 0.0);
  CHECK(out[2].error.empty());
  CHECK(out[3].score == 1.0);
  const std::vector<std::string> names = RewardRegistry::Global().Names();
  for (const char* builtin :
       {"countdown", "exact_match", "format", "gsm8k", "overlong", "regex_match"}) {
    INFO(builtin);
    CHECK(std::find(names.begin(), names.end(), builtin) != names.end());
  }
}

}  // namespace
}  // namespace grpo
