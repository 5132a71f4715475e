// CUDA kernels for the decoder, the GPU twins of kernels/cpu/ops.h: forward and backward of every
// non-GEMM op (GEMMs: device.h). No CUDA types here; every pointer is a device pointer. bf16
// tensors are passed as bf16_bits (their 16-bit patterns); accumulation is always fp32.
//
// Conventions: all launches go on the default stream (or, inside a DeviceGraph capture, the
// capture stream: device.h) and are asynchronous; a returned error is a
// launch/configuration error (execution errors appear at the next Synchronize()). Row-major dense
// buffers. Unlike the CPU ops, backward functions OVERWRITE their data-gradient outputs unless a
// comment says "+=" (parameter gradients always accumulate). Ops share device scratch, so one host
// thread at a time may drive them (the model and the rollout worker each own the device in turn).
// Shape letters as in cpu/ops.h:
// T tokens, C channels, H hidden, E experts, K top-k, V vocab, nh/nkv heads, hd head dim.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cuda/device.h"

namespace grpo::cuda {

// ---- Elementwise. -------------------------------------------------------------------------------
absl::Status CastToBf16(bf16_bits* out, const float* in, int64_t n);
absl::Status CastToFloat(float* out, const bf16_bits* in, int64_t n);
// y (R, C) += b (C) broadcast over rows.
absl::Status AddRowBias(float* y, const float* b, int64_t R, int64_t C);
// out (C) += column sums of in (R, C), in a fixed order (deterministic).
absl::Status ColumnSumAdd(float* out, const float* in, int64_t R, int64_t C);

// ---- Embedding. ---------------------------------------------------------------------------------
// x (T, H) fp32 = table[tokens[t]] (table (V, H) bf16).
absl::Status EmbeddingForward(float* x, const int32_t* tokens, const bf16_bits* table, int64_t T,
                              int64_t H);
// dtable (V, H) += dx scattered by token (fp32 atomics: summation order of repeated tokens is not
// fixed, so not bitwise reproducible when a token repeats).
absl::Status EmbeddingBackward(float* dtable, const int32_t* tokens, const float* dx, int64_t T,
                               int64_t H);

// ---- RMSNorm over rows of C channels. -----------------------------------------------------------
// out (T, C) in fp32 (out_f32) and/or bf16 (out_bf16); either may be null. rstd (T).
absl::Status RmsNormForward(float* out_f32, bf16_bits* out_bf16, float* rstd, const float* x,
                            const float* w, int64_t T, int64_t C, float eps);
// dx (T, C) += (like the CPU op), dw (C) += (may be null).
absl::Status RmsNormBackward(float* dx, float* dw, const float* dout, const float* x,
                             const float* w, const float* rstd, int64_t T, int64_t C);

// ---- Attention block input: q/k/v from the fused projection. ------------------------------------
// qkv (T, nh*hd + 2*nkv*hd) fp32 is the projection output (bias not yet added). Per token: add
// bias (may be null), per-head RMSNorm of q and k when q_norm/k_norm are non-null (rstd_q (T,nh),
// rstd_k (T,nkv) saved), RoPE at pos[t] (cos/sin (max_pos, hd/2) fp32, rotate_half layout).
// q (T, nh, hd) fp32; k and v (bf16) go to rows kv_row[t] of kbuf/vbuf (rows of nkv*hd); kv_row
// null means row t.
struct QkvDims {
  int64_t T, nh, nkv, hd;
};
absl::Status QkvForward(float* q, bf16_bits* kbuf, bf16_bits* vbuf, float* rstd_q, float* rstd_k,
                        const float* qkv, const float* bias, const float* q_norm,
                        const float* k_norm, const int32_t* pos, const int64_t* kv_row,
                        const float* cos, const float* sin, QkvDims d, float eps);
// Backward: dq (T,nh,hd), dk (T,nkv,hd), dv (T,nkv,hd) fp32 in; dqkv (T, nh*hd + 2*nkv*hd) fp32
// out (overwritten). dq/dk are used as scratch (destroyed). q_norm/k_norm grads (hd) +=.
absl::Status QkvBackward(float* dqkv, float* dq_norm, float* dk_norm, float* dq, float* dk,
                         const float* dv, const float* qkv, const float* bias, const float* q_norm,
                         const float* k_norm, const float* rstd_q, const float* rstd_k,
                         const int32_t* pos, const float* cos, const float* sin, QkvDims d);

// ---- Causal GQA attention (flash-style: never materializes scores). -----------------------------
// Sequence s: its queries are rows q_begin..q_begin+q_len-1 of q/out; its keys/values are the
// positions 0..kv_len-1, query i sits at position kv_len - q_len + i and sees keys 0..that
// position. Positions [0, kv_shared) are rows shared_begin.. of k/v (a prompt several sequences
// read in place: a rollout group's samples), positions [kv_shared, kv_len) rows kv_begin.. of
// k/v. Covers training (q_len == kv_len, no shared rows), prefill and decode over a KV cache.
struct AttnSeq {
  int64_t q_begin, q_len, kv_begin, kv_len;
  int64_t shared_begin = 0, kv_shared = 0;
};
// out (T, nh, hd) bf16, lse (T, nh) fp32 (may be null), q (T, nh, hd) fp32, k/v rows (nkv*hd)
// bf16. seqs is a HOST span, uploaded when it differs from the last one (every layer of a forward
// reuses it). Even head dim hd <= 256.
absl::Status AttentionForward(bf16_bits* out, float* lse, const float* q, const bf16_bits* k,
                              const bf16_bits* v, absl::Span<const AttnSeq> seqs, int64_t nh,
                              int64_t nkv, int64_t hd, float scale);
// The same with the sequence table already on the device (seqs: num_seqs entries, device
// memory; max_q_len >= the largest q_len), so that no host copy is made: what a captured decode
// step (DeviceGraph) uses, its table uploaded with the step's other inputs. The table is not
// validated here; the caller keeps 0 <= kv_shared <= kv_len - q_len.
absl::Status AttentionForwardDevice(bf16_bits* out, float* lse, const float* q, const bf16_bits* k,
                                    const bf16_bits* v, const AttnSeq* seqs, int64_t num_seqs,
                                    int64_t max_q_len, int64_t nh, int64_t nkv, int64_t hd,
                                    float scale);
// Training backward (q_len == kv_len, kv_begin == q_begin). dq (T,nh,hd), dk/dv (T,nkv,hd) fp32,
// overwritten. delta (T, nh) fp32 scratch. Deterministic (no atomics).
absl::Status AttentionBackward(float* dq, float* dk, float* dv, float* delta, const bf16_bits* dout,
                               const bf16_bits* out, const float* lse, const float* q,
                               const bf16_bits* k, const bf16_bits* v,
                               absl::Span<const AttnSeq> seqs, int64_t T, int64_t nh, int64_t nkv,
                               int64_t hd, float scale);

// ---- SwiGLU: h = silu(g) * u, gu (N, 2I) = [g | u]. --------------------------------------------
absl::Status SwiGluForward(bf16_bits* h, const float* gu, int64_t N, int64_t I);
// dgu (N, 2I) bf16 (overwritten) from dh (N, I) fp32.
absl::Status SwiGluBackward(bf16_bits* dgu, const float* dh, const float* gu, int64_t N, int64_t I);

// ---- MoE router and token permutation. ----------------------------------------------------------
// probs (T,E) = softmax(logits); idx (T,K) = top-K descending (ties: lower id), or forced_idx
// (replay, may be null); w (T,K) = probs[idx] (normalized to sum 1 when norm_topk). E <= 1024.
absl::Status RouterForward(float* probs, int32_t* idx, float* w, const float* logits,
                           const int32_t* forced_idx, int64_t T, int64_t E, int64_t K,
                           bool norm_topk);
// dlogits (T,E) overwritten, from dw (T,K) and dprobs_extra (E) (one row added to every token's
// d(probs), e.g. the load-balancing loss; may be null).
absl::Status RouterBackward(float* dlogits, const float* dw, const float* dprobs_extra,
                            const float* probs, const int32_t* idx, const float* w, int64_t T,
                            int64_t E, int64_t K, bool norm_topk);
// counts (E) int32 = how many of the T*K (token, k) pairs chose each expert.
absl::Status MoeCount(int32_t* counts, const int32_t* idx, int64_t NK, int64_t E);
// Stable dispatch given expert_begin (E+1, device, prefix sums of counts): rows grouped by expert,
// tokens ascending within an expert (the CPU model's order). slot_token (rows) = token of each
// dispatched row (entries not written stay as they were: a padded layout presets them to -1);
// slot_of (NK) = dispatched row of pair (t, k).
absl::Status MoeAssign(int32_t* slot_token, int32_t* slot_of, const int32_t* idx,
                       const int64_t* expert_begin, int64_t NK, int64_t K, int64_t E);
// xe (NK, H) = x[slot_token[r]] (bf16 rows); rows with slot_token < 0 (padding) become zeros.
absl::Status GatherRows(bf16_bits* xe, const bf16_bits* x, const int32_t* slot_token, int64_t NK,
                        int64_t H);
// out (T, H) += sum_k w[t,k] * ye[slot_of[t,k]].
absl::Status MoeCombine(float* out, const float* ye, const float* w, const int32_t* slot_of,
                        int64_t T, int64_t K, int64_t H);
// dye (NK, H) bf16 = w[t,k] * dout[t] at slot_of[t,k]; dw (T,K) = <dout[t], ye[slot_of[t,k]]>.
absl::Status MoeCombineBackward(bf16_bits* dye, float* dw, const float* dout, const float* ye,
                                const float* w, const int32_t* slot_of, int64_t T, int64_t K,
                                int64_t H);
// dx (T, H) += sum_k dxe[slot_of[t,k]] (gather form: deterministic).
absl::Status MoeGatherAdd(float* dx, const float* dxe, const int32_t* slot_of, int64_t T, int64_t K,
                          int64_t H);

// begin (E+1, device int64) = 0 then the running sums of counts (E, device): the packed expert
// row ranges, computed where the counts are (no host round trip).
absl::Status ExpertBeginFromCounts(int64_t* begin, const int32_t* counts, int64_t E);
// y[rows, out] (fp32, overwritten) = x[rows, in] (bf16) @ W_g[out, in]^T for the rows
// [begin[g], begin[g+1]) of each group g, begin a DEVICE array (num_groups+1), W_g = W + g*out*in:
// GroupedLinearForward (device.h) without the host sizes. Tensor cores (WMMA bf16, fp32
// accumulation). max_rows: the caller's bound on a group's rows (sizes the grid; larger groups
// are still computed, with fewer blocks). Fastest with in % 8 == 0 and 16-byte aligned x and W
// (16-byte loads); any shape works.
absl::Status GroupedLinearForwardDevice(float* y, const bf16_bits* x, const bf16_bits* W,
                                        const int64_t* begin, int64_t num_groups, int64_t max_rows,
                                        int64_t in, int64_t out);

// ---- Logprobs and entropy over the vocabulary at temperature tau. -------------------------------
// Per row t of logits (T, V) fp32: lse, lp = logits[target]/tau - lse (0 when target < 0),
// entropy. Any pointer among lp/ent/lse may be null.
absl::Status LogprobForward(float* lp, float* ent, float* lse, const float* logits,
                            const int32_t* target, int64_t T, int64_t V, float tau);
// dlogits (T, V) bf16 from dlp (T) and dent (T, may be null), given the forward's lse.
absl::Status LogprobBackward(bf16_bits* dlogits, const float* logits, const float* dlp,
                             const float* dent, const float* lse, const int32_t* target, int64_t T,
                             int64_t V, float tau);

// ---- Sampling. ----------------------------------------------------------------------------------
// out (B) = token per row of logits (B, V): temperature <= 0 is argmax (lowest id on ties);
// otherwise softmax(logits / temperature) restricted to the top_k most likely tokens (0: all) and
// to the smallest set of most likely tokens whose mass reaches top_p (1: all), renormalized, then
// inverse CDF in vocabulary order at u[b] in [0, 1) (u device (B)).
absl::Status SampleTokens(int32_t* out, const float* logits, const float* u, int64_t B, int64_t V,
                          float temperature, int64_t top_k, float top_p);

// ---- Optimizer. ---------------------------------------------------------------------------------
// Fused AdamW (decoupled weight decay, bias-corrected, `step` counted from 1) on fp32 master
// weights p, moments m and v; also writes the bf16 copy p_bf16 (may be null).
struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;
};
absl::Status AdamW(float* p, bf16_bits* p_bf16, const float* g, float* m, float* v, int64_t n,
                   AdamWParams a);

}  // namespace grpo::cuda
