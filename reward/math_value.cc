// Exact-rational arithmetic with a floating-point fallback for the math reward
// (reward/math_value.h).
#include "reward/math_value.h"

#include <cmath>

#include "reward/math_reward.h"

namespace grpo::math_internal {
namespace {

i128 Gcd(i128 a, i128 b) {
  if (a < 0) a = -a;
  if (b < 0) b = -b;
  while (b != 0) {
    i128 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

}  // namespace

Scalar FromRational(i128 n, i128 d) {
  constexpr i128 kMin = static_cast<i128>(static_cast<unsigned __int128>(1) << 127);
  if (n == kMin || d == kMin || d == 0) {
    return Inexact(static_cast<long double>(n) / static_cast<long double>(d));
  }
  Scalar r;
  if (d < 0) {
    n = -n;
    d = -d;
  }
  i128 g = Gcd(n, d);
  if (g > 1) {
    n /= g;
    d /= g;
  }
  r.num = n;
  r.den = d;
  long double x = static_cast<long double>(n) / static_cast<long double>(d);
  for (long double& v : r.v) v = x;
  return r;
}

Scalar Inexact(long double x) {
  Scalar r;
  r.exact = false;
  for (long double& v : r.v) v = x;
  return r;
}

static void Merge(Scalar* r, const Scalar& a, const Scalar& b) {
  r->is_float = a.is_float || b.is_float;
  r->has_var = a.has_var || b.has_var;
}

Scalar DropPct(Scalar a) {
  if (!a.pct) return a;
  Scalar r = a;
  r.pct = false;
  if (a.exact && a.den <= (static_cast<i128>(1) << 100)) {
    r = FromRational(a.num, a.den * 100);
    r.is_float = a.is_float;
    r.has_var = a.has_var;
  }
  for (int k = 0; k < kNumPoints; ++k) r.v[k] = a.v[k] / 100;
  r.exact = a.exact && r.exact;
  return r;
}

Scalar Arith(Scalar a, Scalar b, Op op) {
  a = DropPct(a);
  b = DropPct(b);
  Scalar r;
  bool exact = a.exact && b.exact;
  if (exact) {
    i128 n = 0, d = 1, t1 = 0, t2 = 0;
    bool of = false;
    switch (op) {
      case Op::kAdd:
      case Op::kSub:
        of |= __builtin_mul_overflow(a.num, b.den, &t1);
        of |= __builtin_mul_overflow(b.num, a.den, &t2);
        if (op == Op::kSub) {
          of |= __builtin_sub_overflow(t1, t2, &n);  // -t2 would overflow for the minimum
        } else {
          of |= __builtin_add_overflow(t1, t2, &n);
        }
        of |= __builtin_mul_overflow(a.den, b.den, &d);
        break;
      case Op::kMul:
        of |= __builtin_mul_overflow(a.num, b.num, &n);
        of |= __builtin_mul_overflow(a.den, b.den, &d);
        break;
      case Op::kDiv:
        if (b.num == 0) {
          of = true;
          break;
        }
        of |= __builtin_mul_overflow(a.num, b.den, &n);
        of |= __builtin_mul_overflow(a.den, b.num, &d);
        break;
    }
    if (!of) r = FromRational(n, d);
    exact = !of;
  }
  r.exact = exact;
  for (int k = 0; k < kNumPoints; ++k) {
    long double x = a.v[k], y = b.v[k];
    r.v[k] = op == Op::kAdd ? x + y : op == Op::kSub ? x - y : op == Op::kMul ? x * y : x / y;
  }
  Merge(&r, a, b);
  return r;
}

Scalar Pow(Scalar a, Scalar b) {
  a = DropPct(a);
  b = DropPct(b);
  Scalar r;
  r.exact = false;
  if (a.exact && b.exact && b.den == 1 && b.num >= -kMaxExactExponent &&
      b.num <= kMaxExactExponent && !(a.num == 0 && b.num < 0)) {
    i128 e = b.num < 0 ? -b.num : b.num;
    i128 n = 1, d = 1, bn = a.num, bd = a.den;
    bool of = false;
    while (e > 0 && !of) {
      if (e & 1) {
        of |= __builtin_mul_overflow(n, bn, &n);
        of |= __builtin_mul_overflow(d, bd, &d);
      }
      e >>= 1;
      if (e > 0) {
        of |= __builtin_mul_overflow(bn, bn, &bn);
        of |= __builtin_mul_overflow(bd, bd, &bd);
      }
    }
    if (!of) r = b.num < 0 ? FromRational(d, n) : FromRational(n, d);
  }
  for (int k = 0; k < kNumPoints; ++k) r.v[k] = std::pow(a.v[k], b.v[k]);
  Merge(&r, a, b);
  return r;
}

static bool IsqrtExact(i128 x, i128* root) {
  if (x < 0) return false;
  long double g = std::sqrt(static_cast<long double>(x));
  i128 c = static_cast<i128>(g);
  for (i128 t = (c > 2 ? c - 2 : 0); t <= c + 2; ++t) {
    i128 sq;
    if (!__builtin_mul_overflow(t, t, &sq) && sq == x) {
      *root = t;
      return true;
    }
  }
  return false;
}

Scalar Sqrt(Scalar a) {
  a = DropPct(a);
  Scalar r;
  i128 rn = 0, rd = 0;
  if (a.exact && a.num < (static_cast<i128>(1) << 120) && IsqrtExact(a.num, &rn) &&
      IsqrtExact(a.den, &rd)) {
    r = FromRational(rn, rd);
  } else {
    r.exact = false;
  }
  for (int k = 0; k < kNumPoints; ++k) r.v[k] = std::sqrt(a.v[k]);
  r.is_float = a.is_float;
  r.has_var = a.has_var;
  return r;
}

// Parses normalized LaTeX. Every method returns nullopt on a syntax error or limit.
}  // namespace grpo::math_internal
