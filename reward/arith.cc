// Exact rational expression evaluator and the Countdown verifier (see reward/arith.h).
#include "reward/arith.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {
namespace {

// ---- Checked rational arithmetic: every result is reduced, and overflow is an error ----

// INT64_MIN is excluded so that unary minus can never overflow.
bool Fits(__int128 x) { return x > INT64_MIN && x <= INT64_MAX; }

bool MakeRational(__int128 num, __int128 den, Rational* out) {
  if (den < 0) num = -num, den = -den;
  __int128 a = num < 0 ? -num : num, b = den;
  while (b != 0) a %= b, std::swap(a, b);
  if (a > 1) num /= a, den /= a;
  if (!Fits(num) || !Fits(den)) return false;
  *out = {static_cast<int64_t>(num), static_cast<int64_t>(den)};
  return true;
}

// Recursive-descent evaluator. A syntax error stops parsing; an evaluation error (division by
// zero, overflow) is remembered and parsing continues, so the literals are still all collected.
class Parser {
 public:
  Parser(std::string_view s, std::vector<int64_t>* literals) : s_(s), literals_(literals) {}

  // After Parse() failed: true for a syntax error or a bound, false for an evaluation error.
  bool syntax_error() const { return syntax_error_; }

  absl::StatusOr<Rational> Parse() {
    syntax_error_ = true;
    if (s_.size() > kMaxExpressionChars) {
      return absl::InvalidArgumentError(
          absl::StrCat("expression longer than ", kMaxExpressionChars, " characters"));
    }
    Rational v;
    RETURN_IF_ERROR(Expr(0, &v));
    SkipSpace();
    if (pos_ != s_.size()) return Error("unexpected character");
    syntax_error_ = false;
    if (!eval_error_.empty()) return absl::InvalidArgumentError(eval_error_);
    return v;
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what), " at offset ", pos_,
        pos_ < s_.size() ? absl::StrCat(" ('", std::string(1, s_[pos_]), "')") : " (end)"));
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t')) ++pos_;
  }
  char Peek() {
    SkipSpace();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  void EvalError(std::string msg) {
    if (eval_error_.empty()) eval_error_ = std::move(msg);
  }

  void Apply(char op, const Rational& a, const Rational& b, Rational* out) {
    if (!eval_error_.empty()) return;
    const __int128 an = a.num, ad = a.den, bn = b.num, bd = b.den;
    bool ok = true;
    switch (op) {
      case '+': ok = MakeRational(an * bd + bn * ad, ad * bd, out); break;
      case '-': ok = MakeRational(an * bd - bn * ad, ad * bd, out); break;
      case '*': ok = MakeRational(an * bn, ad * bd, out); break;
      case '/':
        if (bn == 0) return EvalError("division by zero");
        ok = MakeRational(an * bd, ad * bn, out);
        break;
    }
    if (!ok) EvalError("value too large");
  }

  absl::Status Expr(int depth, Rational* v) {
    RETURN_IF_ERROR(Term(depth, v));
    for (char op = Peek(); op == '+' || op == '-'; op = Peek()) {
      ++pos_;
      Rational rhs;
      RETURN_IF_ERROR(Term(depth, &rhs));
      Apply(op, *v, rhs, v);
    }
    return absl::OkStatus();
  }

  absl::Status Term(int depth, Rational* v) {
    RETURN_IF_ERROR(Unary(depth, v));
    for (char op = Peek(); op == '*' || op == '/'; op = Peek()) {
      ++pos_;
      Rational rhs;
      RETURN_IF_ERROR(Unary(depth, &rhs));
      Apply(op, *v, rhs, v);
    }
    return absl::OkStatus();
  }

  absl::Status Unary(int depth, Rational* v) {
    if (depth > kMaxExpressionDepth) return Error("expression nested too deeply");
    const char c = Peek();
    if (c == '+' || c == '-') {
      ++pos_;
      RETURN_IF_ERROR(Unary(depth + 1, v));
      if (c == '-') v->num = -v->num;  // |num| <= INT64_MAX, so negation cannot overflow
      return absl::OkStatus();
    }
    if (c == '(') {
      ++pos_;
      RETURN_IF_ERROR(Expr(depth + 1, v));
      if (Peek() != ')') return Error("expected ')'");
      ++pos_;
      return absl::OkStatus();
    }
    if (c < '0' || c > '9') return Error(c == '\0' ? "expected a number" : "expected a number or '('");
    const size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    const size_t len = pos_ - start;
    if (len > static_cast<size_t>(kMaxLiteralDigits)) {
      pos_ = start;
      return Error(absl::StrCat("number longer than ", kMaxLiteralDigits, " digits"));
    }
    if (len > 1 && s_[start] == '0') {
      pos_ = start;
      return Error("number with a leading zero");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') return Error("decimal numbers are not allowed");
    int64_t x = 0;
    for (size_t i = start; i < pos_; ++i) x = x * 10 + (s_[i] - '0');
    if (literals_ != nullptr) literals_->push_back(x);
    *v = {x, 1};
    return absl::OkStatus();
  }

  std::string_view s_;
  std::vector<int64_t>* literals_;
  size_t pos_ = 0;
  std::string eval_error_;
  bool syntax_error_ = false;
};

std::string NumberList(const std::vector<int64_t>& numbers) {
  std::string s = "[";
  for (size_t i = 0; i < numbers.size(); ++i) absl::StrAppend(&s, i ? ", " : "", numbers[i]);
  return s + "]";
}

}  // namespace

absl::StatusOr<Rational> EvaluateArithmetic(std::string_view expr, std::vector<int64_t>* literals) {
  if (literals != nullptr) literals->clear();
  return Parser(expr, literals).Parse();
}

CountdownCheck VerifyCountdown(std::string_view expr, const std::vector<int64_t>& numbers,
                               int64_t target) {
  std::vector<int64_t> literals;
  Parser parser(expr, &literals);
  absl::StatusOr<Rational> value = parser.Parse();
  if (!value.ok() && parser.syntax_error()) {
    return {CountdownVerdict::kInvalidExpression, std::string(value.status().message())};
  }
  std::vector<int64_t> want = numbers;
  std::sort(literals.begin(), literals.end());
  std::sort(want.begin(), want.end());
  if (literals != want) {
    return {CountdownVerdict::kWrongNumbers,
            absl::StrCat("uses ", NumberList(literals), ", expected ", NumberList(want))};
  }
  if (!value.ok()) {
    return {CountdownVerdict::kInvalidExpression, std::string(value.status().message())};
  }
  if (value->den != 1 || value->num != target) {
    return {CountdownVerdict::kWrongValue,
            absl::StrCat("equals ", value->num, value->den == 1 ? "" : absl::StrCat("/", value->den),
                         ", target ", target)};
  }
  return {CountdownVerdict::kCorrect, ""};
}

}  // namespace grpo
