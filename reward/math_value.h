// Numbers for the math reward's evaluator (internal to reward/): a real value held as an exact
// rational (__int128 numerator/denominator, falling back to long double on overflow) plus its
// value at three variable assignments, and the arithmetic on it. Used by math_eval.cc only.
#pragma once

#include <cstddef>
#include <vector>

namespace grpo::math_internal {

constexpr int kNumPoints = 3;   // variable assignments for expressions with variables
constexpr int kMaxDepth = 100;  // parser recursion
constexpr size_t kMaxElements = 64;
using i128 = __int128;

struct Scalar {
  bool exact = true;  // num/den hold the value exactly
  i128 num = 0, den = 1;
  long double v[kNumPoints] = {0, 0, 0};
  bool is_float = false;  // a decimal literal took part
  bool has_var = false;
  bool pct = false;  // written with a trailing %, value not yet divided by 100
};

struct Value {
  enum Kind { kScalar, kTuple, kSet, kUnion } kind = kScalar;
  Scalar s;
  std::vector<Value> elems;
  char open = 0, close = 0;  // brackets of a tuple/interval
};


Scalar FromRational(i128 n, i128 d);
Scalar Inexact(long double x);
Scalar DropPct(Scalar a);  // "50%" -> 1/2
enum class Op { kAdd, kSub, kMul, kDiv };
Scalar Arith(Scalar a, Scalar b, Op op);
Scalar Pow(Scalar a, Scalar b);  // exact for integer exponents up to kMaxExactExponent
Scalar Sqrt(Scalar a);           // exact for perfect squares

}  // namespace grpo::math_internal
