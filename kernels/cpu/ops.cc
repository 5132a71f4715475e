// CPU kernels for the decoder's non-GEMM ops (RMSNorm, RoPE, SwiGLU, router, logprob/entropy,
// embedding), forward and backward, instantiated for float and double. Attention lives in
// ops_attention.cc. Loops over tokens run on the OpenMP pool unless already inside a parallel
// region; reductions use `omp simd` so they vectorize without -ffast-math.
#include "kernels/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/status.h"
#include "kernels/cpu/vec_math.h"

namespace grpo::cpu {
namespace {

// Parallelize a loop over rows when not nested and the total work pays for the fork (decode's
// (64, 512) norms and SwiGLUs do not: the fork and the wake-ups cost more than the loop).
inline bool UseThreads(int64_t rows, int64_t work) {
  return rows > 1 && work >= (1 << 16) && !omp_in_parallel();
}

// 1/sqrt(mean(x^2) + eps) from a double sum of squares. Float follows HF: the mean is an fp32
// value, eps is added in fp32, then rsqrt.
template <typename Real>
inline Real RmsScale(double sum_sq, int64_t C, float eps) {
  if constexpr (std::is_same_v<Real, float>) {
    const float var = static_cast<float>(sum_sq / static_cast<double>(C));
    return 1.0f / std::sqrt(var + eps);
  } else {
    return 1.0 / std::sqrt(sum_sq / static_cast<double>(C) + static_cast<double>(eps));
  }
}

// Small per-thread scratch that survives across calls (no allocation in steady state).
template <typename T, int kSlot>
T* ThreadScratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Long reductions (over the vocabulary) sum chunks of this many elements in Real, then the
// chunk sums in double.
constexpr int64_t kSumChunk = kSoftmaxSumChunk;

// Columns per task for ops that accumulate over tokens into a (C) or (V,H) buffer.
constexpr int64_t kColBlock = 64;

}  // namespace

// ---- RMSNorm --------------------------------------------------------------------------------

template <typename Real>
void RmsNormForward(Real* out, Real* rstd, const Real* x, const Real* w, int64_t T, int64_t C,
                    float eps) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * C))
  for (int64_t t = 0; t < T; ++t) {
    const Real* xr = x + t * C;  // (C)
    Real* yr = out + t * C;      // (C)
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const Real r = RmsScale<Real>(ss, C, eps);
    if (rstd != nullptr) rstd[t] = r;
    for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * r);
  }
}

template <typename Real>
void RmsNormBackward(Real* dx, Real* dw, const Real* dout, const Real* x, const Real* w,
                     const Real* rstd, int64_t T, int64_t C) {
  // y_c = w_c x_c r, r = (mean(x^2) + eps)^-1/2, dr/dx_c = -r^3 x_c / C, so
  // dx_c = r w_c dy_c - x_c r^3 / C * sum_j w_j dy_j x_j.
  if (dx != nullptr) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * C))
    for (int64_t t = 0; t < T; ++t) {
      const Real* xr = x + t * C;      // (C)
      const Real* dyr = dout + t * C;  // (C)
      Real* dxr = dx + t * C;          // (C)
      const Real r = rstd[t];
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(w[c] * dyr[c]) * xr[c];
      const Real coef = static_cast<Real>(dot * r * r * r / static_cast<double>(C));
      for (int64_t c = 0; c < C; ++c) dxr[c] += r * w[c] * dyr[c] - xr[c] * coef;
    }
  }
  if (dw != nullptr) {
    // dw_c = sum_t dy_tc x_tc r_t: parallel over column blocks so no two threads share a dw_c.
    const int64_t nb = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (UseThreads(nb, T * C))
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kColBlock, c1 = std::min(C, c0 + kColBlock);
      double acc[kColBlock] = {};
      for (int64_t t = 0; t < T; ++t) {
        const Real r = rstd[t];
        const Real* xr = x + t * C;
        const Real* dyr = dout + t * C;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(dyr[c] * xr[c] * r);
      }
      for (int64_t c = c0; c < c1; ++c) dw[c] += static_cast<Real>(acc[c - c0]);
    }
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

