// GRPO loss forward + backward on the GPU (grpo_loss.h): one block per sequence, fp64 throughout.
// The per-token math mirrors ComputeLoss in learner/grpo.cc line by line (the CPU file is the
// commented reference; the clamps, the strict '>' that decides "clipped" and the std::clamp /
// std::min argument order are copied from it on purpose). Each block writes one SeqRecord; the
// host checks them for errors in token order and adds them up in sequence order.
#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grpo_loss.h"

namespace grpo::cuda {

absl::Status GrpoLossConfig::Validate() const {
  // The same rules and messages as LossConfig::Validate.
  if (!(clip_low >= 0 && clip_low < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("clip_low ", clip_low, " must lie in [0, 1)"));
  }
  if (!(clip_high >= 0 && std::isfinite(clip_high))) {
    return absl::InvalidArgumentError(absl::StrCat("clip_high ", clip_high, " must be >= 0"));
  }
  if (!(dual_clip == 0 || (dual_clip > 1 && std::isfinite(dual_clip)))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dual_clip ", dual_clip, " must be 0 (off) or > 1 (verl uses 3)"));
  }
  if (!(kl_coef >= 0 && std::isfinite(kl_coef))) {
    return absl::InvalidArgumentError(absl::StrCat("kl_coef ", kl_coef, " must be >= 0"));
  }
  if (!std::isfinite(entropy_coef)) return absl::InvalidArgumentError("entropy_coef is not finite");
  if (aggregation == GrpoLossAggregation::kSeqMeanTokenSumNorm && norm_length <= 0) {
    return absl::InvalidArgumentError(
        "seq-mean-token-sum-norm needs norm_length > 0 (the generation budget in tokens)");
  }
  if (!(mismatch_cap > 0 && std::isfinite(mismatch_cap))) {
    return absl::InvalidArgumentError(absl::StrCat("mismatch_cap ", mismatch_cap, " must be > 0"));
  }
  if (!(mismatch_low >= 0 && mismatch_low < mismatch_cap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mismatch_low ", mismatch_low, " must lie in [0, mismatch_cap)"));
  }
  return absl::OkStatus();
}

namespace {

// verl's safety bounds, the values of learner/grpo.cc.
constexpr double kMaxLogRatio = 20.0;
constexpr double kMaxGspoLogRatio = 10.0;
constexpr double kMaxK3 = 10.0;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Per-sequence sums, indices into SeqRecord::sums.
enum SeqSum {
  kSumLoss,
  kSumTokens,
  kSumPgLoss,
  kSumKl,
  kSumEntropy,
  kSumClipped,
  kSumDualClipped,
  kSumRatio,
  kSumIsWeight,
  kSumIsRejected,
  kSumMismatchAbs,
  kSumMismatchTokens,
  kNumSums
};

// Why a sequence's layout is invalid (checked in this order).
enum SeqError : int32_t {
  kSeqOk,
  kOffsetsStart,     // offsets[0] != 0
  kOffsetsDecrease,  // offsets[b+1] < offsets[b]
  kOffsetsRange,     // outside [0, T], or offsets[B] != T
  kAdvantageNotFinite,
};

// The first invalid field of a token, in ComputeLoss's order of checks.
enum TokenField : int32_t {
  kFieldMask,
  kFieldLogprobs,
  kFieldOld,
  kFieldRollout,
  kFieldRef,
  kFieldEntropy,
  kNumFields
};
constexpr const char* kFieldNames[kNumFields] = {
    "mask", "logprobs", "old_logprobs", "rollout_logprobs", "ref_logprobs", "entropy"};

// NOTES: a record is fully written by thread 0 of its block on every path.
struct SeqRecord {
  double sums[kNumSums];
  double ratio_min, ratio_max;
  int64_t begin, end;  // offsets[b], offsets[b+1] as read (for messages)
  int64_t bad_token;   // first invalid token (global index) of the sequence, or -1
  int32_t bad_field;   // its TokenField
  int32_t seq_error;   // SeqError
};

// std::clamp, std::min and std::max exactly (same comparisons, so the same NaN and tie results).
__device__ __forceinline__ double StdClamp(double v, double lo, double hi) {
  return v < lo ? lo : (hi < v ? hi : v);
}
__device__ __forceinline__ double StdMin(double a, double b) { return b < a ? b : a; }
__device__ __forceinline__ double StdMax(double a, double b) { return a < b ? b : a; }

struct MinOp {
  __device__ double operator()(double a, double b) const { return StdMin(a, b); }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return StdMax(a, b); }
};
struct KeyMinOp {
  __device__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};

// Block-wide sums of K values; every thread gets them. Fixed shuffle tree, then the warps' sums
// in warp order: deterministic. sh holds K * kWarps doubles; contains __syncthreads().
template <int K>
__device__ void BlockSums(double (&v)[K], double* sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    for (int o = 16; o > 0; o /= 2) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  }
  __syncthreads();  // the previous reduction's readers are done with sh
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) sh[k * kWarps + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    double s = sh[k * kWarps];
    for (int w = 1; w < kWarps; ++w) s += sh[k * kWarps + w];
    v[k] = s;
  }
}

