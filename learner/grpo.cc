// GRPO math (see grpo.h). Everything in fp64; gradients are written out by hand next to each
// value (ALGORITHMS.md §1.9) and checked against finite differences in tests/learner/grpo_test.cc.
#include "learner/grpo.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {
namespace {

// verl's safety bounds (§13.5): log-ratios clamped before exp, k3 capped.
constexpr double kMaxLogRatio = 20.0;
constexpr double kMaxGspoLogRatio = 10.0;
constexpr double kMaxK3 = 10.0;

bool AllEqual(absl::Span<const double> r) {
  for (double x : r) {
    if (x != r[0]) return false;
  }
  return true;
}

double Mean(absl::Span<const double> r) {
  double s = 0;
  for (double x : r) s += x;
  return s / static_cast<double>(r.size());
}

// Unbiased (Bessel) standard deviation; r.size() >= 2.
double UnbiasedStd(absl::Span<const double> r) {
  const double m = Mean(r);
  double ss = 0;
  for (double x : r) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(r.size() - 1));
}

}  // namespace

absl::StatusOr<AdvantageEstimator> ParseAdvantageEstimator(const std::string& name) {
  if (name == "grpo") return AdvantageEstimator::kGrpo;
  if (name == "dr_grpo") return AdvantageEstimator::kDrGrpo;
  if (name == "batch_std") return AdvantageEstimator::kBatchStd;
  if (name == "rloo") return AdvantageEstimator::kRloo;
  return absl::InvalidArgumentError(absl::StrCat("unknown advantage estimator '", name,
                                                 "'; use grpo, dr_grpo, batch_std or rloo"));
}

const char* AdvantageEstimatorName(AdvantageEstimator e) {
  switch (e) {
    case AdvantageEstimator::kGrpo:
      return "grpo";
    case AdvantageEstimator::kDrGrpo:
      return "dr_grpo";
    case AdvantageEstimator::kBatchStd:
      return "batch_std";
    case AdvantageEstimator::kRloo:
      return "rloo";
  }
  return "?";
}

absl::StatusOr<std::vector<double>> ComputeAdvantages(absl::Span<const double> rewards,
                                                      absl::Span<const int64_t> group_sizes,
                                                      const AdvantageConfig& config) {
  int64_t total = 0;
  for (size_t g = 0; g < group_sizes.size(); ++g) {
    if (group_sizes[g] < 1) {
      return absl::InvalidArgumentError(absl::StrCat("group ", g, " has size ", group_sizes[g]));
    }
    if (group_sizes[g] == 1 && config.estimator == AdvantageEstimator::kGrpo) {
      return absl::InvalidArgumentError(
          "GRPO advantages need at least 2 samples per group (the std of one reward is undefined); "
          "set rollout.group_size >= 2 or use the rloo / dr_grpo estimator");
    }
    total += group_sizes[g];
  }
  if (total != static_cast<int64_t>(rewards.size())) {
    return absl::InvalidArgumentError(absl::StrCat("group sizes add up to ", total,
                                                   " but there are ", rewards.size(), " rewards"));
  }
  for (size_t i = 0; i < rewards.size(); ++i) {
    if (!std::isfinite(rewards[i])) {
      return absl::InvalidArgumentError(absl::StrCat("reward ", i, " is not finite"));
    }
  }
  double batch_std = 0;
  if (config.estimator == AdvantageEstimator::kBatchStd) {
    if (rewards.size() < 2) {
      return absl::InvalidArgumentError(
          "batch_std advantages need at least 2 rewards in the batch");
    }
    batch_std = AllEqual(rewards) ? 0.0 : UnbiasedStd(rewards);
  }
  std::vector<double> adv(rewards.size(), 0.0);
  int64_t begin = 0;
  for (int64_t n : group_sizes) {
    const absl::Span<const double> r = rewards.subspan(begin, n);
    // All-equal groups: exactly 0 (r - mean can be a rounding error away from 0 otherwise).
    if (!AllEqual(r) || (config.estimator == AdvantageEstimator::kRloo && n == 1)) {
      const double mean = Mean(r);
      for (int64_t i = 0; i < n; ++i) {
        const double c = r[i] - mean;
        double a = 0;
        switch (config.estimator) {
          case AdvantageEstimator::kGrpo:
            a = c / (UnbiasedStd(r) + config.eps);
            break;
          case AdvantageEstimator::kDrGrpo:
            a = c;
            break;
          case AdvantageEstimator::kBatchStd:
            a = c / (batch_std + config.eps);
            break;
          case AdvantageEstimator::kRloo:
            a = n == 1 ? r[i] : c * static_cast<double>(n) / static_cast<double>(n - 1);
            break;
        }
        adv[begin + i] = a;
      }
    }
    begin += n;
  }
  return adv;
}

