// Tests for learner/grpo.h in fp64: advantages on hand-computed groups (all-equal groups, G = 1),
// each policy-loss / KL / aggregation / mismatch mode on small hand-computed examples, and
// d(loss)/d(logprob) and d(loss)/d(entropy) against central finite differences for every mode.
#include "learner/grpo.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace grpo {
namespace {

using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

std::vector<double> Adv(std::vector<double> r, std::vector<int64_t> sizes, AdvantageEstimator e,
                        double eps = 1e-6) {
  AdvantageConfig c;
  c.estimator = e;
  c.eps = eps;
  auto a = ComputeAdvantages(r, sizes, c);
  INFO(a.status().ToString());
  REQUIRE(a.ok());
  return *a;
}

TEST_CASE("GRPO advantages: unbiased std plus eps, per group", "[grpo]") {
  // Group [1, 0, 1, 0]: mean 0.5, unbiased std sqrt(1/3).
  const double s = std::sqrt(1.0 / 3.0);
  auto a = Adv({1, 0, 1, 0, 3, 1}, {4, 2}, AdvantageEstimator::kGrpo);
  CHECK_THAT(a[0], WithinRel(0.5 / (s + 1e-6), 1e-14));
  CHECK_THAT(a[1], WithinRel(-0.5 / (s + 1e-6), 1e-14));
  // Group [3, 1]: mean 2, unbiased std sqrt(2).
  CHECK_THAT(a[4], WithinRel(1.0 / (std::sqrt(2.0) + 1e-6), 1e-14));
  CHECK_THAT(a[5], WithinRel(-1.0 / (std::sqrt(2.0) + 1e-6), 1e-14));
}

TEST_CASE("Dr. GRPO, RLOO and batch-std advantages", "[grpo]") {
  auto dr = Adv({1, 0, 1, 0}, {4}, AdvantageEstimator::kDrGrpo);
  CHECK(dr == std::vector<double>{0.5, -0.5, 0.5, -0.5});
  auto rloo = Adv({1, 0, 1, 0}, {4}, AdvantageEstimator::kRloo);
  // 1 - mean(0, 1, 0) = 2/3 ; 0 - mean(1, 1, 0) = -2/3.
  CHECK_THAT(rloo[0], WithinRel(2.0 / 3.0, 1e-14));
  CHECK_THAT(rloo[1], WithinRel(-2.0 / 3.0, 1e-14));
  CHECK(Adv({0.25}, {1}, AdvantageEstimator::kRloo) == std::vector<double>{0.25});
  // Batch [1,0,1,0,2,2,2,2]: mean 1.25, sum of squares 5.5, unbiased std sqrt(5.5/7).
  auto b = Adv({1, 0, 1, 0, 2, 2, 2, 2}, {4, 4}, AdvantageEstimator::kBatchStd);
  const double bs = std::sqrt(5.5 / 7.0);
  CHECK_THAT(b[0], WithinRel(0.5 / (bs + 1e-6), 1e-14));
  CHECK_THAT(b[1], WithinRel(-0.5 / (bs + 1e-6), 1e-14));
  for (int i = 4; i < 8; ++i) CHECK(b[i] == 0.0);
}

TEST_CASE("all-equal groups get exactly zero advantage in every estimator", "[grpo]") {
  // 0.1 * 3 / 3 != 0.1 in binary: a naive r - mean would be a rounding error away from 0.
  for (auto e : {AdvantageEstimator::kGrpo, AdvantageEstimator::kDrGrpo,
                 AdvantageEstimator::kBatchStd, AdvantageEstimator::kRloo}) {
    auto a = Adv({0.1, 0.1, 0.1, 1, 0, 0}, {3, 3}, e);
    CAPTURE(AdvantageEstimatorName(e));
    CHECK(a[0] == 0.0);
    CHECK(a[1] == 0.0);
    CHECK(a[2] == 0.0);
    CHECK(a[3] > 0);
  }
  CHECK(GroupsWithSignal({0.1, 0.1, 0.1, 1, 0, 0, 5, 5}, {3, 3, 2}) ==
        std::vector<bool>{false, true, false});
}

TEST_CASE("advantage errors: G = 1 under GRPO, bad sizes, non-finite rewards", "[grpo]") {
  AdvantageConfig c;
  auto g1 = ComputeAdvantages(std::vector<double>{1, 0}, std::vector<int64_t>{1, 1}, c);
  REQUIRE(!g1.ok());
  CHECK(std::string(g1.status().message()).find("group_size >= 2") != std::string::npos);
  CHECK(!ComputeAdvantages(std::vector<double>{1, 0, 1}, std::vector<int64_t>{2}, c).ok());
  CHECK(!ComputeAdvantages(std::vector<double>{1, NAN}, std::vector<int64_t>{2}, c).ok());
  CHECK(!ComputeAdvantages(std::vector<double>{1, 0}, std::vector<int64_t>{0, 2}, c).ok());
}

// A small batch as owned vectors, viewed as a LossInput.
struct Batch {
  std::vector<int64_t> offsets;
  std::vector<double> lp, old_lp, roll_lp, ref_lp, ent, mask, adv;
  LossInput View() const {
    LossInput in;
    in.offsets = offsets;
    in.logprobs = lp;
    in.old_logprobs = old_lp;
    in.rollout_logprobs = roll_lp;
    in.ref_logprobs = ref_lp;
    in.entropy = ent;
    in.mask = mask;
    in.advantages = adv;
    return in;
  }
};

LossOutput Loss(const Batch& b, const LossConfig& c) {
  auto out = ComputeLoss(b.View(), ComputeNormalizer(b.offsets, b.mask), c);
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  return *out;
}

// One token per sequence, with the ratio r = exp(lp - lp_old) given directly.
Batch Tokens(std::vector<double> ratios, std::vector<double> adv) {
  Batch b;
  b.offsets = {0};
  for (size_t i = 0; i < ratios.size(); ++i) {
    b.old_lp.push_back(-1.0);
    b.lp.push_back(-1.0 + std::log(ratios[i]));
    b.mask.push_back(1);
    b.offsets.push_back(static_cast<int64_t>(i) + 1);
  }
  b.adv = adv;
  return b;
}

TEST_CASE("PPO clip with clip-higher and dual-clip on hand-computed tokens", "[grpo]") {
  LossConfig c;
  c.clip_low = 0.2;
  c.clip_high = 0.28;
  c.dual_clip = 3.0;
  c.aggregation = LossAggregation::kSeqMeanTokenSum;  // weight 1/N per token
  // Per token, A and r -> loss term and d/dlp:
  //  A=+1 r=1.1 : unclipped, l = -1.1, g = -1.1
  //  A=+1 r=1.5 : clipped at 1.28, l = -1.28, g = 0
  //  A=-1 r=0.5 : clipped at 0.8, l = 0.8, g = 0
  //  A=-1 r=4.0 : l1 = 4 > dual cap 3 -> l = 3, g = 0
  //  A=-1 r=1.5 : unclipped (upper side, A<0), l = 1.5, g = 1.5
  //  A=+2 r=0.5 : unclipped (lower side, A>0), l = -1, g = -1
  Batch b = Tokens({1.1, 1.5, 0.5, 4.0, 1.5, 0.5}, {1, 1, -1, -1, -1, 2});
  LossOutput o = Loss(b, c);
  const double N = 6;
  CHECK_THAT(o.loss, WithinRel((-1.1 - 1.28 + 0.8 + 3 + 1.5 - 1) / N, 1e-12));
  const std::vector<double> g = {-1.1, 0, 0, 0, 1.5, -1};
  for (int t = 0; t < 6; ++t) CHECK_THAT(o.dlogprobs[t], WithinAbs(g[t] / N, 1e-12));
  CHECK(o.stats.clipped == 2);
  CHECK(o.stats.dual_clipped == 1);
  CHECK(o.stats.ratio_max == Approx(4.0));
}

TEST_CASE("loss aggregation modes on a hand-computed batch", "[grpo]") {
  // Two sequences, ratio 1 everywhere (on-policy), so each token's loss is -A.
  // seq 0: 3 tokens (last one masked), A = 1 ; seq 1: 1 token, A = -2.
  Batch b;
  b.offsets = {0, 3, 4};
  b.lp = b.old_lp = {-1, -2, -3, -0.5};
  b.mask = {1, 1, 0, 1};
  b.adv = {1, -2};
  LossConfig c;
  c.aggregation = LossAggregation::kTokenMean;  // (-1 - 1 + 2) / 3 tokens
  CHECK_THAT(Loss(b, c).loss, WithinAbs(0.0, 1e-15));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(-1.0 / 3, 1e-14));
  c.aggregation = LossAggregation::kSeqMeanTokenMean;  // ((-2)/2 + 2/1) / 2 = 0.5
  CHECK_THAT(Loss(b, c).loss, WithinRel(0.5, 1e-14));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(-1.0 / 4, 1e-14));
  c.aggregation = LossAggregation::kSeqMeanTokenSum;  // (-2 + 2) / 2 = 0
  CHECK_THAT(Loss(b, c).loss, WithinAbs(0.0, 1e-15));
  CHECK_THAT(Loss(b, c).dlogprobs[3], WithinRel(1.0, 1e-14));
  c.aggregation = LossAggregation::kSeqMeanTokenSumNorm;
  c.norm_length = 8;  // (-2/8 + 2/8) / 2 = 0 ; token weight 1/16
  CHECK_THAT(Loss(b, c).loss, WithinAbs(0.0, 1e-15));
  CHECK_THAT(Loss(b, c).dlogprobs[1], WithinRel(-1.0 / 16, 1e-14));
  CHECK(Loss(b, c).dlogprobs[2] == 0.0);  // masked
}

