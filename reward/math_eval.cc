// Values and equivalence for the math reward (MathAnswersEqual; contract in
// reward/math_reward.h): a recursive-descent parser over normalized LaTeX that evaluates
// answers to exact rationals (__int128, falling back to long double on overflow) or, with
// variables, to their values at three fixed points; then a kind-aware comparison.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "reward/math_reward.h"
#include "reward/math_value.h"

namespace grpo {
namespace {

using namespace math_internal;  // NOLINT(build/namespaces): the evaluator's own number type

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::optional<Value> ParseTop() {
    // A union of intervals/sets: its parts, unordered.
    std::vector<size_t> cups;
    for (size_t p = s_.find("\\cup"); p != std::string_view::npos; p = s_.find("\\cup", p + 4))
      cups.push_back(p);
    if (!cups.empty() && cups.size() < kMaxElements) {
      Value u;
      u.kind = Value::kUnion;
      size_t b = 0;
      cups.push_back(s_.size());
      for (size_t p : cups) {
        auto part = Parser(s_.substr(b, p - b)).ParseTop();
        if (!part) return std::nullopt;
        u.elems.push_back(std::move(*part));
        b = p + 4;
      }
      return u;
    }
    std::optional<Value> v;
    if (Peek("\\{")) {
      v = ParseBracketed();
    } else {
      auto list = ParseList();
      if (!list) return std::nullopt;
      if (list->size() == 1) {
        v = std::move((*list)[0]);
      } else {
        Value set;
        set.kind = Value::kSet;
        set.elems = std::move(*list);
        v = std::move(set);
      }
    }
    SkipSpace();
    if (!v || i_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void SkipSpace() {
    while (i_ < s_.size() && s_[i_] == ' ') ++i_;
  }
  bool Peek(std::string_view t) {
    SkipSpace();
    return s_.compare(i_, t.size(), t) == 0;
  }
  bool PeekCmd(std::string_view cmd) {  // a \command not followed by a letter
    if (!Peek(cmd)) return false;
    size_t e = i_ + cmd.size();
    return e >= s_.size() || !std::isalpha(static_cast<unsigned char>(s_[e]));
  }
  bool Eat(std::string_view t) {
    if (!Peek(t)) return false;
    i_ += t.size();
    return true;
  }
  bool EatCmd(std::string_view cmd) {
    if (!PeekCmd(cmd)) return false;
    i_ += cmd.size();
    return true;
  }

  std::optional<std::vector<Value>> ParseList() {
    std::vector<Value> out;
    while (true) {
      auto v = ParseExpr();
      if (!v) return std::nullopt;
      out.push_back(std::move(*v));
      if (out.size() > kMaxElements) return std::nullopt;
      if (!Eat(",")) break;
    }
    return out;
  }

  // ( [ \{ groups: grouping, tuples, intervals and sets.
  std::optional<Value> ParseBracketed() {
    DepthGuard guard(&depth_);
    if (!guard.ok()) return std::nullopt;
    char open = 0;
    bool set = false;
    if (Eat("\\{")) {
      set = true;
    } else if (Eat("(")) {
      open = '(';
    } else if (Eat("[")) {
      open = '[';
    } else {
      return std::nullopt;
    }
    auto list = ParseList();
    if (!list) return std::nullopt;
    char close = 0;
    if (set) {
      if (!Eat("\\}")) return std::nullopt;
    } else if (Eat(")")) {
      close = ')';
    } else if (Eat("]")) {
      close = ']';
    } else {
      return std::nullopt;
    }
    Value v;
    if (set) {
      v.kind = Value::kSet;
      v.elems = std::move(*list);
      return v;
    }
    if (list->size() == 1) {
      if (open != '(' || close != ')') return std::nullopt;
      return std::move((*list)[0]);
    }
    v.kind = Value::kTuple;
    v.open = open;
    v.close = close;
    v.elems = std::move(*list);
    return v;
  }

  std::optional<Value> ParseExpr() {
    DepthGuard guard(&depth_);
    if (!guard.ok()) return std::nullopt;
    auto lhs = ParseTerm();
    while (lhs) {
      Op op;
      if (Eat("+")) {
        op = Op::kAdd;
      } else if (Eat("-")) {
        op = Op::kSub;
      } else {
        break;
      }
      auto rhs = ParseTerm();
      if (!rhs || !Both(*lhs, *rhs)) return std::nullopt;
      lhs->s = Arith(lhs->s, rhs->s, op);
    }
    return lhs;
  }

  static bool Both(const Value& a, const Value& b) {
    return a.kind == Value::kScalar && b.kind == Value::kScalar;
  }

  bool StartsPrimary() {
    SkipSpace();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '(' || c == '{' || c == '.') return true;
    if (Peek("\xcf\x80") || Peek("\xe2\x88\x9a")) return true;
    if (c == '\\') {
      for (std::string_view stop : {"\\cdot", "\\times", "\\div", "\\}", "\\{", "\\cup", "\\pm",
                                    "\\in"})
        if (Peek(stop)) return false;
      return true;
    }
    return false;
  }

  std::optional<Value> ParseTerm() {
    auto lhs = ParseUnary();
    while (lhs) {
      Op op = Op::kMul;
      if (Eat("*") || EatCmd("\\cdot") || EatCmd("\\times") || Eat("\xc3\x97")) {
        op = Op::kMul;
      } else if (Eat("/") || EatCmd("\\div") || Eat("\xc3\xb7")) {
        op = Op::kDiv;
      } else if (StartsPrimary()) {
        op = Op::kMul;  // implicit multiplication
      } else {
        break;
      }
      auto rhs = ParseUnary();
      if (!rhs || !Both(*lhs, *rhs)) return std::nullopt;
      lhs->s = Arith(lhs->s, rhs->s, op);
    }
    return lhs;
  }

  std::optional<Value> ParseUnary() {
    DepthGuard guard(&depth_);
    if (!guard.ok()) return std::nullopt;
    std::optional<Value> v;
    if (Eat("-")) {
      v = ParseUnary();
      if (v && v->kind == Value::kScalar) {
        bool pct = v->s.pct;
        v->s.pct = false;
        v->s = Arith(FromRational(0, 1), v->s, Op::kSub);
        v->s.pct = pct;
      } else {
        v = std::nullopt;
      }
    } else if (Eat("+")) {
      v = ParseUnary();
    } else {
      v = ParsePower();
    }
    return v;
  }

  std::optional<Value> ParsePower() {
    auto base = ParsePostfix();
    if (!base) return std::nullopt;
    if (Eat("^")) {
      std::optional<Value> e;
      if (Peek("{")) {
        e = ParseGroup();
      } else {
        e = ParseAtomChar();
        if (!e) e = ParseUnary();
      }
      if (!e || !Both(*base, *e)) return std::nullopt;
      base->s = Pow(base->s, e->s);
    }
    return base;
  }

  std::optional<Value> ParsePostfix() {
    auto v = ParsePrimary();
    if (v && v->kind == Value::kScalar && Eat("%")) v->s.pct = true;
    return v;
  }

  // {expr}
  std::optional<Value> ParseGroup() {
    if (!Eat("{")) return std::nullopt;
    auto v = ParseExpr();
    if (!v || !Eat("}")) return std::nullopt;
    return v;
  }

  // A \frac / \sqrt argument: {expr} or a single digit/letter ("\frac12").
  std::optional<Value> ParseArg() {
    if (Peek("{")) return ParseGroup();
    return ParseAtomChar();
  }

  std::optional<Value> ParseAtomChar() {
    SkipSpace();
    if (i_ >= s_.size()) return std::nullopt;
    char c = s_[i_];
    Value v;
    if (c >= '0' && c <= '9') {
      ++i_;
      v.s = FromRational(c - '0', 1);
      return v;
    }
    if (std::isalpha(static_cast<unsigned char>(c))) {
      ++i_;
      return Variable(std::string(1, c));
    }
    return std::nullopt;
  }

  Value Variable(const std::string& name) {
    Value v;
    if (name == "e") {
      v.s = Inexact(2.718281828459045235360287471352662498L);
      return v;
    }
    uint64_t h = 1469598103934665603ull;
    for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    v.s.exact = false;
    v.s.has_var = true;
    for (int k = 0; k < kNumPoints; ++k) {
      h = h * 6364136223846793005ull + 1442695040888963407ull;
      v.s.v[k] = 0.5L + static_cast<long double>(h >> 11) / static_cast<long double>(1ull << 53) * 2;
    }
    return v;
  }

  std::optional<Value> ParseNumber() {
    size_t b = i_;
    i128 n = 0, d = 1;
    bool any = false, of = false, is_float = false;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
      of |= __builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, s_[i_] - '0', &n);
      ++i_;
      any = true;
    }
    if (i_ + 1 < s_.size() && s_[i_] == '.' && std::isdigit(static_cast<unsigned char>(s_[i_ + 1]))) {
      ++i_;
      is_float = true;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        of |= __builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, s_[i_] - '0', &n) ||
              __builtin_mul_overflow(d, 10, &d);
        ++i_;
        any = true;
      }
    }
    if (!any) return std::nullopt;
    Value v;
    std::string text(s_.substr(b, i_ - b));
    v.s = of ? Inexact(std::strtold(text.c_str(), nullptr)) : FromRational(n, d);
    v.s.is_float = is_float;
    // Scientific notation 1.5e3 / 2E-4.
    size_t j = i_;
    if (j + 1 < s_.size() && (s_[j] == 'e' || s_[j] == 'E')) {
      size_t k = j + 1;
      bool neg = false;
      if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) neg = s_[k++] == '-';
      size_t eb = k;
      while (k < s_.size() && std::isdigit(static_cast<unsigned char>(s_[k])) && k - eb < 7) ++k;
      if (k > eb && (k >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[k])))) {
        long long e = std::stoll(std::string(s_.substr(eb, k - eb)));
        v.s = Arith(v.s, Pow(FromRational(10, 1), FromRational(neg ? -e : e, 1)), Op::kMul);
        v.s.is_float = true;
        i_ = k;
      }
    }
    // Mixed numbers: "2\frac{1}{2}" and "2 1/2" are 2 + 1/2.
    if (!is_float && !of && v.s.exact) {
      size_t save = i_;
      bool spaced = i_ < s_.size() && s_[i_] == ' ';
      if (!spaced && s_.compare(i_, 5, "\\frac") == 0) {
        i_ += 5;
        auto fr = ParseFracArgs();
        if (fr && fr->s.exact && fr->s.num > 0 && fr->s.num < fr->s.den && !fr->s.has_var) {
          v.s = Arith(v.s, fr->s, Op::kAdd);
          return v;
        }
        i_ = save;
      } else if (spaced) {
        size_t k = i_ + 1;
        size_t nb = k;
        while (k < s_.size() && std::isdigit(static_cast<unsigned char>(s_[k]))) ++k;
        size_t slash = k;
        size_t db = k + 1;
        size_t de = db;
        while (de < s_.size() && std::isdigit(static_cast<unsigned char>(s_[de]))) ++de;
        if (k > nb && slash < s_.size() && s_[slash] == '/' && de > db && de - db < 18 &&
            k - nb < 18 && (de == s_.size() || !std::isalnum(static_cast<unsigned char>(s_[de])))) {
          long long fn = std::stoll(std::string(s_.substr(nb, k - nb)));
          long long fd = std::stoll(std::string(s_.substr(db, de - db)));
          if (fn > 0 && fn < fd) {
            v.s = Arith(v.s, FromRational(fn, fd), Op::kAdd);
            i_ = de;
          }
        }
      }
    }
    return v;
  }

  std::optional<Value> ParseFracArgs() {
    auto num = ParseArg();
    if (!num) return std::nullopt;
    auto den = ParseArg();
    if (!den || !Both(*num, *den)) return std::nullopt;
    num->s = Arith(num->s, den->s, Op::kDiv);
    return num;
  }

  std::optional<Value> ParsePrimary() {
    DepthGuard guard(&depth_);  // \sqrt and other commands recurse through here
    if (!guard.ok()) return std::nullopt;
    SkipSpace();
    if (i_ >= s_.size()) return std::nullopt;
    char c = s_[i_];
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') return ParseNumber();
    if (c == '(' || c == '[' || Peek("\\{")) return ParseBracketed();
    if (c == '{') {
      ++i_;
      auto v = ParseExpr();
      if (!v || !Eat("}")) return std::nullopt;
      return v;
    }
    if (c == '|') {
      ++i_;
      auto v = ParseExpr();
      if (!v || !Eat("|") || v->kind != Value::kScalar) return std::nullopt;
      if (v->s.exact && v->s.num < 0) v->s.num = -v->s.num;
      for (long double& x : v->s.v) x = std::fabs(x);
      return v;
    }
    if (EatCmd("\\frac")) return ParseFracArgs();
    if (EatCmd("\\sqrt") || Eat("\xe2\x88\x9a")) {
      std::optional<Value> index;
      if (Eat("[")) {
        index = ParseExpr();
        if (!index || !Eat("]")) return std::nullopt;
      }
      auto arg = ParseArg();
      if (!arg) arg = ParsePrimary();
      if (!arg || arg->kind != Value::kScalar) return std::nullopt;
      if (!index) {
        arg->s = Sqrt(arg->s);
      } else {
        if (index->kind != Value::kScalar) return std::nullopt;
        arg->s = Pow(arg->s, Arith(FromRational(1, 1), index->s, Op::kDiv));
      }
      return arg;
    }
    if (EatCmd("\\pi") || Eat("\xcf\x80")) {
      Value v;
      v.s = Inexact(3.141592653589793238462643383279502884L);
      return v;
    }
    if (EatCmd("\\infty") || Eat("\xe2\x88\x9e")) {
      Value v;
      v.s = Inexact(INFINITY);
      return v;
    }
    if (c == '\\') {  // other commands (\alpha, \theta): variables
      size_t b = ++i_;
      while (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) ++i_;
      if (i_ == b) return std::nullopt;
      return Variable(std::string(s_.substr(b - 1, i_ - b + 1)));
    }
    if (std::isalpha(static_cast<unsigned char>(c))) {
      ++i_;
      std::string name(1, c);
      if (i_ + 1 < s_.size() && s_[i_] == '_') {  // x_1, x_{12}
        size_t b = i_;
        ++i_;
        if (s_[i_] == '{') {
          while (i_ < s_.size() && s_[i_] != '}') ++i_;
          if (i_ < s_.size()) ++i_;
        } else {
          ++i_;
        }
        name += std::string(s_.substr(b, i_ - b));
      }
      return Variable(name);
    }
    return std::nullopt;
  }

  std::string_view s_;
  size_t i_ = 0;
  // Counts nesting while a parse function runs (every return path); not ok() past kMaxDepth.
  class DepthGuard {
   public:
    explicit DepthGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~DepthGuard() { --*depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
    bool ok() const { return *depth_ <= kMaxDepth; }

   private:
    int* depth_;
  };
  int depth_ = 0;
};