std::vector<bool> GroupsWithSignal(absl::Span<const double> rewards,
                                   absl::Span<const int64_t> group_sizes) {
  std::vector<bool> keep;
  int64_t begin = 0;
  for (int64_t n : group_sizes) {
    keep.push_back(!AllEqual(rewards.subspan(begin, n)));
    begin += n;
  }
  return keep;
}

absl::StatusOr<PolicyLossType> ParsePolicyLossType(const std::string& name) {
  if (name == "ppo_clip") return PolicyLossType::kPpoClip;
  if (name == "gspo") return PolicyLossType::kGspo;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy loss '", name, "'; use ppo_clip or gspo"));
}

absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name) {
  if (name == "k1") return KlEstimator::kK1;
  if (name == "k2") return KlEstimator::kK2;
  if (name == "k3") return KlEstimator::kK3;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KL estimator '", name, "'; use k1, k2 or k3"));
}

absl::StatusOr<LossAggregation> ParseLossAggregation(const std::string& name) {
  if (name == "token-mean") return LossAggregation::kTokenMean;
  if (name == "seq-mean-token-mean") return LossAggregation::kSeqMeanTokenMean;
  if (name == "seq-mean-token-sum-norm") return LossAggregation::kSeqMeanTokenSumNorm;
  if (name == "seq-mean-token-sum") return LossAggregation::kSeqMeanTokenSum;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown loss aggregation '", name,
      "'; use token-mean, seq-mean-token-mean, seq-mean-token-sum-norm or seq-mean-token-sum"));
}

absl::StatusOr<MismatchCorrection> ParseMismatchCorrection(const std::string& name) {
  if (name == "none") return MismatchCorrection::kNone;
  if (name == "token_tis") return MismatchCorrection::kTokenTis;
  if (name == "token_mis") return MismatchCorrection::kTokenMis;
  if (name == "seq_tis") return MismatchCorrection::kSeqTis;
  if (name == "seq_mis") return MismatchCorrection::kSeqMis;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mismatch correction '", name,
                   "'; use none, token_tis, token_mis, seq_tis or seq_mis"));
}