TEST_CASE("micro-batches with the mini-batch normalizer sum to the whole", "[grpo]") {
  Batch b;
  b.offsets = {0, 2, 5};
  b.lp = {-1, -2, -0.5, -0.7, -3};
  b.old_lp = {-1.1, -1.9, -0.4, -0.9, -3};
  b.mask = {1, 1, 1, 1, 0};
  b.adv = {0.7, -1.3};
  LossConfig c;
  const LossNormalizer norm = ComputeNormalizer(b.offsets, b.mask);
  auto whole = ComputeLoss(b.View(), norm, c);
  REQUIRE(whole.ok());
  Batch m0, m1;
  m0.offsets = {0, 2};
  m0.lp = {-1, -2};
  m0.old_lp = {-1.1, -1.9};
  m0.mask = {1, 1};
  m0.adv = {0.7};
  m1.offsets = {0, 3};
  m1.lp = {-0.5, -0.7, -3};
  m1.old_lp = {-0.4, -0.9, -3};
  m1.mask = {1, 1, 0};
  m1.adv = {-1.3};
  auto p0 = ComputeLoss(m0.View(), norm, c);
  auto p1 = ComputeLoss(m1.View(), norm, c);
  REQUIRE(p0.ok());
  REQUIRE(p1.ok());
  CHECK_THAT(p0->loss + p1->loss, WithinRel(whole->loss, 1e-14));
  CHECK(p1->dlogprobs[0] == whole->dlogprobs[2]);
}

