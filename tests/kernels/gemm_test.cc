// Gemm<float> (oneDNN, the small-M NT kernel and the loop path) and Gemm<double> against a naive
// double reference, for every transpose combination, odd sizes and each beta case.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "rollout/weight_sync.h"

namespace grpo::cpu {
namespace {

template <typename Real>
void CheckGemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, double beta) {
  std::mt19937 rng(static_cast<unsigned>(M * 131 + N * 7 + K));
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
  std::vector<Real> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc);
  for (auto& x : A) x = static_cast<Real>(u(rng));
  for (auto& x : B) x = static_cast<Real>(u(rng));
  for (auto& x : C) x = beta == 0 ? std::numeric_limits<Real>::quiet_NaN() : static_cast<Real>(u(rng));
  std::vector<double> ref(M * N);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        s += double(ta ? A[k * lda + i] : A[i * lda + k]) * double(tb ? B[j * ldb + k] : B[k * ldb + j]);
      }
      ref[i * N + j] = alpha * s + (beta == 0 ? 0.0 : beta * double(C[i * ldc + j]));
    }
  }
  Gemm<Real>(ta, tb, M, N, K, Real(alpha), A.data(), lda, B.data(), ldb, Real(beta), C.data(), ldc);
  // Each output is a K-term dot product of O(1) values: float error grows like sqrt(K) * 6e-8.
  const double tol = sizeof(Real) == 4 ? 1e-5 * std::sqrt(double(K) + 1) : 1e-12 * (K + 1);
  int64_t bad = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      const double got = C[i * ldc + j];
      if (!(std::abs(got - ref[i * N + j]) <= tol)) {
        if (++bad <= 3) UNSCOPED_INFO("C[" << i << "," << j << "] = " << got << ", want " << ref[i * N + j]);
      }
    }
  }
  INFO("ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K << " beta " << beta);
  CHECK(bad == 0);
}

TEST_CASE("Gemm matches a naive reference", "[gemm]") {
  const std::vector<std::array<int64_t, 3>> shapes = {
      {1, 1, 1}, {1, 37, 19}, {3, 70, 33}, {8, 33, 64}, {9, 17, 100}, {16, 40, 17},
      {17, 45, 31}, {64, 48, 80}, {5, 1, 300}};
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (const auto& s : shapes) {
        for (double beta : {0.0, 1.0, 0.5}) {
          CheckGemm<float>(ta, tb, s[0], s[1], s[2], 1.0, beta);
          CheckGemm<double>(ta, tb, s[0], s[1], s[2], 0.75, beta);
        }
      }
    }
  }
}

TEST_CASE("Linear forward and backward are consistent with Gemm", "[gemm]") {
  const int64_t T = 6, in = 5, out = 7;
  std::vector<double> x(T * in), W(out * in), b(out), dy(T * out);
  std::mt19937 rng(4);
  std::normal_distribution<double> n(0, 1);
  for (auto* v : {&x, &W, &b, &dy}) for (auto& e : *v) e = n(rng);
  std::vector<double> y(T * out);
  LinearForward<double>(y.data(), x.data(), W.data(), b.data(), T, in, out);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * W[o * in + i];
      CHECK(std::abs(y[t * out + o] - s) < 1e-12);
    }
  }
  // Backward accumulates: start from 1 and check the increments.
  std::vector<double> dx(T * in, 1.0), dW(out * in, 1.0), db(out, 1.0);
  LinearBackward<double>(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), T, in, out);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < in; ++i) {
      double s = 1;
      for (int64_t o = 0; o < out; ++o) s += dy[t * out + o] * W[o * in + i];
      CHECK(std::abs(dx[t * in + i] - s) < 1e-12);
    }
  }
  for (int64_t o = 0; o < out; ++o) {
    double sb = 1;
    for (int64_t t = 0; t < T; ++t) sb += dy[t * out + o];
    CHECK(std::abs(db[o] - sb) < 1e-12);
    for (int64_t i = 0; i < in; ++i) {
      double s = 1;
      for (int64_t t = 0; t < T; ++t) s += dy[t * out + o] * x[t * in + i];
      CHECK(std::abs(dW[o * in + i] - s) < 1e-12);
    }
  }
}

