#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/status.h"
#include "kernels/cpu/thread_runs.h"
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

// y (T, out) += b (out) per row; b may be null.
template <typename Real>
void AddBias(Real* y, const Real* b, int64_t T, int64_t out) {
  if (b == nullptr) return;
#pragma omp parallel for schedule(static) if (T * out > 65536 && !omp_in_parallel())
  for (int64_t t = 0; t < T; ++t) {
    Real* row = y + t * out;
    for (int64_t o = 0; o < out; ++o) row[o] += b[o];
  }
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
    for (int r = 0; r < NJ; ++r)
      acc[r] = _mm512_fmadd_ps(av, _mm512_loadu_ps(B + r * ldb + k), acc[r]);
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

#if !defined(__AVX512F__)
// Batch-invariant C (M, N) = alpha * A (M, K) @ B (N, K)^T + beta * C without AVX-512: every
// element is one DotRows<1> over k (one vectorized loop whose reduction order is fixed by the
// build), whatever the blocking. With AVX-512 the panel form below is used instead.
void InvariantGemmNT(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                     const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const bool parallel = !omp_in_parallel() && M * N * K > (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      float d;
      DotRows<1>(A + m * lda, B + n * ldb, ldb, K, &d);
      float* c = C + m * ldc + n;
      *c = alpha * d + (beta == 0.0f ? 0.0f : beta * *c);
    }
  }
}
#endif

#if defined(__AVX512F__)
// Outer-product form of the batch-invariant GEMM (the AVX-512 path): every C[m, n] is ONE
// sequential FMA chain c = fma(A[m,k], B[n,k], c) over k = 0..K-1 from c = 0, then alpha * c
// (+ beta * C). Nothing in that chain depends on M, on the row's position or on the threads, so
// it is batch-invariant like the dot form above, and it runs like a normal GEMM microkernel:
// B is packed per 32-column panel into (K, 32) rows, a block of kMr rows of A broadcasts one
// value per k into 2 x kMr accumulators.
constexpr int64_t kPanel = 32;