TEST_CASE("KL estimators k1, k2, k3 on a hand-computed token", "[grpo]") {
  // A = 0, so only beta * KL acts; lp - lp_ref = 0.5.
  Batch b = Tokens({1.0}, {0.0});
  b.ref_lp = {b.lp[0] - 0.5};
  LossConfig c;
  c.kl_coef = 0.1;
  c.kl_estimator = KlEstimator::kK1;
  CHECK_THAT(Loss(b, c).loss, WithinRel(0.05, 1e-14));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(0.1, 1e-14));
  c.kl_estimator = KlEstimator::kK2;
  CHECK_THAT(Loss(b, c).loss, WithinRel(0.1 * 0.125, 1e-14));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(0.05, 1e-14));
  c.kl_estimator = KlEstimator::kK3;  // exp(-0.5) + 0.5 - 1 ; d = 1 - exp(-0.5)
  CHECK_THAT(Loss(b, c).loss, WithinRel(0.1 * (std::exp(-0.5) - 0.5), 1e-14));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(0.1 * (1 - std::exp(-0.5)), 1e-14));
  CHECK_THAT(Loss(b, c).stats.kl_sum, WithinRel(std::exp(-0.5) - 0.5, 1e-14));
  // k3 is capped at 10 (verl) with no gradient there.
  b.ref_lp = {b.lp[0] + 15};
  CHECK_THAT(Loss(b, c).loss, WithinRel(0.1 * 10, 1e-14));
  CHECK(Loss(b, c).dlogprobs[0] == 0.0);
}