// Block-wide reduction of one value with an associative, commutative op; every thread gets it.
template <typename V, typename Op>
__device__ V BlockReduce(V v, V* sh, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  V r = sh[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, sh[w]);
  return r;
}

// One masked-in token's policy term after the mismatch weight (the body of ComputeLoss's loop
// up to `pg *= w`).
struct PolicyTerm {
  double ratio;  // the ratio used (token ratio, or the sequence ratio s under GSPO)
  double pg;     // weighted loss term
  double dpg;    // weighted derivative: d/d(lp) (PPO), d/d(s) * s (GSPO)
  double w;      // mismatch weight (1 without a correction)
  bool clipped, dual_clipped;
};

__device__ __forceinline__ PolicyTerm ComputePolicyTerm(const GrpoLossConfig& cfg, double A,
                                                        double lp, double old_lp, double roll_lp,
                                                        double seq_w, double gspo_log_s,
                                                        bool gspo_clamped) {
  PolicyTerm p;
  double ratio, dratio_dlp;
  if (cfg.policy_loss == GrpoPolicyLoss::kPpoClip) {
    const double log_r = lp - old_lp;
    const double clamped = StdClamp(log_r, -kMaxLogRatio, kMaxLogRatio);
    ratio = exp(clamped);
    dratio_dlp = clamped == log_r ? ratio : 0.0;
  } else {
    ratio = exp(gspo_log_s);
    dratio_dlp = gspo_clamped ? 0.0 : ratio;
  }
  const double l1 = -A * ratio;
  const double l2 = -A * StdClamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
  double pg, dpg;
  p.clipped = false;
  p.dual_clipped = false;
  if (l2 > l1) {  // the clipped branch wins: no gradient
    pg = l2;
    dpg = 0;
    p.clipped = true;
  } else {
    pg = l1;
    dpg = -A * dratio_dlp;
  }
  if (cfg.policy_loss == GrpoPolicyLoss::kPpoClip && cfg.dual_clip > 0 && A < 0) {
    const double l3 = -A * cfg.dual_clip;
    if (l3 < pg) {
      pg = l3;
      dpg = 0;
      p.dual_clipped = true;
    }
  }
  double w = seq_w;
  if (cfg.mismatch == GrpoMismatchCorrection::kTokenTis ||
      cfg.mismatch == GrpoMismatchCorrection::kTokenMis) {
    const double rho = exp(StdClamp(old_lp - roll_lp, -kMaxLogRatio, kMaxLogRatio));
    if (cfg.mismatch == GrpoMismatchCorrection::kTokenTis) {
      w = StdMin(rho, cfg.mismatch_cap);
    } else {
      w = (rho >= cfg.mismatch_low && rho <= cfg.mismatch_cap) ? rho : 0.0;
    }
  }
  p.ratio = ratio;
  p.pg = pg * w;
  p.dpg = dpg * w;
  p.w = w;
  return p;
}

// A record with zero sums; the caller fills in the sums of a valid sequence.
__device__ __forceinline__ void WriteHeader(SeqRecord* rec, int64_t begin, int64_t end,
                                            int32_t seq_error, int64_t bad_token,
                                            int32_t bad_field) {
#pragma unroll
  for (int k = 0; k < kNumSums; ++k) rec->sums[k] = 0;
  rec->ratio_min = 1e300;
  rec->ratio_max = -1e300;
  rec->begin = begin;
  rec->end = end;
  rec->bad_token = bad_token;
  rec->bad_field = bad_field;
  rec->seq_error = seq_error;
}

