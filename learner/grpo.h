// GRPO and its variants as plain fp64 math over flat arrays: group advantages, the per-token policy
// loss (PPO clip with DAPO clip-higher and dual-clip, or GSPO's sequence-level ratio), the KL to a
// reference policy (k1/k2/k3, in the loss), an entropy bonus, rollout-mismatch corrections
// (token/sequence TIS and MIS) and loss aggregation with mini-batch-wide normalizers. Each loss
// call returns the loss value, d(loss)/d(logprob) per token (what Model::Backward takes) and
// statistics. Formulas and defaults: /work/shared/ALGORITHMS.md §1, §3-§7 (section numbers below).
//
// Not here: models, sampling, optimizers (learner/optimizer.h), the training loop
// (learner/trainer.h).
//
// Layout: a batch of B response sequences is packed; sequence b owns tokens
// [offsets[b], offsets[b+1]) of every per-token array (T = offsets[B] tokens). Only response tokens
// appear here (no prompt), and mask[t] in {0, 1} says whether token t counts (0: padding, an
// overlong-filtered response, ...).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace grpo {

// ---- Advantages (§1.2, §3, §7.1) ----

enum class AdvantageEstimator {
  kGrpo,      // (R - mean_group) / (std_group + eps), unbiased std          (DeepSeekMath, verl)
  kDrGrpo,    // R - mean_group                                                 (Dr. GRPO)
  kBatchStd,  // (R - mean_group) / (std over the whole batch + eps)           (TRL
              // scale_rewards=batch)
  kRloo,      // R - mean of the other G-1 rewards; a group of one gets R      (RLOO)
};

absl::StatusOr<AdvantageEstimator> ParseAdvantageEstimator(const std::string& name);
const char* AdvantageEstimatorName(AdvantageEstimator e);

struct AdvantageConfig {
  AdvantageEstimator estimator = AdvantageEstimator::kGrpo;
  double eps = 1e-6;  // verl's value; added to the std, never a replacement for it
};

// rewards (N) are grouped contiguously: group g is the next group_sizes[g] rewards. Returns one
// advantage per reward. A group whose rewards are all equal gets 0 for every member (GRPO, Dr.
// GRPO, RLOO; batch-std too since the centred rewards are 0). Errors: sizes that do not add up to
// N, a size < 1, a non-finite reward, and a group of one under kGrpo (the unbiased std of one
// value does not exist; the config must use G >= 2).
absl::StatusOr<std::vector<double>> ComputeAdvantages(absl::Span<const double> rewards,
                                                      absl::Span<const int64_t> group_sizes,
                                                      const AdvantageConfig& config);

// Dynamic sampling (DAPO §4.2): true for each group whose rewards are not all equal (keep it).
std::vector<bool> GroupsWithSignal(absl::Span<const double> rewards,
                                   absl::Span<const int64_t> group_sizes);

// ---- Policy loss ----

enum class PolicyLossType {
  kPpoClip,  // token ratio r = exp(lp - lp_old), clipped to [1 - clip_low, 1 + clip_high] (§1.8)
  kGspo,     // sequence ratio s = exp(mean_t(lp - lp_old)) in the GSPO-token form (§5.1)
};
enum class KlEstimator { kK1, kK2, kK3 };  // §1.4
enum class LossAggregation {
  kTokenMean,            // sum m*l / (tokens in the mini-batch)                      (DAPO, verl)
  kSeqMeanTokenMean,     // (1/N) sum_i (1/|o_i|) sum_t m*l                            (GRPO paper)
  kSeqMeanTokenSumNorm,  // (1/N) sum_i (1/L) sum_t m*l, L = norm_length              (Dr. GRPO)
  kSeqMeanTokenSum,      // (1/N) sum_i sum_t m*l
};
enum class MismatchCorrection {  // §6; weights pi_old / pi_rollout, stop-gradient
  kNone,
  kTokenTis,  // w_t = min(rho_t, cap)
  kTokenMis,  // w_t = rho_t inside [mis_low, cap], else 0
  kSeqTis,    // w = min(rho_seq, cap), rho_seq = exp(sum_t log rho_t)
  kSeqMis,    // w = rho_seq inside [mis_low, cap], else 0
};