template <typename Real>
void RopeTable(Real* cos, Real* sin, const float* inv_freq, int64_t max_pos, int64_t half_dim) {
#pragma omp parallel for schedule(static) if (UseThreads(max_pos, max_pos * half_dim * 16))
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int64_t j = 0; j < half_dim; ++j) {
      if constexpr (std::is_same_v<Real, float>) {
        // HF: freqs = inv_freq (fp32) x position (fp32), then cos/sin in fp32.
        const float ang = static_cast<float>(p) * inv_freq[j];
        cos[p * half_dim + j] = std::cos(ang);
        sin[p * half_dim + j] = std::sin(ang);
      } else {
        const double ang = static_cast<double>(p) * static_cast<double>(inv_freq[j]);
        cos[p * half_dim + j] = std::cos(ang);
        sin[p * half_dim + j] = std::sin(ang);
      }
    }
  }
}

// Rotates each (j, j + hd/2) pair of x (T, nh, hd) in place by angle sign * pos * inv_freq[j]:
// sign +1 is RoPE, -1 its transpose (the backward).
template <typename Real>
void RotatePairs(Real* x, const int32_t* pos, const Real* cos, const Real* sin, int64_t T,
                 int64_t nh, int64_t hd, Real sign) {
  const int64_t half = hd / 2;
#pragma omp parallel for schedule(static) if (UseThreads(T, T * nh * hd))
  for (int64_t t = 0; t < T; ++t) {
    const Real* c = cos + static_cast<int64_t>(pos[t]) * half;  // (hd/2)
    const Real* s = sin + static_cast<int64_t>(pos[t]) * half;  // (hd/2)
    for (int64_t h = 0; h < nh; ++h) {
      Real* lo = x + (t * nh + h) * hd;  // (hd/2) first half
      Real* hi = lo + half;              // (hd/2) second half
      for (int64_t j = 0; j < half; ++j) {
        const Real a = lo[j], b = hi[j], sj = sign * s[j];
        lo[j] = a * c[j] - b * sj;
        hi[j] = b * c[j] + a * sj;
      }
    }
  }
}

template <typename Real>
void RopeForward(Real* x, const int32_t* pos, const Real* cos, const Real* sin, int64_t T,
                 int64_t nh, int64_t hd) {
  RotatePairs<Real>(x, pos, cos, sin, T, nh, hd, Real(1));
}

template <typename Real>
void RopeBackward(Real* dx, const int32_t* pos, const Real* cos, const Real* sin, int64_t T,
                  int64_t nh, int64_t hd) {
  RotatePairs<Real>(dx, pos, cos, sin, T, nh, hd, Real(-1));
}

// ---- SwiGLU ---------------------------------------------------------------------------------

template <typename Real>
void SwiGluForward(Real* h, const Real* gu, int64_t T, int64_t I) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * I))
  for (int64_t t = 0; t < T; ++t) {
    const Real* g = gu + t * 2 * I;  // (I)
    const Real* u = g + I;           // (I)
    Real* hr = h + t * I;            // (I)
    for (int64_t i = 0; i < I; ++i) {
      hr[i] = g[i] / (Real(1) + VecExp<Real>(-g[i])) * u[i];  // torch silu: x / (1 + exp(-x))
    }
  }
}

template <typename Real>
void SwiGluBackward(Real* dgu, const Real* dh, const Real* gu, int64_t T, int64_t I) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * I))
  for (int64_t t = 0; t < T; ++t) {
    const Real* g = gu + t * 2 * I;
    const Real* u = g + I;
    const Real* dhr = dh + t * I;
    Real* dg = dgu + t * 2 * I;
    Real* du = dg + I;
    for (int64_t i = 0; i < I; ++i) {
      const Real sig = Real(1) / (Real(1) + VecExp<Real>(-g[i]));
      dg[i] += dhr[i] * u[i] * sig * (Real(1) + g[i] * (Real(1) - sig));
      du[i] += dhr[i] * g[i] * sig;
    }
  }
}

// ---- Router ---------------------------------------------------------------------------------