template <typename Real>
__device__ __forceinline__ double Load(const Real* p, int64_t t) {
  return static_cast<double>(p[t]);
}

// grid (B), block (kThreads): block b handles sequence b and writes records[b].
template <typename Real>
__global__ void __launch_bounds__(kThreads, 2)
    grpo_loss_kernel(SeqRecord* records, Real* dlogprobs, Real* dentropy, GrpoLossInput<Real> in,
                     GrpoLossConfig cfg, double norm_tokens, double norm_seqs) {
  __shared__ double sh[kNumSums * kWarps];
  __shared__ long long sh_key[kWarps];
  const int64_t b = blockIdx.x;
  SeqRecord* rec = records + b;
  const int64_t T = in.num_tokens;
  const int64_t t0 = in.offsets[b], t1 = in.offsets[b + 1];
  const double A = in.advantages[b];

  // Layout and advantage (block-uniform): never read tokens outside [0, T).
  int32_t seq_error = kSeqOk;
  if (b == 0 && t0 != 0) {
    seq_error = kOffsetsStart;
  } else if (t1 < t0) {
    seq_error = kOffsetsDecrease;
  } else if (t0 < 0 || t1 > T || (b == in.num_seqs - 1 && t1 != T)) {
    seq_error = kOffsetsRange;
  } else if (!isfinite(A)) {
    seq_error = kAdvantageNotFinite;
  }
  if (seq_error != kSeqOk) {
    if (threadIdx.x == 0) WriteHeader(rec, t0, t1, seq_error, -1, 0);
    return;
  }

  const bool gspo = cfg.policy_loss == GrpoPolicyLoss::kGspo;
  const bool need_roll = cfg.mismatch != GrpoMismatchCorrection::kNone;
  const bool seq_is = cfg.mismatch == GrpoMismatchCorrection::kSeqTis ||
                      cfg.mismatch == GrpoMismatchCorrection::kSeqMis;
  const bool has_roll = in.rollout_logprobs != nullptr;

  // Pass 1: input checks, the mask count n_b and the sequence-level log sums.
  double pre[3] = {0, 0, 0};  // n_b, sum of (lp - lp_old), sum of (lp_old - lp_roll)
  long long key = LLONG_MAX;  // t * kNumFields + field of this thread's first bad token
  for (int64_t t = t0 + threadIdx.x; t < t1; t += kThreads) {
    const double m = Load(in.mask, t);
    int32_t field = kNumFields;
    if (m != 0 && m != 1) {
      field = kFieldMask;
    } else if (m != 0) {
      if (!isfinite(Load(in.logprobs, t))) {
        field = kFieldLogprobs;
      } else if (!isfinite(Load(in.old_logprobs, t))) {
        field = kFieldOld;
      } else if (need_roll && !isfinite(Load(in.rollout_logprobs, t))) {
        field = kFieldRollout;
      } else if (cfg.kl_coef > 0 && !isfinite(Load(in.ref_logprobs, t))) {
        field = kFieldRef;
      } else if (cfg.entropy_coef != 0 && !isfinite(Load(in.entropy, t))) {
        field = kFieldEntropy;
      }
    }
    if (field != kNumFields && key == LLONG_MAX) key = t * kNumFields + field;
    pre[0] += m;
    if (m != 0) {
      if (gspo) pre[1] += Load(in.logprobs, t) - Load(in.old_logprobs, t);
      if (seq_is) pre[2] += Load(in.old_logprobs, t) - Load(in.rollout_logprobs, t);
    }
  }
  BlockSums(pre, sh);
  key = BlockReduce(key, sh_key, KeyMinOp());
  if (key != LLONG_MAX) {
    if (threadIdx.x == 0) {
      WriteHeader(rec, t0, t1, kSeqOk, key / kNumFields, static_cast<int32_t>(key % kNumFields));
    }
    return;
  }

  // Sequence-level quantities (only used when the sequence has masked-in tokens).
  const double n_b = pre[0];
  double w_agg = 0;
  double gspo_log_s = 0;
  bool gspo_clamped = false;
  double seq_w = 1.0;
  if (n_b != 0) {
    switch (cfg.aggregation) {
      case GrpoLossAggregation::kTokenMean:
        w_agg = 1.0 / norm_tokens;
        break;
      case GrpoLossAggregation::kSeqMeanTokenMean:
        w_agg = 1.0 / (norm_seqs * n_b);
        break;
      case GrpoLossAggregation::kSeqMeanTokenSumNorm:
        w_agg = 1.0 / (norm_seqs * static_cast<double>(cfg.norm_length));
        break;
      case GrpoLossAggregation::kSeqMeanTokenSum:
        w_agg = 1.0 / norm_seqs;
        break;
    }
    if (gspo) {
      gspo_log_s = pre[1] / n_b;
      if (gspo_log_s > kMaxGspoLogRatio) {
        gspo_log_s = kMaxGspoLogRatio;
        gspo_clamped = true;
      }
    }
    if (seq_is) {
      const double rho = exp(StdClamp(pre[2], -kMaxLogRatio, kMaxLogRatio));
      if (cfg.mismatch == GrpoMismatchCorrection::kSeqTis) {
        seq_w = StdMin(rho, cfg.mismatch_cap);
      } else {
        seq_w = (rho >= cfg.mismatch_low && rho <= cfg.mismatch_cap) ? rho : 0.0;
      }
    }
  }

  // Pass 2 (GSPO): s depends on every token of the sequence; each token's term sends
  // w_agg * dl/ds * s / n_b to every masked-in token (grpo.cc's gspo_grad_sum).
  double gspo_grad_sum = 0;
  if (gspo && n_b != 0) {
    double g[1] = {0};
    for (int64_t t = t0 + threadIdx.x; t < t1; t += kThreads) {
      if (Load(in.mask, t) == 0) continue;
      const double roll = has_roll ? Load(in.rollout_logprobs, t) : 0.0;
      const PolicyTerm p = ComputePolicyTerm(cfg, A, Load(in.logprobs, t), Load(in.old_logprobs, t),
                                             roll, seq_w, gspo_log_s, gspo_clamped);
      g[0] += w_agg * p.dpg / n_b;
    }
    BlockSums(g, sh);
    gspo_grad_sum = g[0];
  }

  // Pass 3: every token's loss, gradients and statistics.
  double s[kNumSums];
#pragma unroll
  for (int k = 0; k < kNumSums; ++k) s[k] = 0;
  double ratio_min = 1e300, ratio_max = -1e300;
  for (int64_t t = t0 + threadIdx.x; t < t1; t += kThreads) {
    if (Load(in.mask, t) == 0) {
      dlogprobs[t] = Real(0);
      if (dentropy != nullptr) dentropy[t] = Real(0);
      continue;
    }
    s[kSumTokens] += 1;
    const double lp = Load(in.logprobs, t), old_lp = Load(in.old_logprobs, t);
    const double roll = has_roll ? Load(in.rollout_logprobs, t) : 0.0;
    const PolicyTerm p =
        ComputePolicyTerm(cfg, A, lp, old_lp, roll, seq_w, gspo_log_s, gspo_clamped);
    if (p.clipped) s[kSumClipped] += 1;
    if (p.dual_clipped) s[kSumDualClipped] += 1;
    s[kSumRatio] += p.ratio;
    ratio_min = StdMin(ratio_min, p.ratio);
    ratio_max = StdMax(ratio_max, p.ratio);
    if (has_roll) {
      s[kSumMismatchAbs] += fabs(old_lp - roll);
      s[kSumMismatchTokens] += 1;
    }
    if (cfg.mismatch != GrpoMismatchCorrection::kNone) {
      s[kSumIsWeight] += p.w;
      if (p.w == 0) s[kSumIsRejected] += 1;
    }
    s[kSumPgLoss] += p.pg;
    const double dpg = gspo ? 0.0 : p.dpg;  // GSPO's gradient arrives through gspo_grad_sum

    double kl = 0, dkl = 0;
    if (cfg.kl_coef > 0) {
      const double d = lp - Load(in.ref_logprobs, t);
      switch (cfg.kl_estimator) {
        case GrpoKlEstimator::kK1:
          kl = d;
          dkl = 1;
          break;
        case GrpoKlEstimator::kK2:
          kl = 0.5 * d * d;
          dkl = d;
          break;
        case GrpoKlEstimator::kK3: {
          const double x = -d;
          const double xc = StdClamp(x, -kMaxLogRatio, kMaxLogRatio);
          kl = exp(xc) - xc - 1;
          dkl = xc == x ? 1 - exp(xc) : 0.0;
          if (kl > kMaxK3) {
            kl = kMaxK3;
            dkl = 0;
          }
          break;
        }
      }
      s[kSumKl] += kl;
    }
    double ent = 0;
    if (in.entropy != nullptr) {
      ent = Load(in.entropy, t);
      s[kSumEntropy] += ent;
    }

    s[kSumLoss] += w_agg * (p.pg + cfg.kl_coef * kl - cfg.entropy_coef * ent);
    double dlp = w_agg * (dpg + cfg.kl_coef * dkl);
    if (gspo_grad_sum != 0) dlp += gspo_grad_sum;
    dlogprobs[t] = static_cast<Real>(dlp);
    if (dentropy != nullptr) dentropy[t] = static_cast<Real>(-w_agg * cfg.entropy_coef);
  }
  BlockSums(s, sh);
  ratio_min = BlockReduce(ratio_min, sh, MinOp());
  ratio_max = BlockReduce(ratio_max, sh, MaxOp());
  if (threadIdx.x == 0) {
    WriteHeader(rec, t0, t1, kSeqOk, -1, 0);
#pragma unroll
    for (int k = 0; k < kNumSums; ++k) rec->sums[k] = s[k];
    rec->ratio_min = ratio_min;
    rec->ratio_max = ratio_max;
  }
}