// o[c] = column c of the 16 x 16 block r (r[i] = row i): the standard unpack/shuffle transpose.
inline void Transpose16(__m512* r) {
  __m512 t[16], u[16];
  for (int p = 0; p < 8; ++p) {
    t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
    t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  // u[4g + c]: rows 4g..4g+3 at columns c, c+4, c+8, c+12 (one 128-bit lane each).
  for (int c = 0; c < 4; ++c) {
    const __m512 v = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 w = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 x = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 y = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_f32x4(v, x, 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(v, x, 0xdd);
    r[c + 4] = _mm512_shuffle_f32x4(w, y, 0x88);
    r[c + 12] = _mm512_shuffle_f32x4(w, y, 0xdd);
  }
}

// packed (K, 32) = B rows j0 .. j0+nj-1 (nj <= 32) transposed; missing columns are 0.
void PackPanel(const float* B, int64_t ldb, int64_t nj, int64_t K, float* packed) {
  for (int h = 0; h < 2; ++h) {  // 16 rows at a time: 16 read streams, not 32
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      const int64_t nk = std::min<int64_t>(16, K - k0);
      const __mmask16 kmask = static_cast<__mmask16>((1u << nk) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t row = h * 16 + i;
        r[i] = row < nj ? _mm512_maskz_loadu_ps(kmask, B + row * ldb + k0) : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int64_t kk = 0; kk < nk; ++kk)
        _mm512_storeu_ps(packed + (k0 + kk) * kPanel + h * 16, r[kk]);
    }
  }
}

// bf16 panels (PackWeightBf16): the (K, 32) panel at 2 bytes per element, row k as 16 32-bit
// words, word j holding column j's bf16 in its low half and column j + 16's in its high half: one
// 512-bit load then widens to both 16-column halves with one shift and one mask, exactly (a bf16
// is the high half of its float).
void PackPanelBf16(const float* B, int64_t ldb, int64_t nj, int64_t K, uint16_t* packed) {
  thread_local std::vector<float> tmp;
  if (static_cast<int64_t>(tmp.size()) < K * kPanel) tmp.resize(K * kPanel);
  PackPanel(B, ldb, nj, K, tmp.data());
  for (int64_t k = 0; k < K; ++k) {
    for (int j = 0; j < 16; ++j) {
      uint32_t lo, hi;
      std::memcpy(&lo, &tmp[k * kPanel + j], 4);
      std::memcpy(&hi, &tmp[k * kPanel + 16 + j], 4);
      GRPO_CHECK_MSG((lo & 0xFFFFu) == 0 && (hi & 0xFFFFu) == 0,
                     "PackWeightBf16: the weight is not exactly bf16 (check IsBf16Exact first)");
      packed[k * kPanel + 2 * j] = static_cast<uint16_t>(lo >> 16);
      packed[k * kPanel + 2 * j + 1] = static_cast<uint16_t>(hi >> 16);
    }
  }
}

// Rows of A per register block: 2 x kPanelRows accumulators, two B vectors and a broadcast fit in
// the 32 zmm registers.
constexpr int kPanelRows = 12;

// A run of M rows is cut into NumRowBlocks(M) = ceil(M / kPanelRows) register blocks of near-equal
// size (the first M % nb one row longer): 16 rows as 8 + 8, not 12 + 4, and 13 as 7 + 6, not
// 12 + 1 -- a short block keeps too few FMA chains in flight to cover their latency (decode's
// experts have ~16 rows each). Which block a row falls in never changes its arithmetic.
inline int64_t NumRowBlocks(int64_t M) { return (M + kPanelRows - 1) / kPanelRows; }
// Block b of a run of M rows: its first row (from the run's start) and its rows.
inline std::pair<int64_t, int64_t> RowBlockAt(int64_t M, int64_t b) {
  const int64_t nb = NumRowBlocks(M), base = M / nb, extra = M % nb;
  return {b * base + std::min(b, extra), base + (b < extra ? 1 : 0)};
}

// A given to the panel kernel is packed per register block: the block of r rows starting at row i
// of the run at Ap + i * K, laid out (K, r), so a register block's broadcast operands are
// contiguous behind one pointer (twelve row pointers would not fit in the general registers next
// to the loop's own). One block: dst (K, r) = the r <= kPanelRows rows at src (row stride lda),
// transposed 16 columns at a time; with `rows`, row i is src + rows[i] * lda instead (a gather).
void PackRowBlock(const float* src, int64_t lda, int64_t r, int64_t K, float* dst,
                  const int32_t* rows = nullptr) {
  const __mmask16 rmask = static_cast<__mmask16>((1u << r) - 1);
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int64_t nk = std::min<int64_t>(16, K - k0);
    const __mmask16 kmask = static_cast<__mmask16>((1u << nk) - 1);
    __m512 t[16];
    for (int i = 0; i < 16; ++i) {
      const float* row = src + (rows != nullptr ? rows[i < r ? i : 0] : i) * lda;
      t[i] = i < r ? _mm512_maskz_loadu_ps(kmask, row + k0) : _mm512_setzero_ps();
    }
    Transpose16(t);
    for (int64_t kk = 0; kk < nk; ++kk) _mm512_mask_storeu_ps(dst + (k0 + kk) * r, rmask, t[kk]);
  }
}

// Cache lines for a panel kernel to pull into L2 while it computes: `lines` lines from `at`.
struct Prefetch {
  const char* at = nullptr;
  int64_t lines = 0;
  // Block b's share of n blocks.
  Prefetch Share(int64_t b, int64_t n) const {
    const int64_t first = lines * b / n, last = lines * (b + 1) / n;
    return {at + 64 * first, last - first};
  }
};