template <typename Real>
void RouterForward(Real* probs, int32_t* idx, Real* w, const Real* logits,
                   const int32_t* forced_idx, int64_t T, int64_t E, int64_t K, bool norm_topk) {
  GRPO_CHECK(K >= 1 && K <= E);
  // Per row an exp per expert, a partial sort and the top-k weights: ~64 operations per expert.
#pragma omp parallel for schedule(static) if (UseThreads(T, T * E * 64))
  for (int64_t t = 0; t < T; ++t) {
    const Real* lg = logits + t * E;  // (E)
    Real* p = probs + t * E;          // (E)
    int32_t* id = idx + t * K;        // (K)
    Real* wr = w + t * K;             // (K)
    const Real m = RowMax(lg, E);
    Real sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = VecExp<Real>(lg[e] - m);
      sum += p[e];
    }
    const Real inv = Real(1) / sum;  // torch's softmax multiplies by the reciprocal
    for (int64_t e = 0; e < E; ++e) p[e] *= inv;

    if (forced_idx != nullptr) {
      for (int64_t j = 0; j < K; ++j) {
        const int32_t e = forced_idx[t * K + j];
        GRPO_CHECK_MSG(e >= 0 && e < E, "forced expert id out of range");
        id[j] = e;
      }
    } else {
      int32_t* order = ThreadScratch<int32_t, 0>(E);
      std::iota(order, order + E, 0);
      std::partial_sort(order, order + K, order + E, [p](int32_t a, int32_t b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      std::copy(order, order + K, id);
    }
    Real s = 0;
    for (int64_t j = 0; j < K; ++j) {
      wr[j] = p[id[j]];
      s += wr[j];
    }
    if (norm_topk) {
      for (int64_t j = 0; j < K; ++j) wr[j] /= s;
    }
  }
}

template <typename Real>
void RouterBackward(Real* dlogits, const Real* dw, const Real* dprobs_extra, const Real* probs,
                    const int32_t* idx, const Real* w, int64_t T, int64_t E, int64_t K,
                    bool norm_topk) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * E * 4))
  for (int64_t t = 0; t < T; ++t) {
    const Real* p = probs + t * E;         // (E)
    const int32_t* id = idx + t * K;       // (K)
    Real* dp = ThreadScratch<Real, 1>(E);  // (E) gradient on probs
    if (dprobs_extra != nullptr) {
      std::copy(dprobs_extra + t * E, dprobs_extra + (t + 1) * E, dp);
    } else {
      std::fill(dp, dp + E, Real(0));
    }
    if (dw != nullptr) {
      const Real* dwr = dw + t * K;  // (K)
      if (norm_topk) {
        // w_j = p_j / S, S = sum_m p_m: dp_j = (dw_j - sum_m dw_m w_m) / S.
        const Real* wr = w + t * K;
        Real s = 0, dot = 0;
        for (int64_t j = 0; j < K; ++j) {
          s += p[id[j]];
          dot += dwr[j] * wr[j];
        }
        for (int64_t j = 0; j < K; ++j) dp[id[j]] += (dwr[j] - dot) / s;
      } else {
        for (int64_t j = 0; j < K; ++j) dp[id[j]] += dwr[j];
      }
    }
    // Softmax backward: dlogit_e = p_e (dp_e - sum_m p_m dp_m).
    Real pdp = 0;
    for (int64_t e = 0; e < E; ++e) pdp += p[e] * dp[e];
    Real* dl = dlogits + t * E;
    for (int64_t e = 0; e < E; ++e) dl[e] += p[e] * (dp[e] - pdp);
  }
}

// ---- Logprob and entropy --------------------------------------------------------------------