bool Close(long double a, long double b, long double rel) {
  if (std::isnan(a) || std::isnan(b)) return false;
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= rel * std::max({1.0L, std::fabs(a), std::fabs(b)});
}

bool ScalarEqPlain(const Scalar& a, const Scalar& b) {
  if (a.has_var || b.has_var) {
    if (a.has_var != b.has_var) return false;
    for (int k = 0; k < kNumPoints; ++k)
      if (!Close(a.v[k], b.v[k], 1e-9L)) return false;
    return true;
  }
  long double x = a.v[0], y = b.v[0];
  if (a.is_float || b.is_float) {
    if (!std::isfinite(x) || !std::isfinite(y)) return x == y;
    if (std::fabs(x) < 1e8L && std::fabs(y) < 1e8L)
      return std::llround(x * 1e6L) == std::llround(y * 1e6L);
    return Close(x, y, 1e-15L);
  }
  if (a.exact && b.exact) return a.num == b.num && a.den == b.den;
  return Close(x, y, 1e-12L);
}

bool ScalarEq(const Scalar& a, const Scalar& b) {
  if (ScalarEqPlain(DropPct(a), DropPct(b))) return true;
  if (a.pct != b.pct) {  // "9\%" equals 9 when both are integers (Math-Verify).
    Scalar x = a, y = b;
    x.pct = y.pct = false;
    bool ints = x.exact && y.exact && x.den == 1 && y.den == 1 && !x.is_float && !y.is_float;
    return ints && x.num == y.num;
  }
  return false;
}