// C (kMr rows, 32 columns under masks m0, m1) = alpha * the block (Ap, (K, kMr)) @ one packed
// (K, 32) panel + beta * C. The panel is fp32 (kBf16 false: PackWeight's layout, `packed` a
// float*) or bf16 (PackPanelBf16's layout, `packed` a uint16_t*), widened in registers; then
// `widened`, when not null, receives the fp32 panel for the row blocks after this one (PanelBlock
// decides when that pays). `prefetch`: cache lines to pull into L2 meanwhile, spread evenly over
// the K steps (PanelBlock gives each row block its share of the next panel: decode streams the
// weights from memory, and the first pass over a panel otherwise waits on each of its lines).
template <int kMr, bool kBf16>
inline void PanelRows(const float* Ap, const void* packed, int64_t K, float alpha, float beta,
                      float* C, int64_t ldc, __mmask16 m0, __mmask16 m1, Prefetch prefetch,
                      float* widened) {
  __m512 acc0[kMr], acc1[kMr];
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t pf_due = 0;
  for (int64_t k = 0; k < K; ++k) {
    // prefetch.lines cache lines spread evenly over the K steps.
    for (pf_due += prefetch.lines; pf_due >= K; pf_due -= K, prefetch.at += 64) {
      _mm_prefetch(prefetch.at, _MM_HINT_T1);
    }
    __m512 b0, b1;
    if constexpr (kBf16) {
      const __m512i w =
          _mm512_loadu_si512(static_cast<const uint16_t*>(packed) + k * kPanel);
      b0 = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      b1 = _mm512_castsi512_ps(_mm512_and_si512(w, high));
      if (widened != nullptr) {
        _mm512_storeu_ps(widened + k * kPanel, b0);
        _mm512_storeu_ps(widened + k * kPanel + 16, b1);
      }
    } else {
      b0 = _mm512_loadu_ps(static_cast<const float*>(packed) + k * kPanel);
      b1 = _mm512_loadu_ps(static_cast<const float*>(packed) + k * kPanel + 16);
    }
    const float* a = Ap + k * kMr;
#pragma GCC unroll 16
    for (int i = 0; i < kMr; ++i) {
      const __m512 av = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < kMr; ++i) {
    float* c = C + i * ldc;
    __m512 r0 = _mm512_mul_ps(va, acc0[i]), r1 = _mm512_mul_ps(va, acc1[i]);
    if (beta != 0.0f) {
      r0 = _mm512_add_ps(r0, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, c)));
      r1 = _mm512_add_ps(r1, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16)));
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + 16, m1, r1);
  }
}

// PanelRows for r <= kPanelRows rows (r a run-time value).
template <bool kBf16, int R = kPanelRows>
inline void PanelRowsN(int r, const float* Ap, const void* packed, int64_t K, float alpha,
                       float beta, float* C, int64_t ldc, __mmask16 m0, __mmask16 m1,
                       Prefetch prefetch, float* widened) {
  if constexpr (R > 0) {
    if (r == R) {
      PanelRows<R, kBf16>(Ap, packed, K, alpha, beta, C, ldc, m0, m1, prefetch, widened);
    } else {
      PanelRowsN<kBf16, R - 1>(r, Ap, packed, K, alpha, beta, C, ldc, m0, m1, prefetch, widened);
    }
  }
}

