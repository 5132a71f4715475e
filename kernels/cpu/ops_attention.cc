// CPU causal GQA attention over packed sequences (prefix-cache aware), forward and
// flash-attention-style backward, instantiated for float and double. Both directions work on
// blocks of 64 queries of one head: scores = Q_blk K^T and outputs = P V go through Gemm (oneDNN
// sgemm for float), the mask and softmax run in between on a per-thread score buffer. Decode, other
// short chunks and every token in batch-invariant mode instead take "group mode": the g query heads
// of one kv head at each of up to 8 consecutive tokens as the rows, hand-vectorized kernels, each
// token's numerics its own (see GroupAttention).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/status.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_runs.h"
#include "kernels/cpu/vec_math.h"

namespace grpo::cpu {
namespace {

constexpr int64_t kBlockQ = 64;  // queries per forward/backward block
// Sequences with fewer queries than this (decode, short chunks) are processed one token at a time
// with the g query heads of a kv group as the rows: they are contiguous (stride hd) in q/out.
constexpr int64_t kGroupModeMaxQ = 8;
// Below this many score-times-head-dim products a call runs serially: forking the pool costs more.
constexpr int64_t kMinParallelWork = int64_t{1} << 20;

template <typename T, int kSlot>
T* ThreadScratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// One unit of forward work: rows of one (sequence, head) query block (row mode), or a chunk of
// query tokens [i0, i1) with the kv heads [head, head_end) (group mode).
struct FwdTask {
  int64_t seq;
  int64_t head, head_end;  // query head (row mode), or kv heads [head, head_end) (group mode)
  int64_t i0, i1;
  bool group;
  int64_t cost;
};

// The next task's K and V rows, to pull into L2 while this task computes (decode: every task reads
// its sequence's K/V once, from memory, and computes little; without this the two alternate).
// Up to four byte ranges (K then V, each a shared prefix and the sequence's own rows), taken in
// order, 64 bytes per prefetch.
struct LinePrefetch {
  struct Range {
    const char* p = nullptr;
    int64_t lines = 0;
  };
  Range ranges[4];
  int num_ranges = 0;
  int64_t total = 0;  // lines over all ranges
  int64_t done = 0;   // lines issued
  int cur = 0;        // the range the next line is in, and the lines issued of it
  int64_t cur_done = 0;
  void Add(const void* p, int64_t bytes) {
    if (bytes <= 0) return;
    GRPO_CHECK(num_ranges < 4);
    ranges[num_ranges++] = {static_cast<const char*>(p), (bytes + 63) / 64};
    total += (bytes + 63) / 64;
  }
  int64_t lines() const { return total; }
  void Issue(int64_t n) {
    for (const int64_t end = std::min(done + n, total); done < end; ++done, ++cur_done) {
      while (cur_done == ranges[cur].lines) {
        ++cur;
        cur_done = 0;
      }
      __builtin_prefetch(ranges[cur].p + 64 * cur_done, 0, 2);
    }
  }
};

// One kv head's K (or V) rows of a sequence (AttnSeq): positions [0, n_shared) at `shared`, the
// rest at `own`, both at stride ld.
template <typename Real>
struct KvRows {
  const Real* own;
  const Real* shared;
  int64_t n_shared;
  int64_t ld;
  const Real* row(int64_t j) const {
    return j < n_shared ? shared + j * ld : own + (j - n_shared) * ld;
  }
  // The same rows, `off` values into each (another head's columns).
  KvRows Shift(int64_t off) const {
    return {own + off, shared != nullptr ? shared + off : nullptr, n_shared, ld};
  }
};

// In place over S (nr, nk) holding scaled scores: row r sees keys [0, p0 + r * p_step] and becomes
// its softmax (zeros past the causal limit). lse[r * lse_stride] = max + log(sum exp) if lse.
template <typename Real>
void CausalSoftmaxRows(Real* S, int64_t nr, int64_t nk, int64_t p0, int64_t p_step, Real* lse,
                       int64_t lse_stride) {
  for (int64_t r = 0; r < nr; ++r) {
    Real* row = S + r * nk;  // (nk)
    const int64_t valid = p0 + r * p_step + 1;
    const Real m = RowMax(row, valid);
    Real s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < valid; ++j) {
      const Real e = VecExp<Real>(row[j] - m);
      row[j] = e;
      s += e;
    }
    const Real inv = Real(1) / s;
    for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
    std::fill(row + valid, row + nk, Real(0));
    if (lse != nullptr) lse[r * lse_stride] = m + std::log(s);
  }
}

// Group mode (few rows, one position): scores and P V by hand. Gemm's small-M path has no
// vectorized dot product and oneDNN's per-call overhead dominates at these sizes. Uses GCC/Clang
// vector extensions: one 64-byte vector (a zmm register with AVX-512; split on narrower targets).
template <typename Real>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  static constexpr int kLanes = 16;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  static constexpr int kLanes = 8;
};