absl::StatusOr<PolicyLossType> ParsePolicyLossType(const std::string& name);
absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name);
absl::StatusOr<LossAggregation> ParseLossAggregation(const std::string& name);
absl::StatusOr<MismatchCorrection> ParseMismatchCorrection(const std::string& name);

struct LossConfig {
  PolicyLossType policy_loss = PolicyLossType::kPpoClip;
  double clip_low = 0.2;   // eps_low (verl clip_ratio_low)
  double clip_high = 0.2;  // eps_high; DAPO clip-higher uses 0.28
  // Dual-clip (PPO only): for A < 0 the loss is capped at -A * c. 0 turns it off; otherwise > 1.
  double dual_clip = 3.0;
  double kl_coef = 0.0;  // beta; 0: no reference model needed
  KlEstimator kl_estimator = KlEstimator::kK3;
  double entropy_coef = 0.0;  // loss -= coef * entropy (verl/TRL default 0)
  LossAggregation aggregation = LossAggregation::kTokenMean;
  int64_t norm_length = 0;  // L for kSeqMeanTokenSumNorm (the generation budget); > 0 there
  MismatchCorrection mismatch = MismatchCorrection::kNone;
  double mismatch_cap = 2.0;  // C (verl rollout_is_threshold)
  double mismatch_low = 0.5;  // lower edge of the MIS band

  absl::Status Validate() const;
};

// Normalizers of one mini-batch, computed over ALL its sequences before any micro-batch backward
// so that summing the micro-batches' losses and gradients gives the mini-batch's (§1.5, §13.4).
struct LossNormalizer {
  double num_tokens = 0;  // sum of the mask over the mini-batch
  int64_t num_seqs = 0;   // sequences in the mini-batch
};
LossNormalizer ComputeNormalizer(absl::Span<const int64_t> offsets, absl::Span<const double> mask);

// One micro-batch of response tokens. Spans are (T) unless noted; optional ones may be empty.
struct LossInput {
  absl::Span<const int64_t> offsets;          // (B+1)
  absl::Span<const double> logprobs;          // lp under the current policy (differentiated)
  absl::Span<const double> old_logprobs;      // lp_old
  absl::Span<const double> rollout_logprobs;  // lp_roll; required when mismatch != kNone
  absl::Span<const double> ref_logprobs;      // lp_ref; required when kl_coef > 0
  absl::Span<const double> entropy;           // required when entropy_coef != 0
  absl::Span<const double> mask;              // 0 or 1
  absl::Span<const double> advantages;        // (B) one per sequence
};

// Sums over the tokens (or sequences) seen; Merge() adds another micro-batch's.
struct LossStats {
  double num_tokens = 0;  // masked-in tokens
  double num_seqs = 0;
  double pg_loss_sum = 0;  // sum of policy-loss terms (after IS weights), per token
  double kl_sum = 0;       // sum of the configured KL estimator over tokens
  double entropy_sum = 0;
  double clipped = 0;       // tokens whose ratio was clipped (the clipped branch won)
  double dual_clipped = 0;  // tokens capped by dual-clip
  double ratio_sum = 0, ratio_min = 1e300, ratio_max = -1e300;
  double is_weight_sum = 0;     // sum of mismatch weights (tokens)
  double is_rejected = 0;       // tokens whose MIS weight is 0
  double mismatch_abs_sum = 0;  // sum |lp_old - lp_roll| (when rollout logprobs are given)
  double mismatch_tokens = 0;

  void Merge(const LossStats& o);
  double Mean(double sum) const { return num_tokens > 0 ? sum / num_tokens : 0.0; }
};

struct LossOutput {
  double loss = 0;                // this micro-batch's share of the mini-batch loss
  std::vector<double> dlogprobs;  // (T) d(loss)/d(logprobs)
  std::vector<double> dentropy;   // (T) d(loss)/d(entropy); zeros when entropy_coef == 0
  LossStats stats;
};

// Errors: spans of the wrong length, a missing required span, non-finite inputs among masked-in
// tokens, a mask value other than 0/1, an empty normalizer.
absl::StatusOr<LossOutput> ComputeLoss(const LossInput& in, const LossNormalizer& norm,
                                       const LossConfig& config);

}  // namespace grpo
