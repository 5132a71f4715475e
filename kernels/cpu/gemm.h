// Dense matrix multiply on the CPU, row-major, for float (oneDNN sgemm, or a GEMV path when M is
// tiny and the call overhead would cost more than the work) and double (a plain blocked loop:
// the fp64 reference path used by gradient checks, not meant to be fast).
#pragma once

#include <cstdint>

namespace grpo::cpu {

// C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C[M,N], all row-major.
// op(A) = A (stored [M,K], lda >= K) or A^T (stored [K,M], lda >= M); likewise B.
// beta == 0 overwrites C (NaNs in C do not leak through).
// Threads: uses the OpenMP pool; called inside a parallel region it runs on the calling thread.
template <typename Real>
void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A,
          int64_t lda, const Real* B, int64_t ldb, Real beta, Real* C, int64_t ldc);

// y[T,out] = x[T,in] @ W[out,in]^T (+ b[out]); nn.Linear layout.
template <typename Real>
void LinearForward(Real* y, const Real* x, const Real* W, const Real* b, int64_t T, int64_t in,
                   int64_t out);

// MoE experts: for every group g < num_groups, rows [row_begin[g], row_begin[g+1]) of y (.., out)
// = the same rows of x (.., in) @ W_g^T with W_g = W + g * w_stride (out, in). Each group's result
// is exactly LinearForward's on its rows; in batch-invariant mode (AVX-512) all groups share one
// parallel region (decode has a few rows per expert, and a region per expert costs more than its
// work).
template <typename Real>
void GroupedLinearForward(Real* y, const Real* x, const Real* W, int64_t w_stride,
                          const int64_t* row_begin, int64_t num_groups, int64_t in, int64_t out);

// Backward of LinearForward. Accumulates: dx += dy @ W, dW += dy^T @ x, db += sum_t dy.
// dx, dW, db may each be null to skip.
template <typename Real>
void LinearBackward(Real* dx, Real* dW, Real* db, const Real* dy, const Real* x, const Real* W,
                    int64_t T, int64_t in, int64_t out);

// Batch-invariant mode, per calling thread: while a scope with on = true is alive on a thread,
// float Gemm calls from that thread with op(A) = A and op(B) = B^T (every LinearForward and
// GroupedLinearForward) compute each C[m, n] with one fixed sequence of operations over k that
// depends on K only, never on M, the row's position or the thread count: with AVX-512 one
// sequential FMA chain c = fma(A[m,k], B[n,k], c) over k = 0..K-1 from 0 (B packed into 32-column
// panels, the outer-product form of a GEMM microkernel), then alpha * c (+ beta * C); without
// AVX-512 one vectorized dot product per element (its reduction order fixed by the build). And
// AttentionForward processes every query token by itself. A row's result then depends only on its
// own inputs: the rollout engine's decode and the learner's forward agree bitwise (model.h
// set_batch_invariant). Other layouts (backward) are unaffected. Scopes nest.
class BatchInvariantScope {
 public:
  explicit BatchInvariantScope(bool on);
  ~BatchInvariantScope();
  BatchInvariantScope(const BatchInvariantScope&) = delete;
  BatchInvariantScope& operator=(const BatchInvariantScope&) = delete;

 private:
  bool previous_;
};
bool BatchInvariantEnabled();

// Pre-packed weights for the batch-invariant form (AVX-512 builds only): a weight that does not
// change between calls (the rollout engine's, between updates) is packed once instead of on every
// call. Results are bitwise those of LinearForward / GroupedLinearForward (no bias) under a
// BatchInvariantScope: the same FMA chain per element. The packed weight must be re-packed after
// the weight changes.
bool PackedWeightsSupported();
// Floats of the packed form of an nn.Linear weight W (out, in): ceil(out / 32) panels of (in, 32).
int64_t PackedWeightFloats(int64_t out, int64_t in);
void PackWeight(const float* W, int64_t out, int64_t in, float* packed);
// y (T, out) = x (T, in) @ W^T (+ b[out]), W given packed.
void PackedLinearForward(float* y, const float* x, const float* packed, const float* b, int64_t T,
                         int64_t in, int64_t out);
// As GroupedLinearForward; group g's packed weight at packed + g * packed_stride. x_rows, when
// given, gathers: grouped row r (of row_begin[num_groups]) is x + x_rows[r] * in, so a MoE layer's
// tokens reach their experts without a dispatched copy; the results are bitwise those of the
// gathered copy passed as x.
void PackedGroupedLinearForward(float* y, const float* x, const float* packed,
                                int64_t packed_stride, const int64_t* row_begin,
                                int64_t num_groups, int64_t in, int64_t out,
                                const int32_t* x_rows = nullptr);

// The same at 2 bytes per element, for weights whose every element is exactly a bfloat16 (the low
// 16 bits of each float are zero: what a bf16 checkpoint or a bf16 weight update holds). Lossless:
// the kernel widens each element back to the very same float, so the results are bitwise those of
// the fp32 packed form, while decode, which streams the weights from memory, reads half the bytes.
bool IsBf16Exact(const float* W, int64_t n);
// packed: PackedWeightFloats(out, in) elements. Aborts if W is not bf16-exact (IsBf16Exact).
void PackWeightBf16(const float* W, int64_t out, int64_t in, uint16_t* packed);
void PackedLinearForward(float* y, const float* x, const uint16_t* packed, const float* b,
                         int64_t T, int64_t in, int64_t out);
void PackedGroupedLinearForward(float* y, const float* x, const uint16_t* packed,
                                int64_t packed_stride, const int64_t* row_begin,
                                int64_t num_groups, int64_t in, int64_t out,
                                const int32_t* x_rows = nullptr);

// Optional accounting for benchmarks: FLOPs and wall time of Gemm calls made outside parallel
// regions (calls inside one, e.g. attention's per-block products, are not counted). Off by default.
// Not thread-safe: for single-threaded benchmark drivers.
struct GemmStats {
  double flops = 0;
  double seconds = 0;
  int64_t calls = 0;
  // The same split by layout, index trans_a * 2 + trans_b (NN, NT, TN, TT).
  double layout_flops[4] = {0, 0, 0, 0};
  double layout_seconds[4] = {0, 0, 0, 0};
};
void SetGemmStatsEnabled(bool enabled);
GemmStats GetGemmStats();
void ResetGemmStats();

}  // namespace grpo::cpu
