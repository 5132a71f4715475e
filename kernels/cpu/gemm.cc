#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "common/status.h"
#include "oneapi/dnnl/dnnl.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace grpo::cpu {
namespace {

template <typename Real>
inline Real At(const Real* X, bool trans, int64_t ld, int64_t r, int64_t c) {
  return trans ? X[c * ld + r] : X[r * ld + c];
}

template <typename Real>
void ScaleC(int64_t M, int64_t N, Real beta, Real* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    Real* row = C + i * ldc;
    if (beta == Real(0)) {
      std::fill(row, row + N, Real(0));
    } else if (beta != Real(1)) {
      for (int64_t j = 0; j < N; ++j) row[j] *= beta;
    }
  }
}

// Plain loop GEMM. Used for double, and for float when M is tiny (decode, GEMV-like shapes).
// For !trans_b the inner loop runs over contiguous rows of B (axpy form); for trans_b over
// contiguous rows of A and B (dot form); both vectorize.
template <typename Real>
void LoopGemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, Real alpha,
              const Real* A, int64_t lda, const Real* B, int64_t ldb, Real beta, Real* C,
              int64_t ldc) {
  ScaleC(M, N, beta, C, ldc);
  const bool parallel = !omp_in_parallel() && M * N * K > (1 << 15);
  if (trans_b) {
    // C[i,j] += alpha * sum_k op(A)[i,k] * B[j,k]: parallel over j (N is the large side for GEMV).
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t j = 0; j < N; ++j) {
      const Real* brow = B + j * ldb;
      for (int64_t i = 0; i < M; ++i) {
        Real acc = 0;
        if (!trans_a) {
          const Real* arow = A + i * lda;
          for (int64_t k = 0; k < K; ++k) acc += arow[k] * brow[k];
        } else {
          for (int64_t k = 0; k < K; ++k) acc += A[k * lda + i] * brow[k];
        }
        C[i * ldc + j] += alpha * acc;
      }
    }
  } else {
    // C[i,:] += alpha * op(A)[i,k] * B[k,:]: parallel over i, or over column blocks when M is tiny.
    const int64_t kColBlock = 256;
    const int64_t num_col_blocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t cb = 0; cb < num_col_blocks; ++cb) {
        const int64_t j0 = cb * kColBlock, j1 = std::min(N, j0 + kColBlock);
        Real* crow = C + i * ldc;
        for (int64_t k = 0; k < K; ++k) {
          const Real a = alpha * At(A, trans_a, lda, i, k);
          const Real* brow = B + k * ldb;
          for (int64_t j = j0; j < j1; ++j) crow[j] += a * brow[j];
        }
      }
    }
  }
}

// GCC 12 warns about an uninitialized temporary inside its own _mm512_reduce_add_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// dots[r] = <a, B[r, :]> for NJ rows of B (row stride ldb), K elements each.
template <int NJ>
inline void DotRows(const float* a, const float* B, int64_t ldb, int64_t K, float* dots) {
#if defined(__AVX512F__)
  __m512 acc[NJ];
  for (int r = 0; r < NJ; ++r) acc[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 av = _mm512_loadu_ps(a + k);
    for (int r = 0; r < NJ; ++r) acc[r] = _mm512_fmadd_ps(av, _mm512_loadu_ps(B + r * ldb + k), acc[r]);
  }
  if (k < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 av = _mm512_maskz_loadu_ps(mask, a + k);
    for (int r = 0; r < NJ; ++r) {
      acc[r] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, B + r * ldb + k), acc[r]);
    }
  }
  for (int r = 0; r < NJ; ++r) dots[r] = _mm512_reduce_add_ps(acc[r]);
#else
  for (int r = 0; r < NJ; ++r) {
    const float* b = B + r * ldb;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < K; ++k) s += a[k] * b[k];
    dots[r] = s;
  }
#endif
}