TEST_CASE("GSPO sequence ratio on a hand-computed sequence", "[grpo]") {
  // lp - lp_old = {0.1, -0.3}: s = exp(-0.1). A = 1, eps 0.2 -> unclipped.
  Batch b;
  b.offsets = {0, 2};
  b.old_lp = {-1, -2};
  b.lp = {-0.9, -2.3};
  b.mask = {1, 1};
  b.adv = {1};
  LossConfig c;
  c.policy_loss = PolicyLossType::kGspo;
  c.aggregation = LossAggregation::kSeqMeanTokenMean;
  const double s = std::exp(-0.1);
  LossOutput o = Loss(b, c);
  CHECK_THAT(o.loss, WithinRel(-s, 1e-14));
  CHECK_THAT(o.dlogprobs[0], WithinRel(-s / 2, 1e-14));
  CHECK_THAT(o.dlogprobs[1], WithinRel(-s / 2, 1e-14));
  // GSPO's narrow band (3e-4 / 4e-4) clips it: s = 0.905 < 1 - 3e-4 with A > 0 is not clipped
  // (min takes the unclipped), but A < 0 is.
  c.clip_low = 3e-4;
  c.clip_high = 4e-4;
  b.adv = {-1};
  o = Loss(b, c);
  CHECK_THAT(o.loss, WithinRel(1 - 3e-4, 1e-14));
  CHECK(o.dlogprobs[0] == 0.0);
  CHECK(o.stats.clipped == 2);
}

TEST_CASE("token and sequence TIS / MIS weights on hand-computed tokens", "[grpo]") {
  // On-policy (ratio 1), A = 1 so each token's policy loss is -w. old - roll = log rho.
  Batch b;
  b.offsets = {0, 2, 3};
  b.lp = b.old_lp = {-1, -1, -1};
  b.roll_lp = {-1 - std::log(3.0), -1 - std::log(1.5), -1 - std::log(0.25)};  // rho 3, 1.5, 0.25
  b.mask = {1, 1, 1};
  b.adv = {1, 1};
  LossConfig c;
  c.aggregation = LossAggregation::kSeqMeanTokenSum;  // weight 1/2
  c.mismatch_cap = 2.0;
  c.mismatch_low = 0.5;
  c.mismatch = MismatchCorrection::kTokenTis;  // w = 2, 1.5, 0.25
  CHECK_THAT(Loss(b, c).loss, WithinRel(-(2 + 1.5 + 0.25) / 2, 1e-12));
  CHECK_THAT(Loss(b, c).dlogprobs[0], WithinRel(-2.0 / 2, 1e-12));
  c.mismatch = MismatchCorrection::kTokenMis;  // w = 0, 1.5, 0
  CHECK_THAT(Loss(b, c).loss, WithinRel(-1.5 / 2, 1e-12));
  CHECK(Loss(b, c).stats.is_rejected == 2);
  c.mismatch = MismatchCorrection::kSeqTis;  // seq 0: rho 4.5 -> 2 ; seq 1: 0.25
  CHECK_THAT(Loss(b, c).loss, WithinRel(-(2 * 2 + 0.25) / 2, 1e-12));
  c.mismatch = MismatchCorrection::kSeqMis;  // seq 0: 4.5 out ; seq 1: 0.25 out
  CHECK_THAT(Loss(b, c).loss, WithinAbs(0.0, 1e-15));
  c.mismatch_low = 0.2;  // seq 1 now inside
  CHECK_THAT(Loss(b, c).loss, WithinRel(-0.25 / 2, 1e-12));
  // The mismatch metric is mean |lp_old - lp_roll|.
  CHECK_THAT(Loss(b, c).stats.mismatch_abs_sum,
             WithinRel(std::log(3.0) + std::log(1.5) + std::log(4.0), 1e-12));
}

TEST_CASE("entropy bonus enters with -coef", "[grpo]") {
  Batch b = Tokens({1.0, 1.0}, {0.0, 0.0});
  b.ent = {0.5, 1.5};
  LossConfig c;
  c.entropy_coef = 0.01;
  LossOutput o = Loss(b, c);
  CHECK_THAT(o.loss, WithinRel(-0.01 * 1.0, 1e-14));  // token-mean of H = 1
  CHECK_THAT(o.dentropy[1], WithinRel(-0.01 / 2, 1e-14));
}