absl::Status LossConfig::Validate() const {
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
  if (aggregation == LossAggregation::kSeqMeanTokenSumNorm && norm_length <= 0) {
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

LossNormalizer ComputeNormalizer(absl::Span<const int64_t> offsets, absl::Span<const double> mask) {
  LossNormalizer n;
  n.num_seqs = offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1;
  for (double m : mask) n.num_tokens += m;
  return n;
}

void LossStats::Merge(const LossStats& o) {
  num_tokens += o.num_tokens;
  num_seqs += o.num_seqs;
  pg_loss_sum += o.pg_loss_sum;
  kl_sum += o.kl_sum;
  entropy_sum += o.entropy_sum;
  clipped += o.clipped;
  dual_clipped += o.dual_clipped;
  ratio_sum += o.ratio_sum;
  ratio_min = std::min(ratio_min, o.ratio_min);
  ratio_max = std::max(ratio_max, o.ratio_max);
  is_weight_sum += o.is_weight_sum;
  is_rejected += o.is_rejected;
  mismatch_abs_sum += o.mismatch_abs_sum;
  mismatch_tokens += o.mismatch_tokens;
}

absl::StatusOr<LossOutput> ComputeLoss(const LossInput& in, const LossNormalizer& norm,
                                       const LossConfig& cfg) {
  RETURN_IF_ERROR(cfg.Validate());
  if (in.offsets.size() < 2 || in.offsets[0] != 0) {
    return absl::InvalidArgumentError("loss input: offsets must start at 0 and hold B+1 entries");
  }
  const int64_t B = static_cast<int64_t>(in.offsets.size()) - 1;
  const int64_t T = in.offsets[B];
  auto check_len = [&](absl::Span<const double> s, const char* name, bool required) {
    if (s.empty() && !required) return absl::OkStatus();
    if (static_cast<int64_t>(s.size()) != T) {
      return absl::InvalidArgumentError(
          absl::StrCat("loss input: ", name, " has ", s.size(), " values for ", T, " tokens"));
    }
    return absl::OkStatus();
  };
  const bool need_roll = cfg.mismatch != MismatchCorrection::kNone;
  RETURN_IF_ERROR(check_len(in.logprobs, "logprobs", true));
  RETURN_IF_ERROR(check_len(in.old_logprobs, "old_logprobs", true));
  RETURN_IF_ERROR(check_len(in.mask, "mask", true));
  RETURN_IF_ERROR(check_len(in.rollout_logprobs, "rollout_logprobs", need_roll));
  RETURN_IF_ERROR(check_len(in.ref_logprobs, "ref_logprobs", cfg.kl_coef > 0));
  RETURN_IF_ERROR(check_len(in.entropy, "entropy", cfg.entropy_coef != 0));
  if (static_cast<int64_t>(in.advantages.size()) != B) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss input: ", in.advantages.size(), " advantages for ", B, " sequences"));
  }
  for (int64_t b = 0; b < B; ++b) {
    if (in.offsets[b + 1] < in.offsets[b]) {
      return absl::InvalidArgumentError("loss input: offsets decrease");
    }
    if (!std::isfinite(in.advantages[b])) {
      return absl::InvalidArgumentError(
          absl::StrCat("loss input: advantage ", b, " is not finite"));
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    if (in.mask[t] != 0 && in.mask[t] != 1) {
      return absl::InvalidArgumentError(absl::StrCat("loss input: mask[", t, "] is not 0 or 1"));
    }
    if (in.mask[t] == 0) continue;
    bool finite = std::isfinite(in.logprobs[t]) && std::isfinite(in.old_logprobs[t]);
    if (need_roll) finite = finite && std::isfinite(in.rollout_logprobs[t]);
    if (cfg.kl_coef > 0) finite = finite && std::isfinite(in.ref_logprobs[t]);
    if (cfg.entropy_coef != 0) finite = finite && std::isfinite(in.entropy[t]);
    if (!finite) {
      return absl::InvalidArgumentError(
          absl::StrCat("loss input: token ", t, " has a non-finite logprob"));
    }
  }
  if (norm.num_seqs <= 0 ||
      (cfg.aggregation == LossAggregation::kTokenMean && !(norm.num_tokens > 0))) {
    return absl::InvalidArgumentError(
        "loss normalizer is empty (no sequences or no unmasked tokens in the mini-batch)");
  }

  LossOutput out;
  out.dlogprobs.assign(T, 0.0);
  out.dentropy.assign(T, 0.0);
  LossStats& st = out.stats;
  const double N = static_cast<double>(norm.num_seqs);

  for (int64_t b = 0; b < B; ++b) {
    const int64_t t0 = in.offsets[b], t1 = in.offsets[b + 1];
    double n_b = 0;
    for (int64_t t = t0; t < t1; ++t) n_b += in.mask[t];
    st.num_seqs += 1;
    if (n_b == 0) continue;
    const double A = in.advantages[b];

    // Aggregation weight of each of this sequence's tokens (uniform within a sequence).
    double w_agg = 0;
    switch (cfg.aggregation) {
      case LossAggregation::kTokenMean:
        w_agg = 1.0 / norm.num_tokens;
        break;
      case LossAggregation::kSeqMeanTokenMean:
        w_agg = 1.0 / (N * n_b);
        break;
      case LossAggregation::kSeqMeanTokenSumNorm:
        w_agg = 1.0 / (N * static_cast<double>(cfg.norm_length));
        break;
      case LossAggregation::kSeqMeanTokenSum:
        w_agg = 1.0 / N;
        break;
    }

    // Sequence-level quantities: the GSPO ratio and the sequence IS weight.
    double gspo_log_s = 0;
    bool gspo_clamped = false;
    if (cfg.policy_loss == PolicyLossType::kGspo) {
      for (int64_t t = t0; t < t1; ++t) {
        if (in.mask[t] != 0) gspo_log_s += in.logprobs[t] - in.old_logprobs[t];
      }
      gspo_log_s /= n_b;
      if (gspo_log_s > kMaxGspoLogRatio) {
        gspo_log_s = kMaxGspoLogRatio;
        gspo_clamped = true;
      }
    }
    double seq_w = 1.0;
    if (cfg.mismatch == MismatchCorrection::kSeqTis ||
        cfg.mismatch == MismatchCorrection::kSeqMis) {
      double log_rho = 0;
      for (int64_t t = t0; t < t1; ++t) {
        if (in.mask[t] != 0) log_rho += in.old_logprobs[t] - in.rollout_logprobs[t];
      }
      const double rho = std::exp(std::clamp(log_rho, -kMaxLogRatio, kMaxLogRatio));
      if (cfg.mismatch == MismatchCorrection::kSeqTis) {
        seq_w = std::min(rho, cfg.mismatch_cap);
      } else {
        seq_w = (rho >= cfg.mismatch_low && rho <= cfg.mismatch_cap) ? rho : 0.0;
      }
    }

    double gspo_grad_sum = 0;
    for (int64_t t = t0; t < t1; ++t) {
      if (in.mask[t] == 0) continue;
      st.num_tokens += 1;
      const double lp = in.logprobs[t];

      // Policy term: value l and dl/dlp before the IS weight.
      double ratio, dratio_dlp;  // the ratio used and d(ratio)/d(lp)
      if (cfg.policy_loss == PolicyLossType::kPpoClip) {
        const double log_r = lp - in.old_logprobs[t];
        const double clamped = std::clamp(log_r, -kMaxLogRatio, kMaxLogRatio);
        ratio = std::exp(clamped);
        dratio_dlp = clamped == log_r ? ratio : 0.0;
      } else {
        // Sequence ratio s = exp(mean_t(lp - lp_old)); its gradient is spread below.
        ratio = std::exp(gspo_log_s);
        dratio_dlp = gspo_clamped ? 0.0 : ratio;
      }
      const double l1 = -A * ratio;
      const double l2 = -A * std::clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
      double pg, dpg;
      if (l2 > l1) {  // the clipped branch wins: its ratio sits at a bound, so no gradient
        pg = l2;
        dpg = 0;
        st.clipped += 1;
      } else {
        pg = l1;
        dpg = -A * dratio_dlp;
      }
      if (cfg.policy_loss == PolicyLossType::kPpoClip && cfg.dual_clip > 0 && A < 0) {
        const double l3 = -A * cfg.dual_clip;
        if (l3 < pg) {
          pg = l3;
          dpg = 0;
          st.dual_clipped += 1;
        }
      }
      st.ratio_sum += ratio;
      st.ratio_min = std::min(st.ratio_min, ratio);
      st.ratio_max = std::max(st.ratio_max, ratio);

      // Mismatch weight (a constant: §13.7).
      double w = seq_w;
      if (cfg.mismatch == MismatchCorrection::kTokenTis ||
          cfg.mismatch == MismatchCorrection::kTokenMis) {
        const double rho = std::exp(
            std::clamp(in.old_logprobs[t] - in.rollout_logprobs[t], -kMaxLogRatio, kMaxLogRatio));
        if (cfg.mismatch == MismatchCorrection::kTokenTis) {
          w = std::min(rho, cfg.mismatch_cap);
        } else {
          w = (rho >= cfg.mismatch_low && rho <= cfg.mismatch_cap) ? rho : 0.0;
        }
      }
      if (!in.rollout_logprobs.empty()) {
        st.mismatch_abs_sum += std::abs(in.old_logprobs[t] - in.rollout_logprobs[t]);
        st.mismatch_tokens += 1;
      }
      if (cfg.mismatch != MismatchCorrection::kNone) {
        st.is_weight_sum += w;
        if (w == 0) st.is_rejected += 1;
      }
      pg *= w;
      dpg *= w;
      st.pg_loss_sum += pg;
      if (cfg.policy_loss == PolicyLossType::kGspo) {
        // s depends on every token of the sequence: token t's term w_agg * w * l(s) sends
        // w_agg * w * dl/ds * s / n_b to each token. Collected here, spread after the loop (equal
        // to verl's GSPO-token gradient when the weights are uniform within the sequence).
        gspo_grad_sum += w_agg * dpg / n_b;
        dpg = 0;
      }

      // KL to the reference (§1.4, §1.9).
      double kl = 0, dkl = 0;
      if (cfg.kl_coef > 0) {
        const double d = lp - in.ref_logprobs[t];
        switch (cfg.kl_estimator) {
          case KlEstimator::kK1:
            kl = d;
            dkl = 1;
            break;
          case KlEstimator::kK2:
            kl = 0.5 * d * d;
            dkl = d;
            break;
          case KlEstimator::kK3: {
            const double x = -d;  // lp_ref - lp
            const double xc = std::clamp(x, -kMaxLogRatio, kMaxLogRatio);
            kl = std::exp(xc) - xc - 1;
            dkl = xc == x ? 1 - std::exp(xc) : 0.0;
            if (kl > kMaxK3) {
              kl = kMaxK3;
              dkl = 0;
            }
            break;
          }
        }
        st.kl_sum += kl;
      }
      double ent = 0;
      if (!in.entropy.empty()) {
        ent = in.entropy[t];
        st.entropy_sum += ent;
      }

      out.loss += w_agg * (pg + cfg.kl_coef * kl - cfg.entropy_coef * ent);
      out.dlogprobs[t] = w_agg * (dpg + cfg.kl_coef * dkl);
      out.dentropy[t] = -w_agg * cfg.entropy_coef;
    }
    if (gspo_grad_sum != 0) {
      for (int64_t t = t0; t < t1; ++t) {
        if (in.mask[t] != 0) out.dlogprobs[t] += gspo_grad_sum;
      }
    }
  }
  return out;
}

}  // namespace grpo