namespace {

// One row of LogprobForward: m = max(z), s = sum exp(z - m), sz = sum exp(z - m) (z - m) over
// z = logits / tau, summed in chunks of kSumChunk in Real (one type per loop so GCC vectorizes
// the exp) with the totals in double. kKeep: also w[v] = exp(z_v - m) and chunk_sums[c] = the
// chunk's Real sum, from the very same loop, so a sampler drawing from w gets the arithmetic whose
// logprob LogprobForward reports.
// row_max, when not null, is RowMax(lg, V), known already. kEntropy false: no sz (*sz_out 0).
template <typename Real, bool kKeep, bool kEntropy = true>
void RowExpSums(const Real* lg, int64_t V, Real rtau, const Real* row_max, Real* m_out,
                double* s_out, double* sz_out, Real* w, Real* chunk_sums) {
  // Division is monotone for tau > 0, so max(z) = max(logits) / tau exactly.
  const Real m = (row_max != nullptr ? *row_max : RowMax(lg, V)) / rtau;
  // s = sum exp(z - m), sz = sum exp(z - m) (z - m): lse = m + log s, ent = log s - sz / s
  // (the same as lse - sum p z, without the cancellation of two large numbers).
  double s = 0, sz = 0;
  for (int64_t v0 = 0; v0 < V; v0 += kSumChunk) {
    const int64_t v1 = std::min(V, v0 + kSumChunk);
    Real cs = 0, csz = 0;
    if (rtau == Real(1)) {  // x / 1 is x exactly: the same bits without the divisions
#pragma omp simd reduction(+ : cs, csz)
      for (int64_t v = v0; v < v1; ++v) {
        const Real d = lg[v] - m;
        const Real e = VecExp<Real>(d);
        if constexpr (kKeep) w[v] = e;
        cs += e;
        if constexpr (kEntropy) csz += e * d;
      }
    } else {
#pragma omp simd reduction(+ : cs, csz)
      for (int64_t v = v0; v < v1; ++v) {
        const Real d = lg[v] / rtau - m;
        const Real e = VecExp<Real>(d);
        if constexpr (kKeep) w[v] = e;
        cs += e;
        if constexpr (kEntropy) csz += e * d;
      }
    }
    if constexpr (kKeep) chunk_sums[v0 / kSumChunk] = cs;
    s += cs;
    sz += csz;
  }
  *m_out = m;
  *s_out = s;
  *sz_out = sz;
}

}  // namespace

template <typename Real>
void LogprobForward(Real* lp, Real* ent, Real* lse, const Real* logits, const int32_t* target,
                    int64_t T, int64_t V, float tau) {
  const Real rtau = static_cast<Real>(tau);
#pragma omp parallel for schedule(static) if (UseThreads(T, T * V))
  for (int64_t t = 0; t < T; ++t) {
    const Real* lg = logits + t * V;  // (V)
    Real m;
    double s, sz;
    RowExpSums<Real, false>(lg, V, rtau, nullptr, &m, &s, &sz, nullptr, nullptr);
    const double log_s = std::log(s);
    if (lse != nullptr) lse[t] = static_cast<Real>(static_cast<double>(m) + log_s);
    if (ent != nullptr) ent[t] = static_cast<Real>(log_s - sz / s);
    if (lp != nullptr) {
      const int32_t tg = target != nullptr ? target[t] : -1;
      GRPO_CHECK_MSG(tg < V, "target id out of range");
      lp[t] = tg < 0 ? Real(0) : static_cast<Real>(static_cast<double>(lg[tg] / rtau - m) - log_s);
    }
  }
}

float SoftmaxWeights(const float* logits, int64_t V, float tau, float* w, float* chunk_sums,
                     double* total) {
  float m;
  double sz;
  RowExpSums<float, true>(logits, V, tau, nullptr, &m, total, &sz, w, chunk_sums);
  return m;
}

float RowLogprob(const float* logits, int64_t V, float tau, float row_max, int32_t token) {
  GRPO_CHECK_MSG(token >= 0 && token < V, "target id out of range");
  float m;
  double s, sz;
  RowExpSums<float, false, false>(logits, V, tau, &row_max, &m, &s, &sz, nullptr, nullptr);
  return LogprobFromWeights(logits, tau, m, s, token);
}

float LogprobFromWeights(const float* logits, float tau, float m, double total, int32_t token) {
  return static_cast<float>(static_cast<double>(logits[token] / tau - m) - std::log(total));
}

template <typename Real>
void LogprobBackwardInPlace(Real* logits, const Real* dlp, const Real* dent, const Real* lse,
                            const int32_t* target, int64_t T, int64_t V, float tau) {
  const Real rtau = static_cast<Real>(tau);
  const Real inv_tau = Real(1) / rtau;
#pragma omp parallel for schedule(static) if (UseThreads(T, T * V))
  for (int64_t t = 0; t < T; ++t) {
    Real* lg = logits + t * V;  // (V) logits in, dlogits out
    const Real l = lse[t];
    const int32_t tg = target != nullptr ? target[t] : -1;
    const Real a = (dlp != nullptr && tg >= 0) ? dlp[t] : Real(0);
    const Real b = dent != nullptr ? dent[t] : Real(0);
    if (b != Real(0)) {
      // The entropy is not saved: recompute ent = -sum p log p, log p = z - lse.
      double acc = 0;
      for (int64_t v0 = 0; v0 < V; v0 += kSumChunk) {
        const int64_t v1 = std::min(V, v0 + kSumChunk);
        Real c = 0;
#pragma omp simd reduction(+ : c)
        for (int64_t v = v0; v < v1; ++v) {
          const Real lz = lg[v] / rtau - l;
          c += VecExp<Real>(lz) * lz;
        }
        acc += c;
      }
      const Real ent = static_cast<Real>(-acc);
      // dlp: -p; dent: d(-sum p log p)/dz_v = -p_v (log p_v + ent).
      for (int64_t v = 0; v < V; ++v) {
        const Real lz = lg[v] / rtau - l;
        const Real p = VecExp<Real>(lz);
        lg[v] = (-a * p - b * p * (lz + ent)) * inv_tau;
      }
    } else {
      for (int64_t v = 0; v < V; ++v) {
        const Real p = VecExp<Real>(lg[v] / rtau - l);
        lg[v] = -a * p * inv_tau;
      }
    }
    if (tg >= 0) {
      GRPO_CHECK_MSG(tg < V, "target id out of range");
      lg[tg] += a * inv_tau;
    }
  }
}