// C (M, nj <= 32) = alpha * A (M, K) @ panel + beta * C for one (K, 32) panel, A packed per
// register block (PackRowBlock); the panel is `packed` (fp32) or, if that is null, `packed16`
// (bf16, widened in registers). `next` (see PanelRows) is spread over the row blocks, so the
// memory stream runs for the whole panel, not in a burst during its first block.
void PanelBlock(int64_t M, int64_t nj, int64_t K, float alpha, const float* Ap,
                const float* packed, const uint16_t* packed16, float beta, float* C, int64_t ldc,
                Prefetch next) {
  const __mmask16 m0 = static_cast<__mmask16>(nj >= 16 ? 0xFFFF : (1u << nj) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(nj >= 32   ? 0xFFFF
                                              : nj <= 16 ? 0
                                                         : (1u << (nj - 16)) - 1);
  const int64_t nb = NumRowBlocks(M);
  int64_t b = 0;
  if (packed == nullptr && nb <= 2) {
    // Few blocks (decode's experts): each widens the bf16 panel itself, which stays in L1 at half
    // the fp32 size, rather than the second reading a widened copy back from L2.
    for (; b < nb; ++b) {
      const auto [i, r] = RowBlockAt(M, b);
      PanelRowsN<true>(static_cast<int>(r), Ap + i * K, packed16, K, alpha, beta, C + i * ldc,
                       ldc, m0, m1, next.Share(b, nb), nullptr);
    }
    return;
  }
  if (packed == nullptr) {  // more blocks (dense layers): widen once, into the thread's buffer
    thread_local std::vector<float> buf;
    if (static_cast<int64_t>(buf.size()) < K * kPanel) buf.resize(K * kPanel);
    float* widened = buf.data();
    const auto [i, r] = RowBlockAt(M, 0);
    PanelRowsN<true>(static_cast<int>(r), Ap + i * K, packed16, K, alpha, beta, C + i * ldc, ldc,
                     m0, m1, next.Share(0, nb), widened);
    packed = widened;
    b = 1;
  }
  for (; b < nb; ++b) {
    const auto [i, r] = RowBlockAt(M, b);
    PanelRowsN<false>(static_cast<int>(r), Ap + i * K, packed, K, alpha, beta, C + i * ldc, ldc,
                      m0, m1, next.Share(b, nb), nullptr);
  }
}

// Rows of A per task: a block of A (kPanelChunk x K) stays in L2 while the panels pass over it.
constexpr int64_t kPanelChunk = 20 * kPanelRows;

// The register blocks (first row, rows) of rows [first, first + M) taken kPanelChunk at a time,
// appended to *blocks: the order PackRowBlock fills and PanelBlock reads.
void AppendRowBlocks(int64_t first, int64_t M, std::vector<std::pair<int64_t, int64_t>>* blocks) {
  for (int64_t i0 = 0; i0 < M; i0 += kPanelChunk) {
    const int64_t mi = std::min(kPanelChunk, M - i0);
    for (int64_t b = 0; b < NumRowBlocks(mi); ++b) {
      const auto [i, r] = RowBlockAt(mi, b);
      blocks->emplace_back(first + i0 + i, r);
    }
  }
}

// A task's fp32 (K, 32) panel: `packed` itself, or B's rows 0 .. nj-1 packed into the thread's
// buffer. Null for a bf16 panel (`packed16`: PanelBlock widens it).
inline const float* TaskPanel(const float* packed, const uint16_t* packed16, const float* B,
                              int64_t ldb, int64_t nj, int64_t K) {
  if (packed != nullptr || packed16 != nullptr) return packed;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < K * kPanel) buf.resize(K * kPanel);
  PackPanel(B, ldb, nj, K, buf.data());
  return buf.data();
}

// What PanelBlock prefetches while it works on a panel: the prepacked panel at element offset
// `at` (fp32 or bf16, K rows of 32), or nothing if there is no prepacked weight.
inline Prefetch PrefetchPanel(const float* packed, const uint16_t* packed16, int64_t at,
                              int64_t K) {
  const int64_t lines = K * kPanel * (packed != nullptr ? 4 : 2) / 64;
  if (packed != nullptr) return {reinterpret_cast<const char*>(packed + at), lines};
  if (packed16 != nullptr) return {reinterpret_cast<const char*>(packed16 + at), lines};
  return {};
}