// Records scratch per host thread and device, grown on demand (as GetScratch in common.cuh; the
// op is synchronous, so the next call never overwrites records still being read).
absl::Status RecordScratch(size_t bytes, SeqRecord** ptr) {
  thread_local std::vector<DeviceBuffer> per_device;
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  if (device >= static_cast<int>(per_device.size())) per_device.resize(device + 1);
  RETURN_IF_ERROR(per_device[device].Reserve(bytes));
  *ptr = per_device[device].as<SeqRecord>();
  return absl::OkStatus();
}

absl::Status SeqErrorStatus(const SeqRecord& r, int64_t b, int64_t B, int64_t T) {
  switch (r.seq_error) {
    case kOffsetsStart:
      return absl::InvalidArgumentError(
          absl::StrCat("loss input: offsets must start at 0 (offsets[0] is ", r.begin, ")"));
    case kOffsetsDecrease:
      return absl::InvalidArgumentError(absl::StrCat("loss input: offsets decrease (offsets[", b,
                                                     "] = ", r.begin, ", offsets[", b + 1,
                                                     "] = ", r.end, ")"));
    case kOffsetsRange:
      return absl::InvalidArgumentError(absl::StrCat(
          "loss input: offsets[", b, "..", b + 1, "] = ", r.begin, "..", r.end, " for ", T,
          " tokens (offsets must rise from 0 to T; offsets[", B, "] is T)"));
    case kAdvantageNotFinite:
      return absl::InvalidArgumentError(
          absl::StrCat("loss input: advantage ", b, " is not finite"));
    default:
      return absl::OkStatus();
  }
}