bool ValueEq(const Value& g, const Value& p) {
  if (g.kind == Value::kSet && g.elems.size() == 1) return ValueEq(g.elems[0], p);
  if (p.kind == Value::kSet && p.elems.size() == 1) return ValueEq(g, p.elems[0]);
  if (g.kind != p.kind) {
    // A set against a tuple or open interval: in written order (Math-Verify compares a
    // FiniteSet with a Tuple element-wise, and "(1,2)" is an open interval or a tuple).
    const Value* set = g.kind == Value::kSet ? &g : p.kind == Value::kSet ? &p : nullptr;
    const Value* tup = g.kind == Value::kTuple ? &g : p.kind == Value::kTuple ? &p : nullptr;
    if (set == nullptr || tup == nullptr || tup->open != '(' || tup->close != ')' ||
        set->elems.size() != tup->elems.size())
      return false;
    for (size_t k = 0; k < set->elems.size(); ++k)
      if (!ValueEq(set->elems[k], tup->elems[k])) return false;
    return true;
  }
  switch (g.kind) {
    case Value::kScalar:
      return ScalarEq(g.s, p.s);
    case Value::kTuple:
      if (g.open != p.open || g.close != p.close || g.elems.size() != p.elems.size()) return false;
      for (size_t k = 0; k < g.elems.size(); ++k)
        if (!ValueEq(g.elems[k], p.elems[k])) return false;
      return true;
    case Value::kUnion:
    case Value::kSet: {
      auto covered = [](const Value& a, const Value& b) {
        for (const Value& x : a.elems) {
          bool found = false;
          for (const Value& y : b.elems) found = found || ValueEq(x, y);
          if (!found) return false;
        }
        return true;
      };
      return covered(g, p) && covered(p, g);
    }
  }
  return false;
}

std::string NoSpaces(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c != ' ') out.push_back(c);
  return out;
}

}  // namespace

bool MathAnswersEqual(const std::string& gold, const std::string& predicted) {
  std::string g = NormalizeMathAnswer(gold);
  std::string p = NormalizeMathAnswer(predicted);
  if (!g.empty() && NoSpaces(g) == NoSpaces(p)) return true;
  if (g.size() > kMaxAnswerBytes || p.size() > kMaxAnswerBytes) return false;
  auto gv = Parser(g).ParseTop();
  auto pv = Parser(p).ParseTop();
  if (!gv || !pv) return false;
  return ValueEq(*gv, *pv);
}

}  // namespace grpo