// The panel form for any N. B is packed per task (a 32-row slice of B, transposed); `prepacked`
// or `prepacked16`, when given, holds every panel already (PackWeight's or PackWeightBf16's
// layout) and nothing is packed.
void InvariantGemmNTPanels(int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                           int64_t lda, const float* B, int64_t ldb, const float* prepacked,
                           const uint16_t* prepacked16, float beta, float* C, int64_t ldc) {
  thread_local std::vector<float> apack;
  if (static_cast<int64_t>(apack.size()) < M * K) apack.resize(M * K);
  float* Ap = apack.data();  // thread_local: the workers must not look up their own
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first row, rows)
  AppendRowBlocks(0, M, &blocks);
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  const int64_t num_panels = (N + kPanel - 1) / kPanel;
  const int64_t num_chunks = (M + kPanelChunk - 1) / kPanelChunk;
  const int64_t num_tasks = num_panels * num_chunks;
  const bool parallel = !omp_in_parallel() && M * N * K > (1 << 16) && num_tasks > 1;
  // One parallel region: pack A's row blocks, then (after the barrier) the panels.
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < num_blocks; ++b) {
      const auto [i, r] = blocks[b];
      PackRowBlock(A + i * lda, lda, r, K, Ap + i * K);
    }
#pragma omp for schedule(static)
  for (int64_t t = 0; t < num_tasks; ++t) {
    // Chunk-major: consecutive tasks share a chunk of A.
    const int64_t ch = t / num_panels, p = t % num_panels;
    const int64_t j0 = p * kPanel, nj = std::min(kPanel, N - j0);
    const int64_t i0 = ch * kPanelChunk, mi = std::min(kPanelChunk, M - i0);
    const int64_t at = p * K * kPanel, next_at = at + K * kPanel;
    const bool last = p + 1 == num_panels;
    const float* panel =
        TaskPanel(prepacked != nullptr ? prepacked + at : nullptr,
                  prepacked16 != nullptr ? prepacked16 + at : nullptr,
                  B != nullptr ? B + j0 * ldb : nullptr, ldb, nj, K);
    const Prefetch next = last ? Prefetch{} : PrefetchPanel(prepacked, prepacked16, next_at, K);
    PanelBlock(mi, nj, K, alpha, Ap + i0 * K, panel,
               prepacked16 != nullptr ? prepacked16 + at : nullptr, beta, C + i0 * ldc + j0, ldc,
               next);
  }
  }
}
#endif

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
#if defined(__AVX512F__)
    // One form for every shape, so a row's arithmetic never depends on M.
    InvariantGemmNTPanels(M, N, K, alpha, A, lda, B, ldb, nullptr, nullptr, beta, C, ldc);
#else
    InvariantGemmNT(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
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
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
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
  AddBias(y, b, T, out);
}

namespace {

#if defined(__AVX512F__)
// The grouped product in the panel form: every (group, panel, chunk of rows) is one task, all in
// one parallel region (decode has a few rows per expert, and a region per expert costs more than
// its work). packed, when given: group g's panels at packed + g * packed_stride.
// x_rows, when given: grouped row r is x + x_rows[r] * in (PackedGroupedLinearForward's gather).
void PanelGroupedForward(float* y, const float* x, const int32_t* x_rows, const float* W,
                         int64_t w_stride, const float* packed, const uint16_t* packed16,
                         int64_t packed_stride, const int64_t* row_begin, int64_t num_groups,
                         int64_t in, int64_t out) {
  struct Task {
    int64_t g, p, i0, i1;
  };
  std::vector<Task> tasks;
  const int64_t num_panels = (out + kPanel - 1) / kPanel;
  int64_t work = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    for (int64_t i0 = row_begin[g]; i0 < row_begin[g + 1]; i0 += kPanelChunk) {
      const int64_t i1 = std::min(row_begin[g + 1], i0 + kPanelChunk);
      for (int64_t p = 0; p < num_panels; ++p) tasks.push_back({g, p, i0, i1});
      work += (i1 - i0) * out * in;
    }
  }
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  // cost[t]: the cost of tasks 0 .. t-1, a task counted as its rows plus kTaskCostRows for
  // streaming its panel (decode's few rows per expert make the panel's memory time matter).
  constexpr int64_t kTaskCostRows = 8;
  std::vector<int64_t> cost(num_tasks + 1, 0);
  for (int64_t t = 0; t < num_tasks; ++t) {
    cost[t + 1] = cost[t] + tasks[t].i1 - tasks[t].i0 + kTaskCostRows;
  }
  // Each group's rows in row blocks of their own (PackRowBlock), from the group's first row.
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first row, rows)
  for (int64_t g = 0; g < num_groups; ++g) {
    AppendRowBlocks(row_begin[g], row_begin[g + 1] - row_begin[g], &blocks);
  }
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  const int64_t rows = row_begin[num_groups];
  thread_local std::vector<float> xpack;
  if (static_cast<int64_t>(xpack.size()) < rows * in) xpack.resize(rows * in);
  float* xp = xpack.data();  // thread_local: the workers must not look up their own
  const bool parallel = !omp_in_parallel() && work > (1 << 16) && num_tasks > 1;
  // Each thread a contiguous run of tasks of near-equal cost, so that the panel it prefetches (the
  // next task's) is its own (with dynamic scheduling every few tasks began cold); a thread done
  // early takes tasks from the back of the other runs.
  StealingRuns runs;
  // One parallel region: pack the row blocks, then (after the barrier) the tasks.
