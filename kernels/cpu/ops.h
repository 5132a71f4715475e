// CPU kernels for the decoder: forward and backward of every non-GEMM op, templated on the
// scalar (float for real work, double for the fp64 reference path used by gradient checks).
// All buffers are row-major and dense unless a stride is given. Backward functions ACCUMULATE
// into their gradient outputs (dx += ..., dw += ...); callers zero them first. No op allocates
// per call beyond small per-thread scratch.
//
// Shape letters: T tokens (all sequences packed), C channels, H hidden, E experts, K top-k,
// V vocab, nh query heads, nkv key/value heads, hd head dim.
#pragma once

#include <cstdint>

namespace grpo::cpu {

// ---- RMSNorm: y = w * x / sqrt(mean(x^2) + eps), per row of C channels. --------------------
// out (T,C), rstd (T) saved for backward, x (T,C), w (C).
template <typename Real>
void RmsNormForward(Real* out, Real* rstd, const Real* x, const Real* w, int64_t T, int64_t C,
                    float eps);
// dx (T,C) +=, dw (C) += (may be null), dout (T,C), x (T,C), w (C), rstd (T).
template <typename Real>
void RmsNormBackward(Real* dx, Real* dw, const Real* dout, const Real* x, const Real* w,
                     const Real* rstd, int64_t T, int64_t C);

// ---- RoPE, rotate_half layout: dims j and j + hd/2 rotate together by angle pos * inv_freq[j].
// Table: cos/sin (max_pos, hd/2), filled by RopeTable. x (T, nh, hd) rotated in place; pos (T).
template <typename Real>
void RopeTable(Real* cos, Real* sin, const float* inv_freq, int64_t max_pos, int64_t half_dim);
template <typename Real>
void RopeForward(Real* x, const int32_t* pos, const Real* cos, const Real* sin, int64_t T,
                 int64_t nh, int64_t hd);
// In place: dx = R(pos)^T dy (the rotation's transpose).
template <typename Real>
void RopeBackward(Real* dx, const int32_t* pos, const Real* cos, const Real* sin, int64_t T,
                  int64_t nh, int64_t hd);

// ---- Causal GQA attention over packed sequences. ---------------------------------------------
// One entry per sequence. Queries q_begin..q_begin+q_len-1 of the packed q/out buffers belong to
// it; its keys/values are the kv_len positions 0..kv_len-1 (each row nkv*hd wide). Query i sits at
// absolute position kv_len - q_len + i and sees keys 0..that position (causal, prefix cache ok).
// Positions [0, kv_shared) are rows 0.. of k_shared/v_shared (a prompt prefix that several
// sequences read in place: the rollout engine's group samples); positions [kv_shared, kv_len)
// are rows 0.. of k/v. Where the rows live does not change a bit of the result.
template <typename Real>
struct AttnSeq {
  int64_t q_begin;
  int64_t q_len;
  const Real* k;  // (kv_len - kv_shared, nkv, hd)
  const Real* v;  // (kv_len - kv_shared, nkv, hd)
  int64_t kv_len;
  const Real* k_shared = nullptr;  // (kv_shared, nkv, hd)
  const Real* v_shared = nullptr;  // (kv_shared, nkv, hd)
  int64_t kv_shared = 0;           // forward only; AttentionBackward takes 0
};
// out (T, nh, hd), lse (T, nh) logsumexp of the scaled scores (saved for backward; may be null),
// q (T, nh, hd). scale = 1/sqrt(hd) normally. Scores and softmax in Real precision.
template <typename Real>
void AttentionForward(Real* out, Real* lse, const Real* q, const AttnSeq<Real>* seqs,
                      int64_t num_seqs, int64_t nh, int64_t nkv, int64_t hd, Real scale);
// Backward for training (no prefix: q_len == kv_len, k/v rows are the same tokens as q rows).
// dq (T,nh,hd) +=, dk/dv (T,nkv,hd) += at rows q_begin.., recomputing probabilities from lse.
// dk_base/dv_base are the packed (T,nkv,hd) gradient buffers; seqs[i].k/v point into the packed
// forward k/v at row seqs[i].q_begin.
template <typename Real>
void AttentionBackward(Real* dq, Real* dk_base, Real* dv_base, const Real* dout, const Real* out,
                       const Real* lse, const Real* q, const AttnSeq<Real>* seqs,
                       int64_t num_seqs, int64_t nh, int64_t nkv, int64_t hd, Real scale);

// ---- SwiGLU: h = silu(g) * u with gu (T, 2I) = [g | u] per row. ------------------------------
template <typename Real>
void SwiGluForward(Real* h, const Real* gu, int64_t T, int64_t I);
// dgu (T,2I) += from dh (T,I).
template <typename Real>
void SwiGluBackward(Real* dgu, const Real* dh, const Real* gu, int64_t T, int64_t I);

// ---- Softmax top-k router. -----------------------------------------------------------------
// probs (T,E) = softmax(logits) over all experts. If forced_idx is null, idx (T,K) = the K
// largest probs in descending order (ties: lower expert id first); else idx = forced_idx (replay).
// w (T,K) = probs[idx], divided by their sum when norm_topk.
template <typename Real>
void RouterForward(Real* probs, int32_t* idx, Real* w, const Real* logits,
                   const int32_t* forced_idx, int64_t T, int64_t E, int64_t K, bool norm_topk);
// dlogits (T,E) += from dw (T,K) and dprobs_extra (T,E) (a gradient on probs from e.g. the
// load-balancing loss; may be null).
template <typename Real>
void RouterBackward(Real* dlogits, const Real* dw, const Real* dprobs_extra, const Real* probs,
                    const int32_t* idx, const Real* w, int64_t T, int64_t E, int64_t K,
                    bool norm_topk);

// ---- Token logprobs and entropy at temperature tau from logits (T,V). ----------------------
// z = logits / tau; lse = logsumexp(z); lp[t] = z[target[t]] - lse; ent[t] = lse - sum p z.
// target[t] < 0 marks "no target" (lp = 0, entropy still computed). lse (T) saved.
template <typename Real>
void LogprobForward(Real* lp, Real* ent, Real* lse, const Real* logits, const int32_t* target,
                    int64_t T, int64_t V, float tau);
// For samplers, one row of LogprobForward's arithmetic, kept: w[v] = exp(z_v - m) (V floats) with
// m = max z (returned), chunk_sums (SoftmaxWeightChunks(V) floats) the sums of consecutive chunks
// of w as LogprobForward adds them, *total their double sum. LogprobFromWeights then gives bitwise
// the lp LogprobForward reports for that token (the learner's logprob of a sampled token).
inline constexpr int64_t kSoftmaxSumChunk = 1024;  // chunk c is w[c * 1024, (c + 1) * 1024)
inline int64_t SoftmaxWeightChunks(int64_t V) {
  return (V + kSoftmaxSumChunk - 1) / kSoftmaxSumChunk;
}
float SoftmaxWeights(const float* logits, int64_t V, float tau, float* w, float* chunk_sums,
                     double* total);
float LogprobFromWeights(const float* logits, float tau, float m, double total, int32_t token);
// LogprobForward's lp of `token` for one row, bitwise, given row_max == RowMax(logits, V) (a
// greedy sampler's argmax pass has it): one pass over the row, not two, and no entropy sum.
float RowLogprob(const float* logits, int64_t V, float tau, float row_max, int32_t token);
// Overwrites logits (T,V) with dloss/dlogits given dlp (T) and dent (T; may be null).
template <typename Real>
void LogprobBackwardInPlace(Real* logits, const Real* dlp, const Real* dent, const Real* lse,
                            const int32_t* target, int64_t T, int64_t V, float tau);

// ---- Embedding. --------------------------------------------------------------------------------
// out (T,H) = table[tokens[t]]; dtable (V,H) += scatter of dout by token.
template <typename Real>
void EmbeddingForward(Real* out, const int32_t* tokens, const Real* table, int64_t T, int64_t H);
template <typename Real>
void EmbeddingBackward(Real* dtable, const int32_t* tokens, const Real* dout, int64_t T,
                       int64_t H, int64_t V);

}  // namespace grpo::cpu