template <typename Real>
absl::StatusOr<GrpoLossResult> RunGrpoLoss(const GrpoLossInput<Real>& in,
                                           const GrpoLossNormalizer& norm,
                                           const GrpoLossConfig& cfg, Real* dlogprobs,
                                           Real* dentropy) {
  RETURN_IF_ERROR(cfg.Validate());
  const int64_t B = in.num_seqs, T = in.num_tokens;
  if (B < 1 || B > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss input: ", B, " sequences (need 1 to ", INT_MAX, ")"));
  }
  if (T < 0) return absl::InvalidArgumentError(absl::StrCat("loss input: ", T, " tokens"));
  auto check_ptr = [&](const void* p, const char* name, bool required) {
    if (!required || p != nullptr) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("loss input: ", name, " is missing (null) for ", T, " tokens"));
  };
  const bool tokens = T > 0;
  RETURN_IF_ERROR(check_ptr(in.offsets, "offsets", true));
  RETURN_IF_ERROR(check_ptr(in.advantages, "advantages", true));
  RETURN_IF_ERROR(check_ptr(in.logprobs, "logprobs", tokens));
  RETURN_IF_ERROR(check_ptr(in.old_logprobs, "old_logprobs", tokens));
  RETURN_IF_ERROR(check_ptr(in.mask, "mask", tokens));
  RETURN_IF_ERROR(check_ptr(in.rollout_logprobs, "rollout_logprobs",
                            tokens && cfg.mismatch != GrpoMismatchCorrection::kNone));
  RETURN_IF_ERROR(check_ptr(in.ref_logprobs, "ref_logprobs", tokens && cfg.kl_coef > 0));
  RETURN_IF_ERROR(check_ptr(in.entropy, "entropy", tokens && cfg.entropy_coef != 0));
  RETURN_IF_ERROR(check_ptr(dlogprobs, "dlogprobs (output)", tokens));
  if (norm.num_seqs <= 0 ||
      (cfg.aggregation == GrpoLossAggregation::kTokenMean && !(norm.num_tokens > 0))) {
    return absl::InvalidArgumentError(
        "loss normalizer is empty (no sequences or no unmasked tokens in the mini-batch)");
  }

  const size_t bytes = sizeof(SeqRecord) * static_cast<size_t>(B);
  SeqRecord* d_records = nullptr;
  RETURN_IF_ERROR(RecordScratch(bytes, &d_records));
  grpo_loss_kernel<Real><<<static_cast<unsigned>(B), kThreads, 0, Stream()>>>(
      d_records, dlogprobs, dentropy, in, cfg, norm.num_tokens, static_cast<double>(norm.num_seqs));
  RETURN_IF_ERROR(LaunchStatus("grpo_loss_kernel"));
  std::vector<SeqRecord> recs(B);
  RETURN_IF_ERROR(CudaStatus(cudaMemcpy(recs.data(), d_records, bytes, cudaMemcpyDeviceToHost),
                             "grpo_loss_kernel: reading per-sequence results"));

  // Errors in ComputeLoss's order: offsets and advantages by sequence, then tokens in order.
  for (int64_t b = 0; b < B; ++b) RETURN_IF_ERROR(SeqErrorStatus(recs[b], b, B, T));
  for (int64_t b = 0; b < B; ++b) {
    const SeqRecord& r = recs[b];
    if (r.bad_token < 0) continue;
    const int32_t f = r.bad_field;
    return absl::InvalidArgumentError(absl::StrCat("loss input: ", kFieldNames[f], "[", r.bad_token,
                                                   "] is ",
                                                   f == kFieldMask ? "not 0 or 1" : "not finite"));
  }

  // Merge in sequence order (LossStats::Merge).
  GrpoLossResult out;
  GrpoLossStats& st = out.stats;
  for (int64_t b = 0; b < B; ++b) {
    const SeqRecord& r = recs[b];
    out.loss += r.sums[kSumLoss];
    st.num_tokens += r.sums[kSumTokens];
    st.num_seqs += 1;
    st.pg_loss_sum += r.sums[kSumPgLoss];
    st.kl_sum += r.sums[kSumKl];
    st.entropy_sum += r.sums[kSumEntropy];
    st.clipped += r.sums[kSumClipped];
    st.dual_clipped += r.sums[kSumDualClipped];
    st.ratio_sum += r.sums[kSumRatio];
    st.ratio_min = std::min(st.ratio_min, r.ratio_min);
    st.ratio_max = std::max(st.ratio_max, r.ratio_max);
    st.is_weight_sum += r.sums[kSumIsWeight];
    st.is_rejected += r.sums[kSumIsRejected];
    st.mismatch_abs_sum += r.sums[kSumMismatchAbs];
    st.mismatch_tokens += r.sums[kSumMismatchTokens];
  }
  return out;
}

}  // namespace

absl::StatusOr<GrpoLossResult> GrpoLossForwardBackward(const GrpoLossInput<float>& in,
                                                       const GrpoLossNormalizer& norm,
                                                       const GrpoLossConfig& config,
                                                       float* dlogprobs, float* dentropy) {
  return RunGrpoLoss<float>(in, norm, config, dlogprobs, dentropy);
}

absl::StatusOr<GrpoLossResult> GrpoLossForwardBackward(const GrpoLossInput<double>& in,
                                                       const GrpoLossNormalizer& norm,
                                                       const GrpoLossConfig& config,
                                                       double* dlogprobs, double* dentropy) {
  return RunGrpoLoss<double>(in, norm, config, dlogprobs, dentropy);
}

}  // namespace grpo::cuda
