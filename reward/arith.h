// Exact arithmetic on model-written expressions (a bounded recursive-descent parser over checked
// rationals) and the TinyZero Countdown answer verifier built on it. Used by the countdown reward
// (reward/rule_rewards.h) and by the task generators' tests (learner/tasks.h). No eval, no floats.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace grpo {

// A reduced fraction, den > 0.
struct Rational {
  int64_t num = 0;
  int64_t den = 1;
  bool operator==(const Rational&) const = default;
};

// Bounds that keep parsing cheap whatever a model writes.
inline constexpr size_t kMaxExpressionChars = 1000;
inline constexpr int kMaxExpressionDepth = 64;     // parentheses and unary signs, nested
inline constexpr int kMaxLiteralDigits = 15;        // literals stay below 1e15

// Evaluates `expr` with exact rationals. Grammar: non-negative decimal integer literals (no leading
// zeros, as in Python 3), binary + - * /, unary + and -, parentheses, spaces/tabs; the usual
// precedence, left-associative. Not accepted: ** and // (Python's power and floor division),
// decimals, other characters. Errors: syntax, division by zero, a value past int64, the bounds
// above. `literals`, when given, receives every integer literal in order (also on eval errors).
absl::StatusOr<Rational> EvaluateArithmetic(std::string_view expr,
                                            std::vector<int64_t>* literals = nullptr);

enum class CountdownVerdict {
  kCorrect,            // uses exactly the numbers and equals the target
  kInvalidExpression,  // does not parse, or cannot be evaluated (e.g. division by zero)
  kWrongNumbers,       // parses, but its literals are not exactly the given numbers (a multiset)
  kWrongValue,         // right numbers, wrong value
};

struct CountdownCheck {
  CountdownVerdict verdict = CountdownVerdict::kInvalidExpression;
  std::string detail;  // why, for logs
};

// Checks a Countdown answer (TinyZero's rules, ALGORITHMS.md §8.4): each given number used exactly
// once and no other numbers, value equal to the target. Equality is exact (TinyZero compares floats
// with 1e-5). Checks run in the order parse, numbers, evaluation, value.
CountdownCheck VerifyCountdown(std::string_view expr, const std::vector<int64_t>& numbers,
                               int64_t target);

}  // namespace grpo