// ---- Embedding ------------------------------------------------------------------------------

template <typename Real>
void EmbeddingForward(Real* out, const int32_t* tokens, const Real* table, int64_t T, int64_t H) {
#pragma omp parallel for schedule(static) if (UseThreads(T, T * H))
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(out + t * H, table + static_cast<int64_t>(tokens[t]) * H, H * sizeof(Real));
  }
}

template <typename Real>
void EmbeddingBackward(Real* dtable, const int32_t* tokens, const Real* dout, int64_t T, int64_t H,
                       int64_t V) {
  for (int64_t t = 0; t < T; ++t) {
    GRPO_CHECK_MSG(tokens[t] >= 0 && tokens[t] < V, "token id out of range");
  }
  // Parallel over column blocks: a repeated token hits the same dtable row, never the same column.
  const int64_t nb = (H + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (UseThreads(nb, T * H))
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t c0 = b * kColBlock, c1 = std::min(H, c0 + kColBlock);
    for (int64_t t = 0; t < T; ++t) {
      Real* dst = dtable + static_cast<int64_t>(tokens[t]) * H;
      const Real* src = dout + t * H;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

// ---- Explicit instantiations ----------------------------------------------------------------

#define GRPO_INSTANTIATE_OPS(Real)                                                                 \
  template void RmsNormForward<Real>(Real*, Real*, const Real*, const Real*, int64_t, int64_t,     \
                                     float);                                                       \
  template void RmsNormBackward<Real>(Real*, Real*, const Real*, const Real*, const Real*,         \
                                      const Real*, int64_t, int64_t);                              \
  template void RopeTable<Real>(Real*, Real*, const float*, int64_t, int64_t);                     \
  template void RopeForward<Real>(Real*, const int32_t*, const Real*, const Real*, int64_t,        \
                                  int64_t, int64_t);                                               \
  template void RopeBackward<Real>(Real*, const int32_t*, const Real*, const Real*, int64_t,       \
                                   int64_t, int64_t);                                              \
  template void SwiGluForward<Real>(Real*, const Real*, int64_t, int64_t);                         \
  template void SwiGluBackward<Real>(Real*, const Real*, const Real*, int64_t, int64_t);           \
  template void RouterForward<Real>(Real*, int32_t*, Real*, const Real*, const int32_t*, int64_t,  \
                                    int64_t, int64_t, bool);                                       \
  template void RouterBackward<Real>(Real*, const Real*, const Real*, const Real*, const int32_t*, \
                                     const Real*, int64_t, int64_t, int64_t, bool);                \
  template void LogprobForward<Real>(Real*, Real*, Real*, const Real*, const int32_t*, int64_t,    \
                                     int64_t, float);                                              \
  template void LogprobBackwardInPlace<Real>(Real*, const Real*, const Real*, const Real*,         \
                                             const int32_t*, int64_t, int64_t, float);             \
  template void EmbeddingForward<Real>(Real*, const int32_t*, const Real*, int64_t, int64_t);      \
  template void EmbeddingBackward<Real>(Real*, const int32_t*, const Real*, int64_t, int64_t,      \
                                        int64_t);

GRPO_INSTANTIATE_OPS(float)
GRPO_INSTANTIATE_OPS(double)
#undef GRPO_INSTANTIATE_OPS

}  // namespace grpo::cpu
