// Countdown and arithmetic task generators (see tasks.h).
#include "learner/tasks.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "learner/random.h"

namespace grpo {
namespace {

std::string NumberList(const std::vector<int64_t>& numbers) {
  std::string s = "[";
  for (size_t i = 0; i < numbers.size(); ++i) absl::StrAppend(&s, i ? ", " : "", numbers[i]);
  return s + "]";
}

absl::Status CheckCount(int64_t n) {
  if (n < 1 || n > 100'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("n must be in [1, 100000000], got ", n));
  }
  return absl::OkStatus();
}

// One node of a Countdown construction: its value and its text (parenthesized unless a leaf).
struct Node {
  int64_t value;
  std::string text;
  bool leaf;
};

std::string Wrap(const Node& n) { return n.leaf ? n.text : absl::StrCat("(", n.text, ")"); }

// Tries `op` on (a, b), swapping for - and / when that makes the result a positive integer.
bool Combine(char op, const Node& a, const Node& b, Node* out) {
  const Node* x = &a;
  const Node* y = &b;
  int64_t v = 0;
  switch (op) {
    case '+':
      if (__builtin_add_overflow(x->value, y->value, &v)) return false;
      break;
    case '*':
      if (__builtin_mul_overflow(x->value, y->value, &v)) return false;
      break;
    case '-':
      if (x->value == y->value) return false;
      if (x->value < y->value) std::swap(x, y);
      v = x->value - y->value;
      break;
    case '/':
      if (x->value % y->value != 0) std::swap(x, y);
      if (x->value % y->value != 0) return false;
      v = x->value / y->value;
      break;
  }
  *out = {v, absl::StrCat(Wrap(*x), " ", std::string(1, op), " ", Wrap(*y)), false};
  return true;
}

}  // namespace

absl::Status CountdownConfig::Validate() const {
  RETURN_IF_ERROR(CheckCount(n));
  if (min_count < 2 || max_count > 8 || min_count > max_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown needs 2 <= min_count <= max_count <= 8, got ", min_count, "..", max_count));
  }
  if (min_number < 1 || max_number > 1'000'000 || min_number > max_number) {
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown needs 1 <= min_number <= max_number <= 1000000, got ", min_number, "..",
        max_number));
  }
  if (max_target < 1 || max_target > 1'000'000'000) {
    return absl::InvalidArgumentError(
        absl::StrCat("countdown max_target must be in [1, 1000000000], got ", max_target));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CountdownProblem>> GenerateCountdown(const CountdownConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  constexpr int kMaxAttempts = 100'000;
  constexpr char kOps[] = {'+', '-', '*', '/'};
  std::vector<CountdownProblem> problems;
  problems.reserve(config.n);
  for (int64_t i = 0; i < config.n; ++i) {
    SplitMix64 rng(config.seed, static_cast<uint64_t>(i));
    bool found = false;
    for (int attempt = 0; attempt < kMaxAttempts && !found; ++attempt) {
      const int64_t count = rng.Uniform(config.min_count, config.max_count);
      CountdownProblem p;
      std::vector<Node> pool;
      for (int64_t k = 0; k < count; ++k) {
        p.numbers.push_back(rng.Uniform(config.min_number, config.max_number));
        pool.push_back({p.numbers.back(), absl::StrCat(p.numbers.back()), true});
      }
      while (pool.size() > 1) {
        const size_t a = rng.Below(pool.size());
        size_t b = rng.Below(pool.size() - 1);
        if (b >= a) ++b;
        Node combined;
        // Ops in a random rotation; '+' always succeeds unless it overflows.
        const size_t first = rng.Below(4);
        bool ok = false;
        for (size_t k = 0; k < 4 && !ok; ++k) {
          ok = Combine(kOps[(first + k) % 4], pool[a], pool[b], &combined);
        }
        if (!ok) break;
        pool[std::min(a, b)] = std::move(combined);
        pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(std::max(a, b)));
      }
      if (pool.size() != 1 || pool[0].value < 1 || pool[0].value > config.max_target) continue;
      p.target = pool[0].value;
      p.solution = pool[0].text;
      problems.push_back(std::move(p));
      found = true;
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "countdown: no problem with a target in [1, ", config.max_target, "] found after ",
          kMaxAttempts, " attempts; raise max_target or lower the numbers"));
    }
  }
  return problems;
}

std::string CountdownQuestion(const std::vector<int64_t>& numbers, int64_t target) {
  return absl::StrCat(
      "Using the numbers ", NumberList(numbers), ", create an equation that equals ", target,
      ". You can use basic arithmetic operations (+, -, *, /) and each number can only be used "
      "once. Show your work in <think> </think> tags. And return the final answer in <answer> "
      "</answer> tags, for example <answer> (1 + 2) / 3 </answer>.");
}

nlohmann::json CountdownRow(const CountdownProblem& p) {
  return {{"prompt", CountdownQuestion(p.numbers, p.target)},
          {"ground_truth", {{"target", p.target}, {"numbers", p.numbers}}},
          {"data_source", "countdown"},
          {"extra", {{"solution", p.solution}}}};
}

absl::Status ArithConfig::Validate() const {
  RETURN_IF_ERROR(CheckCount(n));
  if (digits < 1 || digits > 9) {
    return absl::InvalidArgumentError(absl::StrCat("arith digits must be in [1, 9], got ", digits));
  }
  if (ops.empty()) return absl::InvalidArgumentError("arith ops is empty; use some of \"+-*/\"");
  for (size_t i = 0; i < ops.size(); ++i) {
    if (std::string_view("+-*/").find(ops[i]) == std::string_view::npos ||
        ops.find(ops[i]) != i) {
      return absl::InvalidArgumentError(absl::StrCat(
          "arith ops \"", ops, "\" must be distinct characters from \"+-*/\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ArithProblem>> GenerateArith(const ArithConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  int64_t hi = 1;
  for (int64_t d = 0; d < config.digits; ++d) hi *= 10;
  const int64_t lo = config.digits == 1 ? 0 : hi / 10;
  --hi;
  std::vector<ArithProblem> problems;
  problems.reserve(config.n);
  for (int64_t i = 0; i < config.n; ++i) {
    SplitMix64 rng(config.seed, static_cast<uint64_t>(i));
    ArithProblem p;
    p.op = config.ops[rng.Below(config.ops.size())];
    p.a = rng.Uniform(lo, hi);
    p.b = rng.Uniform(std::max<int64_t>(lo, p.op == '/' ? 1 : 0), hi);
    switch (p.op) {
      case '+': p.answer = p.a + p.b; break;
      case '-': p.answer = p.a - p.b; break;
      case '*': p.answer = p.a * p.b; break;
      case '/':  // a = quotient * b, so the division is exact and the answer has `digits` digits
        p.answer = p.a;
        p.a = p.answer * p.b;
        break;
    }
    problems.push_back(p);
  }
  return problems;
}

std::string ArithQuestion(const ArithProblem& p) {
  return absl::StrCat("What is ", p.a, " ", std::string(1, p.op), " ", p.b, "?");
}

nlohmann::json ArithRow(const ArithProblem& p) {
  return {{"prompt", ArithQuestion(p)},
          {"ground_truth", absl::StrCat(p.answer)},
          {"data_source", "arith"}};
}

}  // namespace grpo
