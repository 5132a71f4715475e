// Tests for the built-in "math" reward (reward/math_reward.h): extraction, normalization, each
// equivalence kind, the RewardFunction contract, hostile inputs, and agreement with Math-Verify
// labels on tests/fixtures/reward/math_cases.jsonl (made by scripts/make_math_reward_fixtures.py).
#include "reward/math_reward.h"

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "nlohmann/json.hpp"
#include "reward/reward.h"

namespace grpo {
namespace {

std::string Extract(const std::string& s) { return ExtractFinalAnswer(s).value_or("<none>"); }

TEST_CASE("math extraction: boxed, tags, anchors, rightmost", "[math]") {
  CHECK(Extract("so \\boxed{3} then \\boxed{\\frac{1}{2}} done") == "3,\\frac{1}{2}");  // all boxes
  CHECK(Extract("so \\boxed{3} then \\boxed{3} done") == "3");
  CHECK(Extract("nested \\boxed{\\frac{a}{\\sqrt{b}}}.") == "\\frac{a}{\\sqrt{b}}");
  CHECK(Extract("$\\boxed 10$") == "10");
  CHECK(Extract("\\fbox{7}") == "7");
  CHECK(Extract("<answer>\n42\n</answer>") == "42");
  CHECK(Extract("<answer>The total is 12 apples</answer>") == "12");
  CHECK(Extract("<answer>x+1</answer>") == "x+1");
  CHECK(Extract("First 3, then 5. Answer: 17. Check: 3+14 ok") == "17");
  CHECK(Extract("We try 4. The answer is 9 apples.") == "9");
  CHECK(Extract("I got 3 then 5 apples.") == "5");
  CHECK(Extract("Thus $x = \\frac{3}{4}$.") == "x = \\frac{3}{4}");
  CHECK(Extract("The final answer is $8$. I hope it is correct.") == "8");
  CHECK(Extract("no digits here") == "<none>");
  CHECK(Extract("The answer is $12$.\n\nCheck: 3 + 4 = 7") == "12");  // '=' search stays on the line
  CHECK(Extract("The total is 1 234 apples") == "1234");
  CHECK(Extract("I get 1,5") == "1.5");  // decimal comma, as Math-Verify
  CHECK(Extract("Therefore, **7**.") == "7");
  CHECK(Extract("The answer is \\frac{9}{7}") == "\\frac{9}{7}");
  CHECK(Extract("unbalanced \\boxed{12") == "<none>");  // "{12" is no anchored number (as Math-Verify)
}

TEST_CASE("math normalization", "[math]") {
  CHECK(NormalizeMathAnswer("\\dfrac{1}{2}") == "\\frac{1}{2}");
  CHECK(NormalizeMathAnswer("\\left( 1, 2 \\right)") == "( 1, 2 )");
  CHECK(NormalizeMathAnswer("5\\text{ cm}") == "5");
  CHECK(NormalizeMathAnswer("12 square feet") == "12");
  CHECK(NormalizeMathAnswer("90^\\circ") == "90");
  CHECK(NormalizeMathAnswer("90\xc2\xb0") == "90");
  CHECK(NormalizeMathAnswer("1,000,000") == "1000000");
  CHECK(NormalizeMathAnswer("1,2,3") == "1,2,3");
  CHECK(NormalizeMathAnswer("\\$5.") == "5");
  CHECK(NormalizeMathAnswer("x = 5") == "5");
  CHECK(NormalizeMathAnswer("3\\!000") == "3 000");
  CHECK(NormalizeMathAnswer("\\mathrm{m}") == "m");
  CHECK(NormalizeMathAnswer("50\\%") == "50%");
}

TEST_CASE("math equivalence kinds", "[math]") {
  // Numbers, rationals, decimals rounded to 6 places.
  CHECK(MathAnswersEqual("\\frac{1}{2}", "0.5"));
  CHECK(MathAnswersEqual("\\frac12", "\\dfrac{1}{2}"));
  CHECK(MathAnswersEqual("\\frac{1}{3}", "0.333333"));
  CHECK_FALSE(MathAnswersEqual("\\frac{1}{3}", "0.3333"));
  CHECK_FALSE(MathAnswersEqual("\\frac{1}{3}", "\\frac{1}{4}"));
  CHECK_FALSE(MathAnswersEqual("5", "6"));
  CHECK(MathAnswersEqual("-3", "-3.0"));
  // Mixed numbers.
  CHECK(MathAnswersEqual("\\frac{5}{2}", "2\\frac{1}{2}"));
  CHECK(MathAnswersEqual("2.5", "2 1/2"));
  // Scientific notation.
  CHECK(MathAnswersEqual("1500", "1.5\\times10^{3}"));
  CHECK(MathAnswersEqual("1500", "1.5e3"));
  CHECK(MathAnswersEqual("0.00025", "2.5E-4"));
  CHECK_FALSE(MathAnswersEqual("1500", "1.5e4"));
  // Arithmetic, powers, roots, pi.
  CHECK(MathAnswersEqual("14", "2+3\\cdot4"));
  CHECK(MathAnswersEqual("8", "2^3"));
  CHECK(MathAnswersEqual("3", "\\sqrt{9}"));
  CHECK(MathAnswersEqual("2\\sqrt{3}", "\\sqrt{12}"));
  CHECK_FALSE(MathAnswersEqual("2\\sqrt{3}", "\\sqrt{13}"));
  CHECK(MathAnswersEqual("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}2"));
  CHECK(MathAnswersEqual("2\\pi", "\\pi\\cdot 2"));
  CHECK_FALSE(MathAnswersEqual("\\pi", "3.14"));
  // Percent, degrees, units, thousands, assignments.
  CHECK(MathAnswersEqual("50\\%", "50"));
  CHECK(MathAnswersEqual("50\\%", "0.5"));
  CHECK_FALSE(MathAnswersEqual("50\\%", "5"));
  CHECK(MathAnswersEqual("90", "90^\\circ"));
  CHECK(MathAnswersEqual("5", "5\\text{ cm}"));
  CHECK(MathAnswersEqual("1000", "1,000"));
  CHECK(MathAnswersEqual("5", "x = 5"));
  CHECK(MathAnswersEqual("x=5", "5"));
  // Tuples, intervals, sets.
  CHECK(MathAnswersEqual("(1,2)", "(1, 2)"));
  CHECK_FALSE(MathAnswersEqual("(1,2)", "(2,1)"));
  CHECK(MathAnswersEqual("[1,2)", "[1, 2)"));
  CHECK_FALSE(MathAnswersEqual("[1,2)", "(1,2)"));
  CHECK(MathAnswersEqual("(-\\infty, 3]", "(-\\infty,3]"));
  CHECK(MathAnswersEqual("1,2,3", "3,2,1"));
  CHECK(MathAnswersEqual("\\{1,2\\}", "\\{2,1\\}"));
  CHECK_FALSE(MathAnswersEqual("1,2,3", "1,2"));
  CHECK(MathAnswersEqual("(1,2,3)", "1,2,3"));  // set vs tuple: in written order
  CHECK_FALSE(MathAnswersEqual("(1,2,3)", "3,2,1"));
  CHECK_FALSE(MathAnswersEqual("[1,2]", "1,2"));
  CHECK(MathAnswersEqual("(-\\infty,-2)\\cup(3,\\infty)", "(3,\\infty) \\cup (-\\infty,-2)"));
  CHECK_FALSE(MathAnswersEqual("(-\\infty,-2)\\cup(3,\\infty)", "(-\\infty,-2)\\cup[3,\\infty)"));
  CHECK(MathAnswersEqual("3, -3", "\\pm 3"));
  CHECK(MathAnswersEqual("x \\in [0,1]", "[0,1]"));
  // Expressions with variables, evaluated at fixed points.
  CHECK(MathAnswersEqual("2x+1", "1+2x"));
  CHECK(MathAnswersEqual("x^2-1", "(x-1)(x+1)"));
  CHECK_FALSE(MathAnswersEqual("x^2-1", "(x-1)^2"));
  CHECK_FALSE(MathAnswersEqual("2x", "2y"));
}

TEST_CASE("math hostile inputs return quickly", "[math]") {
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(MathAnswersEqual("1", "10^{100000}"));
  CHECK(MathAnswersEqual("10^{100000}", "10^{100000}"));
  CHECK_FALSE(MathAnswersEqual("1", "2^{2^{2^{2^{2^{2^{2}}}}}}"));
  CHECK_FALSE(MathAnswersEqual("1", "99999999999999999999999999999999999999999999999999"));
  std::string deep(10000, '{');
  deep += "1" + std::string(10000, '}');
  CHECK_FALSE(MathAnswersEqual("2", deep));
  CHECK(ExtractFinalAnswer("\\boxed" + deep).has_value());
  std::string nested = std::string(1500, '{') + "1" + std::string(1500, '}');  // under the size cap
  CHECK_FALSE(MathAnswersEqual("2", nested));
  std::string roots;
  for (int k = 0; k < 800; ++k) roots += "\\sqrt";
  CHECK_FALSE(MathAnswersEqual("2", roots + "{16}"));
  std::string parens(5000, '(');
  CHECK_FALSE(MathAnswersEqual("1", parens + "1" + std::string(5000, ')')));
  std::string big(1 << 20, 'a');
  big += " so \\boxed{7}";
  CHECK(Extract(big) == "7");
  std::string junk;
  for (int k = 0; k < (1 << 18); ++k) junk += "\\[ $$ answer: ";
  (void)ExtractFinalAnswer(junk);
  std::string digits(1 << 20, '9');
  (void)ExtractFinalAnswer(digits);
  CHECK_FALSE(MathAnswersEqual("1", digits));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("hostile inputs took " << secs << " s");
  CHECK(secs < 5.0);
}

TEST_CASE("math reward function: params, components, errors", "[math]") {
  auto made = RewardRegistry::Global().Create("math", nlohmann::json::object());
  REQUIRE(made.ok());
  const RewardFunction& fn = **made;
  CHECK(fn.name() == "math");
  std::vector<RewardInput> batch(6);
  batch[0].completion = "so \\boxed{\\frac{1}{2}}";
  batch[0].ground_truth = "0.5";
  batch[1].completion = "so \\boxed{3}";
  batch[1].ground_truth = 4;
  batch[2].completion = "no answer here";
  batch[2].ground_truth = "4";
  batch[3].completion = "\\boxed{4}";
  batch[3].ground_truth = nlohmann::json::array({4});
  batch[4].completion = "\\boxed{4} \xff\xfe";
  batch[4].ground_truth = "4";
  batch[5].completion = "\\boxed{2.5}";
  batch[5].ground_truth = 2.5;
  auto out = fn.Score(batch);
  REQUIRE(out.size() == 6);
  CHECK(out[0].score == 1.0);
  CHECK(out[0].components.at("correct") == 1.0);
  CHECK(out[0].components.at("answer_found") == 1.0);
  CHECK(out[1].score == 0.0);
  CHECK(out[1].components.at("answer_found") == 1.0);
  CHECK(out[2].components.at("answer_found") == 0.0);
  CHECK(out[2].error.empty());
  CHECK_FALSE(out[3].error.empty());
  CHECK_FALSE(out[4].error.empty());
  CHECK(out[5].score == 1.0);

  auto custom = MakeMathReward({{"correct", 2.0}, {"wrong", -1.0}, {"no_answer", -2.0}});
  REQUIRE(custom.ok());
  auto out2 = (*custom)->Score(absl::MakeConstSpan(batch.data(), 3));
  CHECK(out2[0].score == 2.0);
  CHECK(out2[1].score == -1.0);
  CHECK(out2[2].score == -2.0);
  CHECK_FALSE(MakeMathReward({{"corect", 1.0}}).ok());
  CHECK_FALSE(MakeMathReward({{"correct", "yes"}}).ok());
  CHECK_FALSE(MakeMathReward(nlohmann::json::array()).ok());
}

TEST_CASE("math agreement with Math-Verify labels", "[math]") {
  std::ifstream in(std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/reward/math_cases.jsonl");
  REQUIRE(in.good());
  std::string line;
  int num_cases = 0, num_disagree = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto c = nlohmann::json::parse(line);
    ++num_cases;
    std::string gold = c.at("gold").get<std::string>();
    std::string completion = c.at("completion").get<std::string>();
    bool expected = c.at("expected").get<bool>();
    auto answer = ExtractFinalAnswer(completion);
    bool got = answer.has_value() && MathAnswersEqual(gold, *answer);
    if (got != expected) {
      ++num_disagree;
      WARN("disagreement: gold=" << gold << " extracted=" << answer.value_or("<none>")
                                 << " ours=" << got << " math_verify=" << expected
                                 << " completion=" << completion);
    }
  }
  WARN("math agreement: " << (num_cases - num_disagree) << "/" << num_cases << " ("
                          << num_disagree << " disagreements)");
  CHECK(num_cases >= 300);
  CHECK(num_disagree * 100 <= num_cases);
}

}  // namespace
}  // namespace grpo