#pragma omp parallel if (parallel)
  {
    runs.Publish(CostRun(cost));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < num_blocks; ++b) {
      const auto [first, r] = blocks[b];
      if (x_rows != nullptr) {
        PackRowBlock(x, in, r, in, xp + first * in, x_rows + first);
      } else {
        PackRowBlock(x + first * in, in, r, in, xp + first * in);
      }
    }
    for (int64_t t, t_next; (t = runs.Next(&t_next)) >= 0;) {
      const Task& task = tasks[t];
      const int64_t j0 = task.p * kPanel, nj = std::min(kPanel, out - j0);
      const auto at = [&](const Task& k) { return k.g * packed_stride + k.p * in * kPanel; };
      const float* panel =
          TaskPanel(packed != nullptr ? packed + at(task) : nullptr,
                    packed16 != nullptr ? packed16 + at(task) : nullptr,
                    W != nullptr ? W + task.g * w_stride + j0 * in : nullptr, in, nj, in);
      const Prefetch next =
          t_next >= 0 ? PrefetchPanel(packed, packed16, at(tasks[t_next]), in) : Prefetch{};
      PanelBlock(task.i1 - task.i0, nj, in, 1.0f, xp + task.i0 * in, panel,
                 packed16 != nullptr ? packed16 + at(task) : nullptr, 0.0f,
                 y + task.i0 * out + j0, out, next);
    }
  }
}
#endif

}  // namespace

template <typename Real>
void GroupedLinearForward(Real* y, const Real* x, const Real* W, int64_t w_stride,
                          const int64_t* row_begin, int64_t num_groups, int64_t in, int64_t out) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Real, float>) {
    if (t_batch_invariant) {
      PanelGroupedForward(y, x, nullptr, W, w_stride, nullptr, nullptr, 0, row_begin, num_groups,
                          in, out);
      return;
    }
  }
#endif
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t r0 = row_begin[g], n = row_begin[g + 1] - r0;
    if (n > 0) LinearForward<Real>(y + r0 * out, x + r0 * in, W + g * w_stride, nullptr, n, in, out);
  }
}

bool PackedWeightsSupported() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

int64_t PackedWeightFloats(int64_t out, int64_t in) {
  return (out + 31) / 32 * 32 * in;
}

