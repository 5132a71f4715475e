// Helpers for GPU tests: device upload/download, bf16 rounding, and the comparison metrics the
// tests state (normalized error for GEMMs and reductions, per-element tol + |ref|*rel, exact).
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "model/params.h"
#include "tests/model/tiny_models.h"

namespace grpo::testing {

template <typename T>
cuda::DeviceBuffer Upload(const std::vector<T>& v) {
  auto b = cuda::DeviceBuffer::Allocate(sizeof(T) * std::max<size_t>(v.size(), 1));
  REQUIRE(b.ok());
  REQUIRE(b->CopyFromHost(v.data(), sizeof(T) * v.size()).ok());
  return std::move(*b);
}
template <typename T>
cuda::DeviceBuffer Zeros(size_t n) {
  return Upload(std::vector<T>(n, T(0)));
}
template <typename T>
std::vector<T> Download(const cuda::DeviceBuffer& b, size_t n) {
  REQUIRE(cuda::Synchronize().ok());
  std::vector<T> v(n);
  REQUIRE(b.CopyToHost(v.data(), sizeof(T) * n).ok());
  return v;
}
inline std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = cuda::FloatToBf16(v[i]);
  return r;
}
inline std::vector<float> FromBf16(const std::vector<uint16_t>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = cuda::Bf16ToFloat(v[i]);
  return r;
}
// Values rounded to the nearest bf16 (what the GPU sees after the cast).
inline std::vector<float> RoundBf16(const std::vector<float>& v) { return FromBf16(ToBf16(v)); }

// RandomParams (tiny_models.h) with every non-norm tensor scaled by `spread` (norms stay near
// 1), rounded to bf16: weights the CPU and the GPU hold alike.
inline std::vector<float> ScaledBf16Params(const ParamLayout& layout, uint64_t seed, float spread) {
  std::vector<float> p = RandomParams(layout, seed);
  for (const ParamTensor& t : layout.tensors) {
    if (t.is_norm) continue;
    for (int64_t i = 0; i < t.numel; ++i) p[t.offset + i] *= spread;
  }
  return RoundBf16(p);
}

inline std::vector<float> Randn(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ||got - ref|| / ||ref||, after checking NaN/Inf parity and a non-zero reference.
template <typename A, typename B>
double NormErr(const std::string& what, const std::vector<A>& got, const std::vector<B>& ref) {
  REQUIRE(got.size() == ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (std::isfinite(g) != std::isfinite(r)) {
      FAIL(what << ": finiteness differs at " << i << ": got " << g << ", ref " << r);
    }
    if (!std::isfinite(r)) continue;
    num += (g - r) * (g - r);
    den += r * r;
  }
  INFO(what);
  REQUIRE(den > 0);
  const double e = std::sqrt(num / den);
  std::printf("  %-40s normalized error %.3g\n", what.c_str(), e);
  return e;
}

// Every element within abs + rel * |ref|; prints the first mismatches and the worst index.
template <typename A, typename B>
void CheckClose(const std::string& what, const std::vector<A>& got, const std::vector<B>& ref,
                double abs_tol, double rel_tol) {
  REQUIRE(got.size() == ref.size());
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (std::isnan(r) && std::isnan(g)) continue;
    if (std::isinf(r) && g == r) continue;
    const double tol = abs_tol + rel_tol * std::abs(r);
    const double err = std::abs(g - r);
    if (!(err <= tol)) {
      if (bad < 5) std::printf("  %s[%zu]: got %.8g ref %.8g\n", what.c_str(), i, g, r);
      ++bad;
    }
    if (!(err - tol <= worst_excess)) {
      worst_excess = err - tol;
      worst = i;
    }
  }
  INFO(what << ": " << bad << " of " << ref.size() << " outside " << abs_tol << " + " << rel_tol
            << "*|ref|; worst at " << worst << " (got " << double(got[worst]) << ", ref "
            << double(ref[worst]) << ")");
  CHECK(bad == 0);
}

}  // namespace grpo::testing