// Random floats rounded to bf16 (round to nearest even): what a bf16 checkpoint holds.
std::vector<float> RandomBf16(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.5f);
  std::vector<float> v(n);
  for (float& x : v) x = Bf16ToFloat(FloatToBf16(d(rng)));
  return v;
}

TEST_CASE("bf16-packed weights give the fp32 packed form's bits", "[gemm][batch_invariant]") {
  const std::vector<float> exact = RandomBf16(1000, 1);
  CHECK(IsBf16Exact(exact.data(), 1000));
  std::vector<float> one_off = exact;
  one_off[517] = std::nextafter(one_off[517], 1.0f);  // one element with low bits set
  CHECK(!IsBf16Exact(one_off.data(), 1000));
  if (!PackedWeightsSupported()) {
    WARN("SKIPPED: pre-packed weights need an AVX-512 build");
    return;
  }
  // N 16 (a router), 75 (a partial last panel), 1100 (many panels, prefetch past the end).
  for (const int64_t N : {16, 75, 1100}) {
    for (const int64_t K : {7, 37, 256}) {
      const std::vector<float> W = RandomBf16(N * K, static_cast<unsigned>(N + K));
      std::vector<float> packed(PackedWeightFloats(N, K));
      std::vector<uint16_t> packed16(PackedWeightFloats(N, K));
      PackWeight(W.data(), N, K, packed.data());
      PackWeightBf16(W.data(), N, K, packed16.data());
      for (const int64_t M : {1, 13, 250}) {
        const std::vector<float> x = RandomBf16(M * K, static_cast<unsigned>(M));
        const std::vector<float> b = RandomBf16(N, 9);
        std::vector<float> want(M * N, 1.0f), got(M * N, 7.0f), unpacked(M * N, 3.0f);
        PackedLinearForward(want.data(), x.data(), packed.data(), b.data(), M, K, N);
        PackedLinearForward(got.data(), x.data(), packed16.data(), b.data(), M, K, N);
        {
          BatchInvariantScope on(true);
          LinearForward<float>(unpacked.data(), x.data(), W.data(), b.data(), M, K, N);
        }
        INFO("N " << N << " K " << K << " M " << M);
        REQUIRE(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
        REQUIRE(std::memcmp(got.data(), unpacked.data(), want.size() * sizeof(float)) == 0);
      }
    }
  }
  // Grouped: groups of 13, 0, 1, 30 and 250 rows.
  const std::vector<int64_t> rows = {13, 0, 1, 30, 250};
  std::vector<int64_t> begin = {0};
  for (int64_t r : rows) begin.push_back(begin.back() + r);
  const int64_t G = static_cast<int64_t>(rows.size()), T = begin.back(), in = 96, out = 75;
  const std::vector<float> W = RandomBf16(G * out * in, 3), x = RandomBf16(T * in, 4);
  const int64_t stride = PackedWeightFloats(out, in);
  std::vector<float> packed(G * stride);
  std::vector<uint16_t> packed16(G * stride);
  for (int64_t g = 0; g < G; ++g) {
    PackWeight(W.data() + g * out * in, out, in, packed.data() + g * stride);
    PackWeightBf16(W.data() + g * out * in, out, in, packed16.data() + g * stride);
  }
  std::vector<float> want(T * out, 1.0f), got(T * out, 2.0f);
  PackedGroupedLinearForward(want.data(), x.data(), packed.data(), stride, begin.data(), G, in,
                             out);
  PackedGroupedLinearForward(got.data(), x.data(), packed16.data(), stride, begin.data(), G, in,
                             out);
  REQUIRE(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
}

}  // namespace
}  // namespace grpo::cpu