// Batch-invariant C (M, N) = alpha * A (M, K) @ B (N, K)^T + beta * C: every element is one
// 16-lane FMA chain over k (then the masked tail, then one lane reduction), exactly as in
// DotRows, whatever the blocking. Register block: kMr rows of A x kNr rows of B.
template <int kMr, int kNr>
inline void InvariantBlock(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K,
                           float alpha, float beta, float* C, int64_t ldc) {
#if defined(__AVX512F__)
  __m512 acc[kMr][kNr];
  for (int i = 0; i < kMr; ++i)
    for (int j = 0; j < kNr; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 b[kNr];
    for (int j = 0; j < kNr; ++j) b[j] = _mm512_loadu_ps(B + j * ldb + k);
    for (int i = 0; i < kMr; ++i) {
      const __m512 a = _mm512_loadu_ps(A + i * lda + k);
      for (int j = 0; j < kNr; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 b[kNr];
    for (int j = 0; j < kNr; ++j) b[j] = _mm512_maskz_loadu_ps(mask, B + j * ldb + k);
    for (int i = 0; i < kMr; ++i) {
      const __m512 a = _mm512_maskz_loadu_ps(mask, A + i * lda + k);
      for (int j = 0; j < kNr; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < kMr; ++i) {
    for (int j = 0; j < kNr; ++j) {
      const float d = _mm512_reduce_add_ps(acc[i][j]);
      float* c = C + i * ldc + j;
      *c = alpha * d + (beta == 0.0f ? 0.0f : beta * *c);
    }
  }
#else
  for (int i = 0; i < kMr; ++i) {
    for (int j = 0; j < kNr; ++j) {
      float d;
      DotRows<1>(A + i * lda, B + j * ldb, ldb, K, &d);
      float* c = C + i * ldc + j;
      *c = alpha * d + (beta == 0.0f ? 0.0f : beta * *c);
    }
  }
#endif
}

template <int kMr>
inline void InvariantRows(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K,
                          int64_t nj, float alpha, float beta, float* C, int64_t ldc) {
  int64_t j = 0;
  for (; j + 4 <= nj; j += 4) InvariantBlock<kMr, 4>(A, lda, B + j * ldb, ldb, K, alpha, beta, C + j, ldc);
  for (; j < nj; ++j) InvariantBlock<kMr, 1>(A, lda, B + j * ldb, ldb, K, alpha, beta, C + j, ldc);
}

void InvariantGemmNT(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  // Column blocks of B rows (kept in L2 while every row of A passes over them), row blocks of A.
  constexpr int64_t kCols = 64, kRows = 64;
  const int64_t num_cb = (N + kCols - 1) / kCols, num_rb = (M + kRows - 1) / kRows;
  const bool parallel = !omp_in_parallel() && M * N * K > (1 << 16);
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
  for (int64_t cb = 0; cb < num_cb; ++cb) {
    for (int64_t rb = 0; rb < num_rb; ++rb) {
      const int64_t j0 = cb * kCols, nj = std::min(kCols, N - j0);
      const int64_t i0 = rb * kRows, i1 = std::min(M, i0 + kRows);
      int64_t i = i0;
      for (; i + 4 <= i1; i += 4) {
        InvariantRows<4>(A + i * lda, lda, B + j0 * ldb, ldb, K, nj, alpha, beta, C + i * ldc + j0, ldc);
      }
      for (; i < i1; ++i) {
        InvariantRows<1>(A + i * lda, lda, B + j0 * ldb, ldb, K, nj, alpha, beta, C + i * ldc + j0, ldc);
      }
    }
  }
}

#pragma GCC diagnostic pop

thread_local bool t_batch_invariant = false;

// C (M, N) = alpha * A (M, K) @ B (N, K)^T + beta * C for small M (decode, tiny expert groups):
// B, the weight, is streamed from memory once; each block of 8 of its rows is reused from L1 for
// every row of A. This is the shape where a oneDNN call costs more than the work.
void SmallMGemmNT(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr int kRows = 8;
  const int64_t num_blocks = (N + kRows - 1) / kRows;
  const bool parallel = !omp_in_parallel() && M * N * K > (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const int64_t j0 = blk * kRows, nj = std::min<int64_t>(kRows, N - j0);
    const float* Bj = B + j0 * ldb;
    for (int64_t m = 0; m < M; ++m) {
      float dots[kRows];
      if (nj == kRows) {
        DotRows<kRows>(A + m * lda, Bj, ldb, K, dots);
      } else {
        for (int64_t r = 0; r < nj; ++r) DotRows<1>(A + m * lda, Bj + r * ldb, ldb, K, dots + r);
      }
      float* c = C + m * ldc + j0;
      for (int64_t r = 0; r < nj; ++r) c[r] = alpha * dots[r] + (beta == 0.0f ? 0.0f : beta * c[r]);
    }
  }
}

std::atomic<bool> g_stats_enabled{false};
GemmStats g_stats;  // written only outside parallel regions, from one thread at a time

class StatsScope {
 public:
  StatsScope(bool ta, bool tb, int64_t M, int64_t N, int64_t K)
      : active_(g_stats_enabled.load(std::memory_order_relaxed) && !omp_in_parallel()),
        layout_(ta * 2 + tb),
        flops_(2.0 * M * N * K) {
    if (active_) start_ = std::chrono::steady_clock::now();
  }
  ~StatsScope() {
    if (!active_) return;
    const double sec =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    g_stats.seconds += sec;
    g_stats.flops += flops_;
    g_stats.calls += 1;
    g_stats.layout_seconds[layout_] += sec;
    g_stats.layout_flops[layout_] += flops_;
  }

 private:
  bool active_;
  int layout_;
  double flops_;
  std::chrono::steady_clock::time_point start_;
};

// Below this many rows the oneDNN call costs more than the arithmetic (measured: decode shapes).
constexpr int64_t kSmallM = 4;
constexpr int64_t kSmallMNT = 16;

}  // namespace

template <>
void Gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  StatsScope stats(trans_a, trans_b, M, N, K);
  if (K == 0) {
    ScaleC(M, N, beta, C, ldc);
    return;
  }
  if (!trans_a && trans_b && t_batch_invariant) {
    InvariantGemmNT(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (!trans_a && trans_b && M <= kSmallMNT) {
    SmallMGemmNT(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (M <= kSmallM) {
    LoopGemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                B, ldb, beta, C, ldc);
  GRPO_CHECK_MSG(st == dnnl_success, "dnnl_sgemm failed");
}

template <>
void Gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  LoopGemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

BatchInvariantScope::BatchInvariantScope(bool on) : previous_(t_batch_invariant) {
  t_batch_invariant = previous_ || on;
}
BatchInvariantScope::~BatchInvariantScope() { t_batch_invariant = previous_; }
bool BatchInvariantEnabled() { return t_batch_invariant; }

void SetGemmStatsEnabled(bool enabled) { g_stats_enabled.store(enabled); }
GemmStats GetGemmStats() { return g_stats; }
void ResetGemmStats() { g_stats = GemmStats{}; }

template <typename Real>
void LinearForward(Real* y, const Real* x, const Real* W, const Real* b, int64_t T, int64_t in,
                   int64_t out) {
  Gemm<Real>(false, true, T, out, in, Real(1), x, in, W, in, Real(0), y, out);
  if (b != nullptr) {
#pragma omp parallel for schedule(static) if (T * out > 65536 && !omp_in_parallel())
    for (int64_t t = 0; t < T; ++t) {
      Real* row = y + t * out;
      for (int64_t o = 0; o < out; ++o) row[o] += b[o];
    }
  }
}

template <typename Real>
void LinearBackward(Real* dx, Real* dW, Real* db, const Real* dy, const Real* x, const Real* W,
                    int64_t T, int64_t in, int64_t out) {
  if (T == 0) return;
  if (dx != nullptr) Gemm<Real>(false, false, T, in, out, Real(1), dy, out, W, in, Real(1), dx, in);
  if (dW != nullptr) Gemm<Real>(true, false, out, in, T, Real(1), dy, out, x, in, Real(1), dW, in);
  if (db != nullptr) {
    for (int64_t t = 0; t < T; ++t) {
      const Real* row = dy + t * out;
      for (int64_t o = 0; o < out; ++o) db[o] += row[o];
    }
  }
}

template void LinearForward<float>(float*, const float*, const float*, const float*, int64_t,
                                   int64_t, int64_t);
template void LinearForward<double>(double*, const double*, const double*, const double*, int64_t,
                                    int64_t, int64_t);
template void LinearBackward<float>(float*, float*, float*, const float*, const float*,
                                    const float*, int64_t, int64_t, int64_t);
template void LinearBackward<double>(double*, double*, double*, const double*, const double*,
                                     const double*, int64_t, int64_t, int64_t);

}  // namespace grpo::cpu
