// The GRPO loss on the GPU: forward and backward in one op, the twin of grpo::ComputeLoss
// (learner/grpo.h) with the same formulas, clamps, stop-gradients, statistics and input checks.
// Math is fp64 on the device whatever the input type, so the result agrees with the CPU loss to
// rounding (tests/gpu/grpo_loss_test.cc). No CUDA types here; every pointer is a device pointer.
//
// Not here: advantages (computed on the host), the vocabulary-head backward that consumes
// dlogprobs/dentropy (LogprobBackward in ops.h). This library does not link the learner, so the
// config below mirrors grpo::LossConfig field by field; callers map one onto the other.
//
// Layout as LossInput: B sequences packed; sequence b owns tokens [offsets[b], offsets[b+1]) of
// every per-token array (T = offsets[B]); mask[t] in {0, 1}.
// Element type Real (float or double) is that of the per-token arrays and of dlogprobs/dentropy:
// float where they come from the model and go to LogprobBackward (inputs widen exactly; outputs
// are rounded once from fp64), double for bit-for-bit CPU inputs.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpo::cuda {

// Mirrors of PolicyLossType, KlEstimator, LossAggregation and MismatchCorrection (same meaning).
enum class GrpoPolicyLoss { kPpoClip, kGspo };
enum class GrpoKlEstimator { kK1, kK2, kK3 };
enum class GrpoLossAggregation {
  kTokenMean,
  kSeqMeanTokenMean,
  kSeqMeanTokenSumNorm,
  kSeqMeanTokenSum
};
enum class GrpoMismatchCorrection { kNone, kTokenTis, kTokenMis, kSeqTis, kSeqMis };

// Mirror of LossConfig: same fields, defaults and Validate() rules.
struct GrpoLossConfig {
  GrpoPolicyLoss policy_loss = GrpoPolicyLoss::kPpoClip;
  double clip_low = 0.2;
  double clip_high = 0.2;
  double dual_clip = 3.0;  // PPO only; 0 turns it off
  double kl_coef = 0.0;
  GrpoKlEstimator kl_estimator = GrpoKlEstimator::kK3;
  double entropy_coef = 0.0;
  GrpoLossAggregation aggregation = GrpoLossAggregation::kTokenMean;
  int64_t norm_length = 0;
  GrpoMismatchCorrection mismatch = GrpoMismatchCorrection::kNone;
  double mismatch_cap = 2.0;
  double mismatch_low = 0.5;

  absl::Status Validate() const;
};

// Mini-batch normalizers, as LossNormalizer (computed on the host over the whole mini-batch).
struct GrpoLossNormalizer {
  double num_tokens = 0;
  int64_t num_seqs = 0;
};

// One micro-batch, all device pointers. Per-token arrays are (T); optional ones may be null
// (any may be null when T == 0). As on the CPU, optional arrays that are given count even when
// not required: rollout_logprobs feed the mismatch statistics, entropy feeds entropy_sum.
template <typename Real>
struct GrpoLossInput {
  int64_t num_seqs = 0;                    // B >= 1
  int64_t num_tokens = 0;                  // T; must equal offsets[B]
  const int64_t* offsets = nullptr;        // (B+1)
  const Real* logprobs = nullptr;          // lp (differentiated)
  const Real* old_logprobs = nullptr;      // lp_old
  const Real* rollout_logprobs = nullptr;  // lp_roll; required when mismatch != kNone
  const Real* ref_logprobs = nullptr;      // lp_ref; required when kl_coef > 0
  const Real* entropy = nullptr;           // required when entropy_coef != 0
  const Real* mask = nullptr;              // 0 or 1
  const double* advantages = nullptr;      // (B)
};

// LossStats field by field (sums over this micro-batch; the same sentinels for ratio min/max).
struct GrpoLossStats {
  double num_tokens = 0;
  double num_seqs = 0;
  double pg_loss_sum = 0;
  double kl_sum = 0;
  double entropy_sum = 0;
  double clipped = 0;
  double dual_clipped = 0;
  double ratio_sum = 0, ratio_min = 1e300, ratio_max = -1e300;
  double is_weight_sum = 0;
  double is_rejected = 0;
  double mismatch_abs_sum = 0;
  double mismatch_tokens = 0;
};

struct GrpoLossResult {
  double loss = 0;  // this micro-batch's share of the mini-batch loss
  GrpoLossStats stats;
};

// Writes dlogprobs (T) = d(loss)/d(logprobs) and dentropy (T) = d(loss)/d(entropy) (may be null:
// not written), both OVERWRITTEN (0 on masked-out tokens), and returns the loss and statistics.
// One thread block per sequence; each reduces its tokens in a fixed tree and the host adds the
// B per-sequence results in sequence order: bitwise reproducible run to run.
// Synchronous (it reads B small records back), on the default stream; it uses a per-thread,
// per-device scratch of B records (one host thread at a time per scratch, as ops.h).
// Errors (InvalidArgument, naming the field and token or sequence), as ComputeLoss: an invalid
// config; B < 1, T < 0, a required pointer null (checked before launch); an empty normalizer;
// offsets not starting at 0, decreasing or not ending at T; a non-finite advantage; a mask value
// other than 0/1; a non-finite value among the required per-token arrays on a masked-in token
// (the first bad token in token order is reported, as the CPU does). On error the outputs are
// unspecified. Device failures: Internal.
absl::StatusOr<GrpoLossResult> GrpoLossForwardBackward(const GrpoLossInput<float>& in,
                                                       const GrpoLossNormalizer& norm,
                                                       const GrpoLossConfig& config,
                                                       float* dlogprobs, float* dentropy);
absl::StatusOr<GrpoLossResult> GrpoLossForwardBackward(const GrpoLossInput<double>& in,
                                                       const GrpoLossNormalizer& norm,
                                                       const GrpoLossConfig& config,
                                                       double* dlogprobs, double* dentropy);

}  // namespace grpo::cuda
