// Synthetic RL tasks with exactly checkable answers: TinyZero-style Countdown and multi-digit
// arithmetic, as dataset rows (learner/dataset.h). The exact evaluator and the Countdown verifier
// live in reward/arith.h (reward owns reward logic). Generation is deterministic in the seed, and problem i depends only on (seed, i), so
// a larger n extends a smaller one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "reward/arith.h"

namespace grpo {

// ---- Countdown ----

struct CountdownConfig {
  int64_t n = 0;
  uint64_t seed = 0;
  int64_t min_count = 3;  // how many numbers a problem has, drawn uniformly in [min, max]
  int64_t max_count = 4;
  int64_t min_number = 1;  // each number uniform in [min_number, max_number]
  int64_t max_number = 99;
  int64_t max_target = 100;  // targets lie in [1, max_target]

  absl::Status Validate() const;
};

struct CountdownProblem {
  std::vector<int64_t> numbers;  // in the order shown to the model
  int64_t target = 0;
  std::string solution;  // an expression using every number once whose value is target
};

// Builds each problem from a random expression over all its numbers in which every intermediate
// value is a positive integer (subtraction keeps the larger operand first, division only when
// exact), retrying until the value lies in [1, max_target]; so every problem is solvable.
absl::StatusOr<std::vector<CountdownProblem>> GenerateCountdown(const CountdownConfig& config);

// TinyZero's question text (the part after "User: " in its base template), numbers written as a
// Python list: "Using the numbers [3, 5, 7], create an equation that equals 22. ...".
std::string CountdownQuestion(const std::vector<int64_t>& numbers, int64_t target);

// {"prompt": question, "ground_truth": {"target", "numbers"}, "data_source": "countdown",
//  "extra": {"solution": ...}}
nlohmann::json CountdownRow(const CountdownProblem& p);

// ---- Arithmetic ----

struct ArithConfig {
  int64_t n = 0;
  uint64_t seed = 0;
  int64_t digits = 3;      // operands have exactly this many digits (1: 0..9), 1..9
  std::string ops = "+-*";  // a non-empty subset of "+-*/"; "/" problems divide exactly

  absl::Status Validate() const;
};

struct ArithProblem {
  int64_t a = 0, b = 0;
  char op = '+';
  int64_t answer = 0;
};

absl::StatusOr<std::vector<ArithProblem>> GenerateArith(const ArithConfig& config);

// "What is 123 * 456?"
std::string ArithQuestion(const ArithProblem& p);

// {"prompt": question, "ground_truth": "56088", "data_source": "arith"}
nlohmann::json ArithRow(const ArithProblem& p);

}  // namespace grpo
