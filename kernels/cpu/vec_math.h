// Elementwise math for the CPU kernels that GCC auto-vectorizes. glibc's expf only vectorizes
// under -ffast-math, so float exp here is a Cephes-style range reduction + degree-6 polynomial
// (max error ~1 ulp on [-87, 88], the same class as the SLEEF u10 exp PyTorch's CPU kernels use).
// Double keeps std::exp: the fp64 path is the reference, not the fast path.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace grpo::cpu {

// exp(x) for float. Below ~-87.3 returns 0 (flushes the denormal range), above 88 returns +inf,
// NaN stays NaN. Branch-free so loops calling it vectorize.
inline float FastExpf(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 split in two so n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kMin = -87.3365447504f;  // ln(FLT_MIN): 2^n stays a normal number
  constexpr float kMax = 88.0f;            // keeps n <= 127
  constexpr float kRound = 12582912.0f;    // 1.5 * 2^23: adding it rounds to an integer
  float xc = x < kMin ? kMin : x;
  xc = xc > kMax ? kMax : xc;
  const float fn = (xc * kLog2e + kRound) - kRound;  // round(x / ln 2)
  float r = xc - fn * kLn2Hi;
  r = r - fn * kLn2Lo;  // |r| <= ln2 / 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;  // 2^n
  float out = y * std::bit_cast<float>(bits);
  out = x < kMin ? 0.0f : out;
  out = x > kMax ? std::numeric_limits<float>::infinity() : out;
  return out;
}

// Exp in the kernels' precision: the polynomial for float, std::exp for double.
template <typename Real>
inline Real VecExp(Real x);
template <>
inline float VecExp<float>(float x) {
  return FastExpf(x);
}
template <>
inline double VecExp<double>(double x) {
  return std::exp(x);
}

// max(x[0..n)), -inf when n == 0. Lane-parallel (lane l: the elements i = l mod kLanes of the
// full blocks, lane 0 also the tail, then the lanes in order), since a plain max reduction stays
// scalar without -ffast-math. GCC leaves even the lane form scalar, so float on AVX-512 spells it
// out: max_ps(a, b) is a > b ? a : b per lane, the very same selection.
template <typename Real>
inline Real RowMax(const Real* x, int64_t n) {
  constexpr int kLanes = 64 / sizeof(Real);
  Real lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<Real>::infinity();
  int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Real, float>) {
    __m512 acc = _mm512_loadu_ps(lanes);
    for (; i + kLanes <= n; i += kLanes) {
      // The masked form with every lane on: plain _mm512_max_ps trips GCC 12's
      // -Wmaybe-uninitialized on its internal undefined source.
      acc = _mm512_mask_max_ps(acc, static_cast<__mmask16>(0xFFFF), _mm512_loadu_ps(x + i), acc);
    }
    _mm512_storeu_ps(lanes, acc);
  }
#endif
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = x[i + l] > lanes[l] ? x[i + l] : lanes[l];
  }
  for (; i < n; ++i) lanes[0] = x[i] > lanes[0] ? x[i] : lanes[0];
  Real m = lanes[0];
  for (int l = 1; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

}  // namespace grpo::cpu
