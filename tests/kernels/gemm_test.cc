// Gemm<float> (oneDNN, the small-M NT kernel and the loop path) and Gemm<double> against a naive
// double reference, for every transpose combination, odd sizes and each beta case.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/gemm.h"

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

}  // namespace
}  // namespace grpo::cpu