// Central differences of the loss w.r.t. each logprob and entropy, against dlogprobs / dentropy.
void CheckFiniteDifferences(const Batch& base, const LossConfig& c) {
  const LossNormalizer norm = ComputeNormalizer(base.offsets, base.mask);
  auto out = ComputeLoss(base.View(), norm, c);
  REQUIRE(out.ok());
  const double h = 1e-6;
  double max_err = 0;
  for (size_t t = 0; t < base.lp.size(); ++t) {
    for (int which = 0; which < 2; ++which) {
      if (which == 1 && base.ent.empty()) continue;
      Batch p = base, m = base;
      (which == 0 ? p.lp : p.ent)[t] += h;
      (which == 0 ? m.lp : m.ent)[t] -= h;
      const double fd =
          (ComputeLoss(p.View(), norm, c)->loss - ComputeLoss(m.View(), norm, c)->loss) / (2 * h);
      const double an = which == 0 ? out->dlogprobs[t] : out->dentropy[t];
      const double err = std::abs(fd - an) / (1e-6 + std::abs(fd));
      max_err = std::max(max_err, err);
      if (err > 1e-5) {
        FAIL_CHECK("token " << t << (which ? " entropy" : " logprob") << ": finite difference "
                            << fd << " vs analytic " << an);
      }
    }
  }
  CHECK(max_err < 1e-5);
}

Batch RandomBatch(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0, 1);
  Batch b;
  b.offsets = {0};
  const int lens[] = {3, 5, 1, 4};
  for (int len : lens) {
    for (int t = 0; t < len; ++t) {
      const double old = -1.5 + 0.5 * n(rng);
      b.old_lp.push_back(old);
      b.lp.push_back(old + 0.25 * n(rng));
      b.roll_lp.push_back(old + 0.3 * n(rng));
      b.ref_lp.push_back(old + 0.4 * n(rng));
      b.ent.push_back(1 + 0.3 * n(rng));
      b.mask.push_back(t == 3 ? 0 : 1);
    }
    b.offsets.push_back(static_cast<int64_t>(b.lp.size()));
    b.adv.push_back(n(rng));
  }
  return b;
}

TEST_CASE("loss gradients match finite differences in every mode", "[grpo]") {
  for (auto pl : {PolicyLossType::kPpoClip, PolicyLossType::kGspo}) {
    for (auto agg : {LossAggregation::kTokenMean, LossAggregation::kSeqMeanTokenMean,
                     LossAggregation::kSeqMeanTokenSumNorm, LossAggregation::kSeqMeanTokenSum}) {
      for (auto kl : {KlEstimator::kK1, KlEstimator::kK2, KlEstimator::kK3}) {
        for (auto mis : {MismatchCorrection::kNone, MismatchCorrection::kTokenTis,
                         MismatchCorrection::kTokenMis, MismatchCorrection::kSeqTis,
                         MismatchCorrection::kSeqMis}) {
          LossConfig c;
          c.policy_loss = pl;
          c.aggregation = agg;
          c.norm_length = 7;
          c.kl_coef = 0.3;
          c.kl_estimator = kl;
          c.entropy_coef = 0.05;
          c.clip_low = 0.2;
          c.clip_high = 0.28;
          c.mismatch = mis;
          c.mismatch_low = 0.1;
          c.mismatch_cap = 5.0;
          for (uint32_t seed : {1u, 2u}) {
            CAPTURE(static_cast<int>(pl), static_cast<int>(agg), static_cast<int>(kl),
                    static_cast<int>(mis), seed);
            CheckFiniteDifferences(RandomBatch(seed), c);
          }
        }
      }
    }
  }
}

TEST_CASE("loss input errors name what is wrong", "[grpo]") {
  Batch b = Tokens({1.0, 1.0}, {1.0, -1.0});
  LossConfig c;
  c.kl_coef = 0.1;  // needs ref logprobs
  auto r = ComputeLoss(b.View(), ComputeNormalizer(b.offsets, b.mask), c);
  REQUIRE(!r.ok());
  CHECK(std::string(r.status().message()).find("ref_logprobs") != std::string::npos);
  c.kl_coef = 0;
  b.mask[0] = 0.5;
  CHECK(!ComputeLoss(b.View(), ComputeNormalizer(b.offsets, b.mask), c).ok());
  b.mask = {0, 0};
  CHECK(!ComputeLoss(b.View(), ComputeNormalizer(b.offsets, b.mask), c).ok());  // empty normalizer
  c.dual_clip = 0.5;
  CHECK(!c.Validate().ok());
}

}  // namespace
}  // namespace grpo
