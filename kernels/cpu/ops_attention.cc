// CPU causal GQA attention over packed sequences (prefix-cache aware), forward and
// flash-attention-style backward, instantiated for float and double. Both directions work on
// blocks of 64 queries of one head: scores = Q_blk K^T and outputs = P V go through Gemm (oneDNN
// sgemm for float), the mask and softmax run in between on a per-thread score buffer. Decode and
// other short chunks instead take the g query heads of one kv head at one token as the rows, with
// hand-vectorized kernels.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/status.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
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

// One unit of forward work: rows of one (sequence, head) query block (row mode), or the g heads
// of kv head `head` at one query token (group mode).
struct FwdTask {
  int64_t seq;
  int64_t head;  // query head (row mode) or kv head (group mode)
  int64_t i0, i1;
  bool group;
  int64_t cost;
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

// S (nr, nk) = scale * Q (nr, hd; stride ld) K (nk, hd; stride ldk)^T, kLanes keys at a time.
template <typename Real>
void SmallScores(Real* S, const Real* q, int64_t ld, int64_t nr, const Real* k, int64_t ldk,
                 int64_t nk, int64_t hd, Real scale) {
  using V = typename Simd<Real>::V;
  constexpr int kL = Simd<Real>::kLanes;
  int64_t j0 = 0;
  if (hd % kL == 0) {
    for (; j0 + kL <= nk; j0 += kL) {
      const Real* kb = k + j0 * ldk;
      for (int64_t r = 0; r < nr; ++r) {
        const Real* qr = q + r * ld;
        V acc[kL] = {};
        for (int64_t c = 0; c < hd; c += kL) {
          V qv, kv;
          LoadV(&qv, qr + c);
#pragma GCC unroll 16
          for (int i = 0; i < kL; ++i) {
            LoadV(&kv, kb + i * ldk + c);
            acc[i] += qv * kv;
          }
        }
        SumLanesTransposed(acc, scale, S + r * nk + j0);
      }
    }
  }
  for (int64_t j = j0; j < nk; ++j) {  // tail keys, or any hd
    for (int64_t r = 0; r < nr; ++r) {
      Real d = 0;
      for (int64_t c = 0; c < hd; ++c) d += q[r * ld + c] * k[j * ldk + c];
      S[r * nk + j] = scale * d;
    }
  }
}

// O (nr, hd; stride ld) = P (nr, nk) V (nk, hd; stride ldk), output columns held in registers.
template <typename Real>
void SmallPV(Real* o, int64_t ld, int64_t nr, const Real* P, const Real* v, int64_t ldk, int64_t nk,
             int64_t hd) {
  using V = typename Simd<Real>::V;
  constexpr int kL = Simd<Real>::kLanes;
  for (int64_t r = 0; r < nr; ++r) {
    const Real* pr = P + r * nk;  // (nk)
    Real* orow = o + r * ld;
    int64_t c0 = 0;
    for (; c0 + 4 * kL <= hd; c0 += 4 * kL) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t j = 0; j < nk; ++j) {
        const Real* vr = v + j * ldk + c0;
        const Real p = pr[j];
        V x0, x1, x2, x3;
        LoadV(&x0, vr);
        LoadV(&x1, vr + kL);
        LoadV(&x2, vr + 2 * kL);
        LoadV(&x3, vr + 3 * kL);
        a0 += p * x0;
        a1 += p * x1;
        a2 += p * x2;
        a3 += p * x3;
      }
      std::memcpy(orow + c0, &a0, sizeof(V));
      std::memcpy(orow + c0 + kL, &a1, sizeof(V));
      std::memcpy(orow + c0 + 2 * kL, &a2, sizeof(V));
      std::memcpy(orow + c0 + 3 * kL, &a3, sizeof(V));
    }
    for (; c0 + kL <= hd; c0 += kL) {
      V a0 = {};
      for (int64_t j = 0; j < nk; ++j) {
        V x0;
        LoadV(&x0, v + j * ldk + c0);
        a0 += pr[j] * x0;
      }
      std::memcpy(orow + c0, &a0, sizeof(V));
    }
    for (int64_t c = c0; c < hd; ++c) {
      Real acc = 0;
      for (int64_t j = 0; j < nk; ++j) acc += pr[j] * v[j * ldk + c];
      orow[c] = acc;
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

  // Batch-invariant mode: every query token alone (group mode), whatever its sequence's length.
  const int64_t group_mode_max_q =
      BatchInvariantEnabled() ? std::numeric_limits<int64_t>::max() : kGroupModeMaxQ;
  std::vector<FwdTask> tasks;
  int64_t max_kv = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttnSeq<Real>& sq = seqs[s];
    GRPO_CHECK(sq.q_len >= 0 && sq.q_len <= sq.kv_len);
    if (sq.q_len == 0) continue;
    max_kv = std::max(max_kv, sq.kv_len);
    const int64_t off = sq.kv_len - sq.q_len;
    if (sq.q_len < group_mode_max_q) {
      for (int64_t i = 0; i < sq.q_len; ++i) {
        for (int64_t kvh = 0; kvh < nkv; ++kvh) {
          tasks.push_back({s, kvh, i, i + 1, true, g * (off + i + 1)});
        }
      }
    } else {
      for (int64_t h = 0; h < nh; ++h) {
        for (int64_t i0 = 0; i0 < sq.q_len; i0 += kBlockQ) {
          const int64_t i1 = std::min(sq.q_len, i0 + kBlockQ);
          tasks.push_back({s, h, i0, i1, false, (i1 - i0) * (off + i1)});
        }
      }
    }
  }
  // Largest first, so the dynamic schedule ends with small tasks and balances.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const FwdTask& a, const FwdTask& b) { return a.cost > b.cost; });
  const int64_t scratch = std::max(kBlockQ, g) * max_kv;
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  int64_t total_cost = 0;
  for (const FwdTask& t : tasks) total_cost += t.cost;
  const bool threads = num_tasks > 1 && total_cost * hd > kMinParallelWork && !omp_in_parallel();

#pragma omp parallel for schedule(dynamic, 1) if (threads)
  for (int64_t ti = 0; ti < num_tasks; ++ti) {
    const FwdTask& task = tasks[ti];
    const AttnSeq<Real>& sq = seqs[task.seq];
    const int64_t off = sq.kv_len - sq.q_len;
    const int64_t kvh = task.group ? task.head : task.head / g;
    const Real* kb = sq.k + kvh * hd;  // (kv_len, hd) rows at stride ldk
    const Real* vb = sq.v + kvh * hd;
    // Rows of this block: (nr, hd) at stride ld in q/out; positions p0 + r * p_step.
    int64_t nr, ld, p0, p_step, lse_stride;
    int64_t first;  // index of the block's first (token, head) in the (T, nh) layout
    if (task.group) {
      nr = g;
      ld = hd;
      p0 = off + task.i0;
      p_step = 0;
      first = (sq.q_begin + task.i0) * nh + kvh * g;
      lse_stride = 1;
    } else {
      nr = task.i1 - task.i0;
      ld = ldq;
      p0 = off + task.i0;
      p_step = 1;
      first = (sq.q_begin + task.i0) * nh + task.head;
      lse_stride = nh;
    }
    const int64_t nk = p0 + (nr - 1) * p_step + 1;  // keys seen by the last row
    Real* S = ThreadScratch<Real, 0>(scratch);      // (nr, nk) scores, then probabilities
    if (task.group) {
      SmallScores(S, q + first * hd, ld, nr, kb, ldk, nk, hd, scale);
    } else {
      Gemm<Real>(false, true, nr, nk, hd, scale, q + first * hd, ld, kb, ldk, Real(0), S, nk);
    }
    CausalSoftmaxRows(S, nr, nk, p0, p_step, lse != nullptr ? lse + first : nullptr, lse_stride);
    if (task.group) {
      SmallPV(out + first * hd, ld, nr, S, vb, ldk, nk, hd);
    } else {
      Gemm<Real>(false, false, nr, hd, nk, Real(1), S, nk, vb, ldk, Real(0), out + first * hd, ld);
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
    GRPO_CHECK_MSG(seqs[s].q_len == seqs[s].kv_len, "attention backward needs q_len == kv_len");
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
