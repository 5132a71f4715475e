// Tests for reward/arith.h: the exact expression evaluator and the Countdown verifier, including
// hostile input. (Moved from tests/learner/tasks_test.cc with the code; behaviour unchanged.)
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "reward/arith.h"

namespace grpo {
namespace {

Rational Eval(const std::string& expr) {
  auto v = EvaluateArithmetic(expr);
  INFO(expr << ": " << v.status().ToString());
  REQUIRE(v.ok());
  return *v;
}

std::string EvalError(const std::string& expr) {
  auto v = EvaluateArithmetic(expr);
  INFO(expr);
  REQUIRE_FALSE(v.ok());
  return std::string(v.status().message());
}

TEST_CASE("expressions evaluate exactly with the usual precedence", "[rewards][arith]") {
  CHECK(Eval("1 + 2 * 3") == Rational{7, 1});
  CHECK(Eval("(1 + 2) * 3") == Rational{9, 1});
  CHECK(Eval("8 - 3 - 2") == Rational{3, 1});    // left-associative
  CHECK(Eval("12 / 3 / 2") == Rational{2, 1});
  CHECK(Eval("1 / 3 + 1 / 6") == Rational{1, 2});  // exact, no rounding
  CHECK(Eval("7 / 2") == Rational{7, 2});
  CHECK(Eval("-3 + 5") == Rational{2, 1});
  CHECK(Eval("-(2 - 5) * +2") == Rational{6, 1});
  CHECK(Eval("\t( ( 4 ) )") == Rational{4, 1});
  CHECK(Eval("0") == Rational{0, 1});
  std::vector<int64_t> literals;
  REQUIRE(EvaluateArithmetic("(19 + 36) - 7 * 55", &literals).ok());
  CHECK(literals == std::vector<int64_t>{19, 36, 7, 55});
}

TEST_CASE("the evaluator rejects garbage and hostile input", "[rewards][arith]") {
  CHECK(EvalError("") == "expected a number at offset 0 (end)");
  CHECK(EvalError("2 ** 3").find("offset 3") != std::string::npos);  // Python power
  CHECK(EvalError("7 // 2").find("offset 3") != std::string::npos);  // floor division
  CHECK(EvalError("1.5 + 2").find("decimal") != std::string::npos);
  CHECK(EvalError("05 + 1").find("leading zero") != std::string::npos);
  CHECK(EvalError("(1 + 2").find("expected ')'") != std::string::npos);
  CHECK(EvalError("1 + 2)").find("unexpected character") != std::string::npos);
  CHECK(EvalError("1 + x").find("offset 4") != std::string::npos);
  CHECK(EvalError("__import__('os')").find("offset 0") != std::string::npos);
  CHECK(EvalError("1 = 1").find("unexpected character") != std::string::npos);
  CHECK(EvalError("3 / (2 - 2)") == "division by zero");
  CHECK(EvalError("1234567890123456").find("longer than 15 digits") != std::string::npos);
  CHECK(EvalError("999999999999999 * 999999999999999 * 999999999999999") == "value too large");
  CHECK(EvalError(std::string(kMaxExpressionChars + 1, '1')).find("longer than") !=
        std::string::npos);
  CHECK(EvalError(std::string(300, '(') + "1" + std::string(300, ')')).find("too deeply") !=
        std::string::npos);
  CHECK(EvalError(std::string(500, '-') + "1").find("too deeply") != std::string::npos);
}

TEST_CASE("VerifyCountdown follows TinyZero's rules exactly", "[rewards][arith]") {
  const std::vector<int64_t> nums = {19, 36, 55, 7};
  auto verdict = [&](const std::string& e, int64_t target = 65) {
    const CountdownCheck c = VerifyCountdown(e, nums, target);
    INFO(e << ": " << c.detail);
    return c.verdict;
  };
  CHECK(verdict("55 + 36 - 7 - 19") == CountdownVerdict::kCorrect);
  CHECK(verdict("(55 + 36) - (19 + 7)") == CountdownVerdict::kCorrect);
  CHECK(verdict("55 + 36 - 7 + 19") == CountdownVerdict::kWrongValue);
  CHECK(verdict("55 + 36 - 7 - 19 - 0") == CountdownVerdict::kWrongNumbers);  // an extra number
  CHECK(verdict("55 + 36 - 7") == CountdownVerdict::kWrongNumbers);           // a missing one
  CHECK(verdict("55 + 36 - 7 - 7") == CountdownVerdict::kWrongNumbers);       // a reused one
  CHECK(verdict("55 + 10 + 7 - 7") == CountdownVerdict::kWrongNumbers);
  CHECK(verdict("55 + 36 - 7 - 19 =") == CountdownVerdict::kInvalidExpression);
  CHECK(verdict("banana") == CountdownVerdict::kInvalidExpression);
  CHECK(verdict("") == CountdownVerdict::kInvalidExpression);
  CHECK(verdict("19 / (55 - 55) + 36 + 7") == CountdownVerdict::kWrongNumbers);
  CHECK(verdict("19 * 36 / (55 - 55 * 7 / 7)") == CountdownVerdict::kWrongNumbers);
  CHECK(verdict(std::string(2000, '1')) == CountdownVerdict::kInvalidExpression);
  // Division by zero with exactly the right numbers is an evaluation failure, not a wrong value.
  const std::vector<int64_t> pair = {3, 3};
  CHECK(VerifyCountdown("3 / (3 - 3)", {3, 3, 3}, 1).verdict == CountdownVerdict::kInvalidExpression);
  CHECK(VerifyCountdown("3 / 3", pair, 1).verdict == CountdownVerdict::kCorrect);
  // Exact: 1/3 * 3 is exactly 1, and a fraction is never an integer target.
  CHECK(VerifyCountdown("1 / 3 * 3", {1, 3, 3}, 1).verdict == CountdownVerdict::kCorrect);
  CHECK(VerifyCountdown("7 / 2", {7, 2}, 3).verdict == CountdownVerdict::kWrongValue);
  CHECK(VerifyCountdown("7 / 2", {7, 2}, 3).detail == "equals 7/2, target 3");
}

}  // namespace
}  // namespace grpo