namespace {

// PackWeight / PackWeightBf16: every panel of W, in parallel.
template <typename T>
void PackPanels(const float* W, int64_t out, int64_t in, T* packed) {
#if defined(__AVX512F__)
  const int64_t num_panels = (out + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && num_panels > 1)
  for (int64_t p = 0; p < num_panels; ++p) {
    const float* src = W + p * kPanel * in;
    const int64_t nj = std::min(kPanel, out - p * kPanel);
    if constexpr (std::is_same_v<T, float>) {
      PackPanel(src, in, nj, in, packed + p * in * kPanel);
    } else {
      PackPanelBf16(src, in, nj, in, packed + p * in * kPanel);
    }
  }
#else
  (void)W, (void)out, (void)in, (void)packed;
  GRPO_CHECK_MSG(false, "packing weights needs an AVX-512 build (PackedWeightsSupported)");
#endif
}

}  // namespace

void PackWeight(const float* W, int64_t out, int64_t in, float* packed) {
  PackPanels(W, out, in, packed);
}

bool IsBf16Exact(const float* W, int64_t n) {
  uint32_t low = 0;
#pragma omp simd reduction(| : low)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, W + i, 4);
    low |= u & 0xFFFFu;
  }
  return low == 0;
}

void PackWeightBf16(const float* W, int64_t out, int64_t in, uint16_t* packed) {
  PackPanels(W, out, in, packed);
}

namespace {

// The packed products, for a packed weight in either form (p32 or p16, the other null).
void PackedForward(float* y, const float* x, const float* p32, const uint16_t* p16,
                   const float* b, int64_t T, int64_t in, int64_t out) {
#if defined(__AVX512F__)
  if (T == 0 || out == 0) return;
  InvariantGemmNTPanels(T, out, in, 1.0f, x, in, nullptr, in, p32, p16, 0.0f, y, out);
  AddBias(y, b, T, out);
#else
  (void)y, (void)x, (void)p32, (void)p16, (void)b, (void)T, (void)in, (void)out;
  GRPO_CHECK_MSG(false, "PackedLinearForward needs an AVX-512 build (PackedWeightsSupported)");
#endif
}

void PackedGroupedForward(float* y, const float* x, const float* p32, const uint16_t* p16,
                          int64_t packed_stride, const int64_t* row_begin, int64_t num_groups,
                          int64_t in, int64_t out, const int32_t* x_rows) {
#if defined(__AVX512F__)
  PanelGroupedForward(y, x, x_rows, nullptr, 0, p32, p16, packed_stride, row_begin, num_groups, in,
                      out);
#else
  (void)y, (void)x, (void)p32, (void)p16, (void)packed_stride, (void)row_begin, (void)num_groups,
      (void)in, (void)out, (void)x_rows;
  GRPO_CHECK_MSG(false, "PackedGroupedLinearForward needs an AVX-512 build");
#endif
}

}  // namespace

void PackedLinearForward(float* y, const float* x, const uint16_t* packed, const float* b,
                         int64_t T, int64_t in, int64_t out) {
  PackedForward(y, x, nullptr, packed, b, T, in, out);
}

void PackedGroupedLinearForward(float* y, const float* x, const uint16_t* packed,
                                int64_t packed_stride, const int64_t* row_begin,
                                int64_t num_groups, int64_t in, int64_t out,
                                const int32_t* x_rows) {
  PackedGroupedForward(y, x, nullptr, packed, packed_stride, row_begin, num_groups, in, out,
                       x_rows);
}

void PackedLinearForward(float* y, const float* x, const float* packed, const float* b, int64_t T,
                         int64_t in, int64_t out) {
  PackedForward(y, x, packed, nullptr, b, T, in, out);
}

void PackedGroupedLinearForward(float* y, const float* x, const float* packed,
                                int64_t packed_stride, const int64_t* row_begin,
                                int64_t num_groups, int64_t in, int64_t out,
                                const int32_t* x_rows) {
  PackedGroupedForward(y, x, packed, nullptr, packed_stride, row_begin, num_groups, in, out,
                       x_rows);
}

template void GroupedLinearForward<float>(float*, const float*, const float*, int64_t,
                                          const int64_t*, int64_t, int64_t, int64_t);
template void GroupedLinearForward<double>(double*, const double*, const double*, int64_t,
                                           const int64_t*, int64_t, int64_t, int64_t);

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