// Helpers take and give vectors through pointers: a vector argument or return value would change
// the ABI on targets without AVX-512 (GCC's -Wpsabi).
template <typename V>
inline void LoadV(V* v, const void* p) {
  std::memcpy(v, p, sizeof(V));
}

// out[i] = sum of the lanes of a[i] (a transpose-and-add tree, 2 shuffles + 1 add per level).
inline void SumLanesTransposed(const Simd<float>::V* a, float scale, float* out) {
  using V = Simd<float>::V;
  V b[8], c[4], d[2];
  for (int k = 0; k < 8; ++k) {
    b[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19,
                                   20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26,
                                   27, 28, 29, 30, 31);
  }
  for (int k = 0; k < 4; ++k) {
    c[k] = __builtin_shufflevector(b[2 * k], b[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19,
                                   24, 25, 26, 27) +
           __builtin_shufflevector(b[2 * k], b[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22,
                                   23, 28, 29, 30, 31);
  }
  for (int k = 0; k < 2; ++k) {
    d[k] = __builtin_shufflevector(c[2 * k], c[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21,
                                   24, 25, 28, 29) +
           __builtin_shufflevector(c[2 * k], c[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22,
                                   23, 26, 27, 30, 31);
  }
  const V e = __builtin_shufflevector(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                      28, 30) +
              __builtin_shufflevector(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                      29, 31);
  const V scaled = e * scale;
  std::memcpy(out, &scaled, sizeof(V));
}
inline void SumLanesTransposed(const Simd<double>::V* a, double scale, double* out) {
  using V = Simd<double>::V;
  V b[4], c[2];
  for (int k = 0; k < 4; ++k) {
    b[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  }
  for (int k = 0; k < 2; ++k) {
    c[k] = __builtin_shufflevector(b[2 * k], b[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(b[2 * k], b[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  }
  const V e = __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14) +
              __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15);
  const V scaled = e * scale;
  std::memcpy(out, &scaled, sizeof(V));
}

// Group mode: a chunk of n consecutive query tokens of one sequence, at positions nk0 - 1 ..
// nk0 + n - 2 (token i sees keys 0..nk0 + i - 1), one kv head at a time. Its rows are the g query
// heads of that kv head at each token: row r = i * g + rr is query head kvh * g + rr of token i.
// Three passes: the scores of every row into S (rows, lds); each row's softmax in place
// (unnormalized p); P V into out, then out *= 1 / sum. A chunk's rows share every K/V load (the
// learner's batch-invariant forward runs its tokens in chunks; decode has one token per chunk).
//
// Every query's numerics are a fixed function of its q, the K/V rows and its own key count: a
// score is one lane-parallel FMA chain over hd (lane = c mod kLanes) then SumLanesTransposed,
// whose tree is the same for each of its slots; an output element is one FMA chain over the keys
// in order (a chain split across calls goes through memory, exactly). So a result does not depend
// on the chunk, the row's place in it, or how heads are split into tasks (batch invariance).

// Where a chunk's rows live: row r = i * g + rr at base + i * ld_token + rr * hd.
template <typename Real>
struct GroupRows {
  Real* base;
  int64_t ld_token, g, hd;
  Real* row(int64_t r) const { return base + (r / g) * ld_token + (r % g) * hd; }
};

// Scores of kRows rows (from row r0 of q) for keys [0, nk), kLanes / kRows keys per step: slot
// r * kKeys + jj of the accumulators is (row r, key j + jj), so each K load feeds kRows FMAs and
// one transpose tree yields kLanes scores. S rows r0.. (stride lds >= nk rounded up to kKeys);
// keys past nk read zero_row (hd zeros) and land in S's padding.
template <typename Real, int kRows>
void GroupScores(Real* S, int64_t lds, const GroupRows<const Real>& q, int64_t r0,
                 const KvRows<Real>& k, int64_t nk, int64_t hd, Real scale, const Real* zero_row,
                 LinePrefetch* pf = nullptr, int64_t pf_lines = 0) {
  using V = typename Simd<Real>::V;
  constexpr int kL = Simd<Real>::kLanes;
  constexpr int kKeys = kL / kRows;
  const Real* qp[kRows];
  for (int r = 0; r < kRows; ++r) qp[r] = q.row(r0 + r);
  // One step: keys kp[0..kKeys) against the rows, scores to S columns [j, j + kKeys).
  auto step = [&](const Real* const* kp, int64_t j) {
    V acc[kL] = {};
    for (int64_t c = 0; c < hd; c += kL) {
      V qv[kRows];
      for (int r = 0; r < kRows; ++r) LoadV(&qv[r], qp[r] + c);
#pragma GCC unroll 16
      for (int jj = 0; jj < kKeys; ++jj) {
        V kv;
        LoadV(&kv, kp[jj] + c);
        for (int r = 0; r < kRows; ++r) acc[r * kKeys + jj] += qv[r] * kv;
      }
    }
    Real sc[kL];
    SumLanesTransposed(acc, scale, sc);
    for (int r = 0; r < kRows; ++r) {
      std::memcpy(S + (r0 + r) * lds + j, sc + r * kKeys, kKeys * sizeof(Real));
    }
  };
  const Real* kp[kKeys];
  // pf_lines of *pf spread over the steps.
  const int64_t steps = (nk + kKeys - 1) / kKeys;
  const int64_t pf_step = pf != nullptr && steps > 0 ? (pf_lines + steps - 1) / steps : 0;
  int64_t j = 0;
  for (; j + kKeys <= nk; j += kKeys) {  // full steps: no per-key bounds test
    if (pf_step > 0) pf->Issue(pf_step);
    for (int jj = 0; jj < kKeys; ++jj) kp[jj] = k.row(j + jj);
    step(kp, j);
  }
  if (pf_step > 0) pf->Issue(pf_step);
  if (j < nk) {
    for (int jj = 0; jj < kKeys; ++jj) kp[jj] = j + jj < nk ? k.row(j + jj) : zero_row;
    step(kp, j);
  }
}

// In place over row[0, lds): row[j] = exp(row[j] - max) for j < nk, 0 past it. Returns the sum
// (kLanes lane sums, then the lanes in order: a fixed order for a given nk) and sets *max.
template <typename Real>
Real GroupSoftmaxRow(Real* row, int64_t nk, int64_t lds, Real* max) {
  constexpr int kL = Simd<Real>::kLanes;
  const Real m = RowMax(row, nk);
  const int64_t end = (nk + kL - 1) / kL * kL;
  std::fill(row + nk, row + end, -std::numeric_limits<Real>::infinity());  // exp gives 0
  Real lanes[kL] = {};
  for (int64_t j0 = 0; j0 < end; j0 += kL) {
#pragma omp simd
    for (int l = 0; l < kL; ++l) {
      const Real e = VecExp<Real>(row[j0 + l] - m);
      row[j0 + l] = e;
      lanes[l] += e;
    }
  }
  Real sum = 0;
  for (int l = 0; l < kL; ++l) sum += lanes[l];
  *max = m;
  return sum;
}

// Rows r0..r0+kRows-1 of out, columns [c0, c0 + kCols * kLanes): (+)= their P rows (stride lds)
// over keys [j0, j1) times V. Starts from zero when j0 == 0, else continues the chain from out.
// One chain in key order whichever rows the keys are in.
template <typename Real, int kRows, int kCols>
void GroupPVTile(const GroupRows<Real>& out, int64_t r0, int64_t c0, const Real* P, int64_t lds,
                 const KvRows<Real>& v, int64_t j0, int64_t j1) {
  using V = typename Simd<Real>::V;
  constexpr int kL = Simd<Real>::kLanes;
  Real* op[kRows];
  const Real* pp[kRows];
  for (int r = 0; r < kRows; ++r) {
    op[r] = out.row(r0 + r) + c0;
    pp[r] = P + (r0 + r) * lds;
  }
  V acc[kRows][kCols] = {};
  if (j0 > 0) {
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) LoadV(&acc[r][c], op[r] + c * kL);
    }
  }
  // Keys [ja, jb), key ja's row at `base`.
  const auto keys = [&](const Real* base, int64_t ja, int64_t jb) {
    for (int64_t j = ja; j < jb; ++j) {
      const Real* row = base + (j - ja) * v.ld + c0;
      V x[kCols];
      for (int c = 0; c < kCols; ++c) LoadV(&x[c], row + c * kL);
      for (int r = 0; r < kRows; ++r) {
        const Real p = pp[r][j];
        for (int c = 0; c < kCols; ++c) acc[r][c] += p * x[c];
      }
    }
  };
  const int64_t split = std::clamp(v.n_shared, j0, j1);
  if (j0 < split) keys(v.shared + j0 * v.ld, j0, split);
  if (split < j1) keys(v.own + (split - v.n_shared) * v.ld, split, j1);
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) std::memcpy(op[r] + c * kL, &acc[r][c], sizeof(V));
  }
}

template <typename Real, int kRows>
void GroupPV(const GroupRows<Real>& out, int64_t r0, const Real* P, int64_t lds,
             const KvRows<Real>& v, int64_t j0, int64_t j1, int64_t hd) {
  constexpr int kL = Simd<Real>::kLanes;
  int64_t c0 = 0;
  for (; c0 + 4 * kL <= hd; c0 += 4 * kL) {
    GroupPVTile<Real, kRows, 4>(out, r0, c0, P, lds, v, j0, j1);
  }
  for (; c0 < hd; c0 += kL) GroupPVTile<Real, kRows, 1>(out, r0, c0, P, lds, v, j0, j1);
}

// The largest of 8, 4, 2, 1 (at most kMax) not above n.
inline int64_t RowBlock(int64_t n, int64_t max) {
  const int64_t b = n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1;
  return std::min(b, max);
}

// Query tokens per group-mode chunk in the learner's batch-invariant forward.
constexpr int64_t kGroupChunk = 8;

// Scratch values GroupAttention needs for chunks of up to n tokens over up to max_kv keys.
template <typename Real>
int64_t GroupScratch(int64_t n, int64_t g, int64_t max_kv, int64_t hd) {
  constexpr int64_t kL = Simd<Real>::kLanes;
  return n * g * ((max_kv + kL - 1) / kL * kL) + n * g + hd;
}

// A chunk of n tokens (see above), kv heads [h0, h1). out/q: the chunk's first token's (nh, hd)
// rows, tokens at stride ld_token = nh * hd; lse likewise at stride nh (may be null); k/v: the
// sequence's rows from key 0, all heads. scratch: GroupScratch(n, g, nk0 + n - 1, hd) values.
template <typename Real>
void GroupAttention(Real* out, Real* lse, const Real* q, const KvRows<Real>& k,
                    const KvRows<Real>& v, int64_t nk0, int64_t n, int64_t h0, int64_t h1,
                    int64_t g, int64_t hd, Real scale, Real* scratch,
                    LinePrefetch* next = nullptr) {
  constexpr int kL = Simd<Real>::kLanes;
  const int64_t nh = k.ld / hd * g, ld_token = nh * hd;
  const int64_t rows = n * g, nk_max = nk0 + n - 1;
  const int64_t lds = (nk_max + kL - 1) / kL * kL;
  Real* S = scratch;            // (rows, lds) scores, then unnormalized probabilities
  Real* inv = S + rows * lds;   // (rows) 1 / sum
  Real* zero_row = inv + rows;  // (hd)
  std::fill(zero_row, zero_row + hd, Real(0));
  const bool vec = hd % kL == 0;
  for (int64_t kvh = h0; kvh < h1; ++kvh) {
    const KvRows<Real> kh = k.Shift(kvh * hd);  // (nk_max, hd)
    const KvRows<Real> vh = v.Shift(kvh * hd);
    const GroupRows<const Real> qr{q + kvh * g * hd, ld_token, g, hd};
    const GroupRows<Real> orow{out + kvh * g * hd, ld_token, g, hd};
    if (vec) {
      for (int64_t r0 = 0; r0 < rows;) {
        const int64_t nr = RowBlock(rows - r0, 8);
        // Keys up to the block's last row's limit; past a row's own limit they are discarded.
        const int64_t nk = nk0 + (r0 + nr - 1) / g;
        // Each head's first row block takes an equal share of the next task's lines.
        LinePrefetch* pf = r0 == 0 ? next : nullptr;
        const int64_t pf_lines =
            pf != nullptr ? (pf->lines() * (kvh - h0 + 1) + (h1 - h0) - 1) / (h1 - h0) - pf->done
                          : 0;
        if (nr == 8) {
          GroupScores<Real, 8>(S, lds, qr, r0, kh, nk, hd, scale, zero_row, pf, pf_lines);
        } else if (nr == 4) {
          GroupScores<Real, 4>(S, lds, qr, r0, kh, nk, hd, scale, zero_row, pf, pf_lines);
        } else if (nr == 2) {
          GroupScores<Real, 2>(S, lds, qr, r0, kh, nk, hd, scale, zero_row, pf, pf_lines);
        } else {
          GroupScores<Real, 1>(S, lds, qr, r0, kh, nk, hd, scale, zero_row, pf, pf_lines);
        }
        r0 += nr;
      }
    } else {  // any hd: plain loops, one sequential sum per score
      // Explicit fma: whether `d += a * b` is contracted is the compiler's choice per copy of the
      // loop, and a shared prefix must not change a bit.
      for (int64_t r = 0; r < rows; ++r) {
        const Real* qv = qr.row(r);
        for (int64_t j = 0; j < nk0 + r / g; ++j) {
          const Real* kr = kh.row(j);
          Real d = 0;
          for (int64_t c = 0; c < hd; ++c) d = std::fma(qv[c], kr[c], d);
          S[r * lds + j] = scale * d;
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      Real m;
      const Real sum = GroupSoftmaxRow(S + r * lds, nk0 + r / g, lds, &m);
      inv[r] = Real(1) / sum;
      if (lse != nullptr) lse[(r / g) * nh + kvh * g + r % g] = m + std::log(sum);
    }
    if (vec) {
      for (int64_t r0 = 0; r0 < rows;) {
        const int64_t nr = RowBlock(rows - r0, 4);
        // Keys all the block's rows see together, then each row's own remainder.
        const int64_t shared = nk0 + r0 / g;
        if (nr == 4) {
          GroupPV<Real, 4>(orow, r0, S, lds, vh, 0, shared, hd);
        } else if (nr == 2) {
          GroupPV<Real, 2>(orow, r0, S, lds, vh, 0, shared, hd);
        } else {
          GroupPV<Real, 1>(orow, r0, S, lds, vh, 0, shared, hd);
        }
        for (int64_t r = r0; r < r0 + nr; ++r) {
          const int64_t own = nk0 + r / g;
          if (own > shared) GroupPV<Real, 1>(orow, r, S, lds, vh, shared, own, hd);
        }
        r0 += nr;
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        Real* o = orow.row(r);
        for (int64_t c = 0; c < hd; ++c) {
          Real acc = 0;
          for (int64_t j = 0; j < nk0 + r / g; ++j) {
            acc = std::fma(S[r * lds + j], vh.row(j)[c], acc);
          }
          o[c] = acc;
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      Real* o = orow.row(r);
      const Real s = inv[r];
#pragma omp simd
      for (int64_t c = 0; c < hd; ++c) o[c] *= s;
    }
  }
}

}  // namespace

template <typename Real>
void AttentionForward(Real* out, Real* lse, const Real* q, const AttnSeq<Real>* seqs,
                      int64_t num_seqs, int64_t nh, int64_t nkv, int64_t hd, Real scale) {
  GRPO_CHECK(nkv > 0 && nh % nkv == 0);
  const int64_t g = nh / nkv;
  const int64_t ldq = nh * hd, ldk = nkv * hd;

  // Batch-invariant mode: every query token in group mode (its numerics its own, chunk or not),
  // whatever its sequence's length.
  const int64_t group_mode_max_q =
      BatchInvariantEnabled() ? std::numeric_limits<int64_t>::max() : kGroupModeMaxQ;
  int64_t max_kv = 0, group_chunks = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttnSeq<Real>& sq = seqs[s];
    GRPO_CHECK(sq.q_len >= 0 && sq.q_len <= sq.kv_len);
    GRPO_CHECK(sq.kv_shared >= 0 && sq.kv_shared <= sq.kv_len - sq.q_len);
    if (sq.q_len == 0) continue;
    max_kv = std::max(max_kv, sq.kv_len);
    if (sq.q_len < group_mode_max_q || sq.kv_shared > 0) {
      group_chunks += (sq.q_len + kGroupChunk - 1) / kGroupChunk;
    }
  }
  // A group task takes a chunk's kv heads [head, head_end): all of them unless there are too few
  // chunks to keep the threads busy, then one each. Either way each head's result is the same.
  const int64_t heads_per_task = group_chunks >= 8 * omp_get_max_threads() ? nkv : 1;
  thread_local std::vector<FwdTask> tasks;
  tasks.clear();
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttnSeq<Real>& sq = seqs[s];
    if (sq.q_len == 0) continue;
    const int64_t off = sq.kv_len - sq.q_len;
    // Row mode's GEMMs take contiguous K/V: a shared prefix goes to group mode.
    if (sq.q_len < group_mode_max_q || sq.kv_shared > 0) {
      for (int64_t i0 = 0; i0 < sq.q_len; i0 += kGroupChunk) {
        const int64_t i1 = std::min(sq.q_len, i0 + kGroupChunk);
        for (int64_t h = 0; h < nkv; h += heads_per_task) {
          tasks.push_back({s, h, h + heads_per_task, i0, i1, true,
                           heads_per_task * g * (i1 - i0) * (off + i1)});
        }
      }
    } else {
      for (int64_t h = 0; h < nh; ++h) {
        for (int64_t i0 = 0; i0 < sq.q_len; i0 += kBlockQ) {
          const int64_t i1 = std::min(sq.q_len, i0 + kBlockQ);
          tasks.push_back({s, h, h + 1, i0, i1, false, (i1 - i0) * (off + i1)});
        }
      }
    }
  }
  // Every task a chunk with all kv heads (decode): their K/V row ranges are contiguous, and each
  // thread runs a contiguous run of tasks, prefetching the next one's rows. Otherwise largest
  // first, so the dynamic schedule ends with small tasks and balances.
  const bool pipelined =
      heads_per_task == nkv &&
      std::all_of(tasks.begin(), tasks.end(), [](const FwdTask& t) { return t.group; });
  if (!pipelined) {
    std::stable_sort(tasks.begin(), tasks.end(),
                     [](const FwdTask& a, const FwdTask& b) { return a.cost > b.cost; });
  }
  const int64_t scratch =
      std::max(kBlockQ * max_kv, GroupScratch<Real>(kGroupChunk, g, max_kv, hd));
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  int64_t total_cost = 0;
  for (const FwdTask& t : tasks) total_cost += t.cost;
  const bool threads = num_tasks > 1 && total_cost * hd > kMinParallelWork && !omp_in_parallel();
  const FwdTask* task_list = tasks.data();  // thread_local: the workers see the caller's by pointer

  const auto run = [&](int64_t ti, LinePrefetch* next) {
    const FwdTask& task = task_list[ti];
    const AttnSeq<Real>& sq = seqs[task.seq];
    const int64_t off = sq.kv_len - sq.q_len;
    Real* S = ThreadScratch<Real, 0>(scratch);
    if (task.group) {
      const int64_t tok = sq.q_begin + task.i0;  // the chunk's first token: keys 0..its position
      GroupAttention(out + tok * nh * hd, lse != nullptr ? lse + tok * nh : nullptr,
                     q + tok * nh * hd, KvRows<Real>{sq.k, sq.k_shared, sq.kv_shared, ldk},
                     KvRows<Real>{sq.v, sq.v_shared, sq.kv_shared, ldk}, off + task.i0 + 1,
                     task.i1 - task.i0, task.head, task.head_end, g, hd, scale, S, next);
      return;
    }
    // Row mode: rows i0..i1-1 of query head `head`, (nr, hd) at stride ldq; row r at position
    // off + i0 + r sees keys 0..that position.
    const int64_t kvh = task.head / g;
    const Real* kb = sq.k + kvh * hd;  // (kv_len, hd) rows at stride ldk
    const Real* vb = sq.v + kvh * hd;
    const int64_t nr = task.i1 - task.i0, p0 = off + task.i0;
    const int64_t first = (sq.q_begin + task.i0) * nh + task.head;
    const int64_t nk = p0 + nr;  // keys seen by the last row
    Gemm<Real>(false, true, nr, nk, hd, scale, q + first * hd, ldq, kb, ldk, Real(0), S, nk);
    CausalSoftmaxRows(S, nr, nk, p0, int64_t{1}, lse != nullptr ? lse + first : nullptr, nh);
    Gemm<Real>(false, false, nr, hd, nk, Real(1), S, nk, vb, ldk, Real(0), out + first * hd, ldq);
  };
  if (!pipelined) {
#pragma omp parallel for schedule(dynamic, 1) if (threads)
    for (int64_t ti = 0; ti < num_tasks; ++ti) run(ti, nullptr);
    return;
  }
  std::vector<int64_t> cost_before(num_tasks + 1, 0);  // cost of tasks 0 .. t-1
  for (int64_t t = 0; t < num_tasks; ++t) cost_before[t + 1] = cost_before[t] + tasks[t].cost;
  StealingRuns runs;  // a thread done early takes tasks from the back of the other runs
#pragma omp parallel if (threads)
  {
    runs.Publish(CostRun(cost_before));
#pragma omp barrier
    for (int64_t ti, tn; (ti = runs.Next(&tn)) >= 0;) {
      // The thread's next task's keys [0, off + i1), less those this task reads when it is the
      // same sequence's next chunk (the learner's forward), and less a shared prefix this task
      // reads too (the next sample of the same group: it is in cache).
      LinePrefetch next;
      if (tn >= 0) {
        const FwdTask& t = task_list[tn];
        const AttnSeq<Real>& sq = seqs[t.seq];
        const AttnSeq<Real>& now = seqs[task_list[ti].seq];
        const int64_t off = sq.kv_len - sq.q_len, end = off + t.i1;
        const int64_t from = t.seq == task_list[ti].seq ? off + task_list[ti].i1 : 0;
        const int64_t ns = sq.kv_shared, row_bytes = ldk * static_cast<int64_t>(sizeof(Real));
        const bool shared_cached = ns > 0 && now.k_shared == sq.k_shared;
        const int64_t s_end = shared_cached ? from : std::min(end, ns);
        const int64_t own_from = std::max(from, ns);
        if (s_end > from) next.Add(sq.k_shared + from * ldk, (s_end - from) * row_bytes);
        next.Add(sq.k + (own_from - ns) * ldk, (end - own_from) * row_bytes);
        if (s_end > from) next.Add(sq.v_shared + from * ldk, (s_end - from) * row_bytes);
        next.Add(sq.v + (own_from - ns) * ldk, (end - own_from) * row_bytes);
      }
      run(ti, tn >= 0 ? &next : nullptr);
    }
  }
}

template <typename Real>
void AttentionBackward(Real* dq, Real* dk_base, Real* dv_base, const Real* dout, const Real* out,
                       const Real* lse, const Real* q, const AttnSeq<Real>* seqs, int64_t num_seqs,
                       int64_t nh, int64_t nkv, int64_t hd, Real scale) {
  GRPO_CHECK(nkv > 0 && nh % nkv == 0);
  GRPO_CHECK(lse != nullptr);
  const int64_t g = nh / nkv;
  const int64_t ldq = nh * hd, ldk = nkv * hd;

  // One task per (sequence, kv head): it owns that head's dK/dV rows, so accumulation is race-free.
  struct BwdTask {
    int64_t seq, kvh, cost;
  };
  std::vector<BwdTask> tasks;
  int64_t max_len = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    GRPO_CHECK_MSG(seqs[s].q_len == seqs[s].kv_len && seqs[s].kv_shared == 0,
                   "attention backward needs q_len == kv_len and no shared prefix");
    const int64_t L = seqs[s].q_len;
    if (L == 0) continue;
    max_len = std::max(max_len, L);
    for (int64_t kvh = 0; kvh < nkv; ++kvh) tasks.push_back({s, kvh, L * L});
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const BwdTask& a, const BwdTask& b) { return a.cost > b.cost; });
  const int64_t scratch = kBlockQ * max_len;
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  int64_t total_cost = 0;
  for (const BwdTask& t : tasks) total_cost += t.cost * g;
  const bool threads = num_tasks > 1 && total_cost * hd > kMinParallelWork && !omp_in_parallel();

#pragma omp parallel for schedule(dynamic, 1) if (threads)
  for (int64_t ti = 0; ti < num_tasks; ++ti) {
    const AttnSeq<Real>& sq = seqs[tasks[ti].seq];
    const int64_t kvh = tasks[ti].kvh;
    const int64_t L = sq.q_len;
    const Real* kb = sq.k + kvh * hd;  // (L, hd) at stride ldk
    const Real* vb = sq.v + kvh * hd;
    Real* dkb = dk_base + (sq.q_begin * nkv + kvh) * hd;  // (L, hd) at stride ldk
    Real* dvb = dv_base + (sq.q_begin * nkv + kvh) * hd;
    Real* P = ThreadScratch<Real, 0>(scratch);   // (nr, nk) probabilities
    Real* dS = ThreadScratch<Real, 1>(scratch);  // (nr, nk) dP, then dS
    for (int64_t h = kvh * g; h < (kvh + 1) * g; ++h) {
      for (int64_t i0 = 0; i0 < L; i0 += kBlockQ) {
        const int64_t i1 = std::min(L, i0 + kBlockQ);
        const int64_t nr = i1 - i0, nk = i1;
        const int64_t first = (sq.q_begin + i0) * nh + h;  // (token, head) index of row 0
        const Real* qb = q + first * hd;                   // (nr, hd) at stride ldq
        const Real* ob = out + first * hd;
        const Real* dob = dout + first * hd;
        Real* dqb = dq + first * hd;
        // P = exp(scale * Q K^T - lse), causal.
        Gemm<Real>(false, true, nr, nk, hd, scale, qb, ldq, kb, ldk, Real(0), P, nk);
        for (int64_t r = 0; r < nr; ++r) {
          Real* row = P + r * nk;
          const int64_t valid = i0 + r + 1;
          const Real l = lse[first + r * nh];
          for (int64_t j = 0; j < valid; ++j) row[j] = VecExp<Real>(row[j] - l);
          std::fill(row + valid, row + nk, Real(0));
        }
        // dV += P^T dO.
        Gemm<Real>(true, false, nk, hd, nr, Real(1), P, nk, dob, ldq, Real(1), dvb, ldk);
        // dP = dO V^T; dS = P * (dP - D), D_r = dO_r . O_r.
        Gemm<Real>(false, true, nr, nk, hd, Real(1), dob, ldq, vb, ldk, Real(0), dS, nk);
        for (int64_t r = 0; r < nr; ++r) {
          const Real* dor = dob + r * ldq;
          const Real* orow = ob + r * ldq;
          Real d = 0;
#pragma omp simd reduction(+ : d)
          for (int64_t c = 0; c < hd; ++c) d += dor[c] * orow[c];
          Real* ds = dS + r * nk;
          const Real* pr = P + r * nk;
          for (int64_t j = 0; j < nk; ++j) ds[j] = pr[j] * (ds[j] - d);
        }
        // dQ += scale dS K; dK += scale dS^T Q.
        Gemm<Real>(false, false, nr, hd, nk, scale, dS, nk, kb, ldk, Real(1), dqb, ldq);
        Gemm<Real>(true, false, nk, hd, nr, scale, dS, nk, qb, ldq, Real(1), dkb, ldk);
      }
    }
  }
}

#define GRPO_INSTANTIATE_ATTENTION(Real)                                                         \
  template void AttentionForward<Real>(Real*, Real*, const Real*, const AttnSeq<Real>*, int64_t, \
                                       int64_t, int64_t, int64_t, Real);                         \
  template void AttentionBackward<Real>(Real*, Real*, Real*, const Real*, const Real*,           \
                                        const Real*, const Real*, const AttnSeq<Real>*, int64_t, \
                                        int64_t, int64_t, int64_t, Real);

GRPO_INSTANTIATE_ATTENTION(float)
GRPO_INSTANTIATE_ATTENTION(double)
#undef GRPO_INSTANTIATE_ATTENTION

}  // namespace grpo::cpu
