// Tests for learner/tasks.h: the Countdown / arithmetic generators (determinism, solvability,
// correct answers). The evaluator and verifier they use are tested in tests/reward/arith_test.cc.
#include <catch2/catch.hpp>

#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "learner/tasks.h"

namespace grpo {
namespace {

// An independent solvability check: combine any two remaining values with + - * / over exact
// fractions (negative and fractional intermediates allowed) until one value is left.
using Frac = std::pair<int64_t, int64_t>;  // (num, den), den > 0, reduced

Frac Reduce(int64_t n, int64_t d) {
  if (d < 0) n = -n, d = -d;
  const int64_t g = std::gcd(n, d);
  return {n / g, d / g};
}

bool Solvable(std::vector<Frac> vals, int64_t target) {
  if (vals.size() == 1) return vals[0] == Frac{target, 1};
  for (size_t i = 0; i < vals.size(); ++i) {
    for (size_t j = 0; j < vals.size(); ++j) {
      if (i == j) continue;
      const auto [an, ad] = vals[i];
      const auto [bn, bd] = vals[j];
      std::vector<Frac> options = {Reduce(an * bd + bn * ad, ad * bd),
                                   Reduce(an * bd - bn * ad, ad * bd), Reduce(an * bn, ad * bd)};
      if (bn != 0) options.push_back(Reduce(an * bd, ad * bn));
      std::vector<Frac> rest;
      for (size_t k = 0; k < vals.size(); ++k) {
        if (k != i && k != j) rest.push_back(vals[k]);
      }
      for (const Frac& f : options) {
        rest.push_back(f);
        if (Solvable(rest, target)) return true;
        rest.pop_back();
      }
    }
  }
  return false;
}

bool SolvableInts(const std::vector<int64_t>& numbers, int64_t target) {
  std::vector<Frac> vals;
  for (int64_t x : numbers) vals.push_back({x, 1});
  return Solvable(vals, target);
}

Rational Eval(const std::string& expr) {
  auto v = EvaluateArithmetic(expr);
  INFO(expr << ": " << v.status().ToString());
  REQUIRE(v.ok());
  return *v;
}

TEST_CASE("countdown problems are solvable, varied and deterministic per seed", "[tasks]") {
  CountdownConfig c;
  c.n = 300;
  c.seed = 1;
  auto a = GenerateCountdown(c);
  REQUIRE(a.ok());
  REQUIRE(a->size() == 300);
  std::set<int64_t> targets, counts;
  for (size_t i = 0; i < a->size(); ++i) {
    const CountdownProblem& p = (*a)[i];
    INFO("problem " << i << ": " << nlohmann::json(p.numbers).dump() << " -> " << p.target
                    << " via " << p.solution);
    REQUIRE((p.numbers.size() == 3 || p.numbers.size() == 4));
    for (int64_t x : p.numbers) REQUIRE((x >= 1 && x <= 99));
    REQUIRE((p.target >= 1 && p.target <= 100));
    const CountdownCheck check = VerifyCountdown(p.solution, p.numbers, p.target);
    INFO(check.detail);
    REQUIRE(check.verdict == CountdownVerdict::kCorrect);
    if (i < 40) REQUIRE(SolvableInts(p.numbers, p.target));  // independent of the generator
    targets.insert(p.target);
    counts.insert(static_cast<int64_t>(p.numbers.size()));
  }
  CHECK(targets.size() > 50);
  CHECK(counts.size() == 2);

  // Same seed, same problems; problem i depends only on (seed, i); another seed differs.
  c.n = 100;
  auto b = GenerateCountdown(c);
  REQUIRE(b.ok());
  for (size_t i = 0; i < b->size(); ++i) {
    CHECK(CountdownRow((*b)[i]) == CountdownRow((*a)[i]));
  }
  c.seed = 2;
  auto other = GenerateCountdown(c);
  REQUIRE(other.ok());
  int same = 0;
  for (size_t i = 0; i < other->size(); ++i) same += (*other)[i].numbers == (*a)[i].numbers;
  CHECK(same < 5);
}

TEST_CASE("the brute-force check can tell an unsolvable problem", "[tasks]") {
  CHECK_FALSE(SolvableInts({1, 1, 1}, 100));
  CHECK(SolvableInts({1, 2, 3}, 9));
  CHECK(SolvableInts({3, 3, 8, 8}, 24));  // needs a fraction: 8 / (3 - 8 / 3)
}

TEST_CASE("countdown rows and config validation", "[tasks]") {
  CountdownProblem p{{19, 36, 55, 7}, 65, "55 + 36 - 7 - 19"};
  const nlohmann::json row = CountdownRow(p);
  CHECK(row["prompt"] ==
        "Using the numbers [19, 36, 55, 7], create an equation that equals 65. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work "
        "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
        "example <answer> (1 + 2) / 3 </answer>.");
  CHECK(row["ground_truth"] == nlohmann::json::parse(R"({"target":65,"numbers":[19,36,55,7]})"));
  CHECK(row["data_source"] == "countdown");
  CHECK(row["extra"]["solution"] == "55 + 36 - 7 - 19");

  CountdownConfig c;
  CHECK_FALSE(c.Validate().ok());  // n = 0
  c.n = 1;
  CHECK(c.Validate().ok());
  c.min_count = 5;
  CHECK_FALSE(c.Validate().ok());  // min > max
  c = {};
  c.n = 1;
  c.max_target = 0;
  CHECK_FALSE(c.Validate().ok());
  // Impossible settings end with an error, not a hang: 2 numbers in [1, 1] reach only 1 and 2.
  c = {};
  c.n = 1;
  c.min_count = c.max_count = 2;
  c.min_number = c.max_number = 1;
  c.max_target = 1;
  auto ok = GenerateCountdown(c);
  REQUIRE(ok.ok());  // 1 * 1 = 1 or 1 / 1
  CHECK((*ok)[0].target == 1);
}

TEST_CASE("arith problems have correct answers and are deterministic", "[tasks]") {
  ArithConfig c;
  c.n = 400;
  c.seed = 5;
  c.digits = 4;
  c.ops = "+-*/";
  auto a = GenerateArith(c);
  REQUIRE(a.ok());
  std::set<char> ops;
  for (const ArithProblem& p : *a) {
    INFO(ArithQuestion(p) << " = " << p.answer);
    ops.insert(p.op);
    // The stored answer agrees with the independent evaluator on the question's expression.
    const std::string q = ArithQuestion(p);
    REQUIRE(q.rfind("What is ", 0) == 0);
    const Rational v = Eval(q.substr(8, q.size() - 9));
    CHECK(v == Rational{p.answer, 1});
    CHECK(ArithRow(p)["ground_truth"] == std::to_string(p.answer));
    CHECK(ArithRow(p)["data_source"] == "arith");
    if (p.op != '/') {
      CHECK((p.a >= 1000 && p.a <= 9999 && p.b >= 1000 && p.b <= 9999));
    } else {
      CHECK((p.answer >= 1000 && p.answer <= 9999 && p.b >= 1000));
    }
  }
  CHECK(ops.size() == 4);
  auto b = GenerateArith(c);
  REQUIRE(b.ok());
  for (size_t i = 0; i < a->size(); ++i) CHECK(ArithRow((*a)[i]) == ArithRow((*b)[i]));

  ArithProblem p{123, 456, '*', 56088};
  CHECK(ArithRow(p) == nlohmann::json::parse(
                           R"({"prompt":"What is 123 * 456?","ground_truth":"56088","data_source":"arith"})"));
  c.ops = "+x";
  CHECK_FALSE(c.Validate().ok());
  c.ops = "++";
  CHECK_FALSE(c.Validate().ok());
  c.ops = "+";
  c.digits = 10;
  CHECK_FALSE(c.Validate().ok());
}

}  // namespace
}  // namespace grpo
