// The GPU GRPO loss (kernels/cuda/grpo_loss.h) against its CPU twin grpo::ComputeLoss
// (learner/grpo.h): random batches over every variant in both element types, the log-ratio
// clamps, reproducibility, and the input errors. Part of grpo_gpu_tests (skipped visibly without
// a GPU). Every input value is a float, so the fp32 and fp64 paths and the CPU see the same data.
// Metrics (kTol = 1e-12; both sides compute in fp64 and differ only in summation order, a tree
// per sequence against one pass, and in the last bit of exp):
//  - counts (tokens, sequences, clipped, dual-clipped, rejected, mismatch tokens): exact;
//  - the loss and each sum: |gpu - cpu| <= kTol * (|cpu| + mass), where mass is the number of
//    masked-in tokens for a sum and the sum of the tokens' aggregation weights for the loss: each
//    term is O(1..30) here, so the rounding difference (~sqrt(n) eps sum|terms|) is far below;
//  - ratio min/max: relative kTol;
//  - dlogprobs and dentropy per element: kTol * max|ref| + rel * |ref| with rel = kTol in fp64
//    and 2^-23 in fp32 (the fp32 outputs are rounded once from fp64); NaN parity in CheckClose.
// The outputs start as NaN before every call, so an element the op fails to write fails.
#include "kernels/cuda/grpo_loss.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "learner/grpo.h"
#include "tests/gpu/gpu_test_util.h"

namespace grpo {
namespace {

using namespace grpo::testing;

constexpr double kTol = 1e-12;
constexpr double kFloatRel = 1.0 / (1 << 23);  // one fp32 rounding, with a margin of 2

cuda::GrpoLossConfig ToCuda(const LossConfig& c) {
  cuda::GrpoLossConfig g;
  switch (c.policy_loss) {
    case PolicyLossType::kPpoClip:
      g.policy_loss = cuda::GrpoPolicyLoss::kPpoClip;
      break;
    case PolicyLossType::kGspo:
      g.policy_loss = cuda::GrpoPolicyLoss::kGspo;
      break;
  }
  switch (c.kl_estimator) {
    case KlEstimator::kK1:
      g.kl_estimator = cuda::GrpoKlEstimator::kK1;
      break;
    case KlEstimator::kK2:
      g.kl_estimator = cuda::GrpoKlEstimator::kK2;
      break;
    case KlEstimator::kK3:
      g.kl_estimator = cuda::GrpoKlEstimator::kK3;
      break;
  }
  switch (c.aggregation) {
    case LossAggregation::kTokenMean:
      g.aggregation = cuda::GrpoLossAggregation::kTokenMean;
      break;
    case LossAggregation::kSeqMeanTokenMean:
      g.aggregation = cuda::GrpoLossAggregation::kSeqMeanTokenMean;
      break;
    case LossAggregation::kSeqMeanTokenSumNorm:
      g.aggregation = cuda::GrpoLossAggregation::kSeqMeanTokenSumNorm;
      break;
    case LossAggregation::kSeqMeanTokenSum:
      g.aggregation = cuda::GrpoLossAggregation::kSeqMeanTokenSum;
      break;
  }
  switch (c.mismatch) {
    case MismatchCorrection::kNone:
      g.mismatch = cuda::GrpoMismatchCorrection::kNone;
      break;
    case MismatchCorrection::kTokenTis:
      g.mismatch = cuda::GrpoMismatchCorrection::kTokenTis;
      break;
    case MismatchCorrection::kTokenMis:
      g.mismatch = cuda::GrpoMismatchCorrection::kTokenMis;
      break;
    case MismatchCorrection::kSeqTis:
      g.mismatch = cuda::GrpoMismatchCorrection::kSeqTis;
      break;
    case MismatchCorrection::kSeqMis:
      g.mismatch = cuda::GrpoMismatchCorrection::kSeqMis;
      break;
  }
  g.clip_low = c.clip_low;
  g.clip_high = c.clip_high;
  g.dual_clip = c.dual_clip;
  g.kl_coef = c.kl_coef;
  g.entropy_coef = c.entropy_coef;
  g.norm_length = c.norm_length;
  g.mismatch_cap = c.mismatch_cap;
  g.mismatch_low = c.mismatch_low;
  return g;
}

// Rounds to the nearest float: values both element types hold exactly.
double F(double x) { return static_cast<float>(x); }

struct Batch {
  std::vector<int64_t> offsets;                                // (B+1)
  std::vector<double> lp, old_lp, roll_lp, ref_lp, ent, mask;  // (T)
  std::vector<double> adv;                                     // (B)
  int64_t B() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t T() const { return offsets.back(); }
  void Add(double l, double o, double roll, double ref, double e, double m) {
    lp.push_back(l);
    old_lp.push_back(o);
    roll_lp.push_back(roll);
    ref_lp.push_back(ref);
    ent.push_back(e);
    mask.push_back(m);
  }
};

// Which optional arrays a call passes (the required ones always are).
struct Present {
  bool roll = false, ref = false, ent = false;
};

LossInput CpuView(const Batch& b, Present p) {
  LossInput in;
  in.offsets = b.offsets;
  in.logprobs = b.lp;
  in.old_logprobs = b.old_lp;
  if (p.roll) in.rollout_logprobs = b.roll_lp;
  if (p.ref) in.ref_logprobs = b.ref_lp;
  if (p.ent) in.entropy = b.ent;
  in.mask = b.mask;
  in.advantages = b.adv;
  return in;
}

// Sequence lengths include 0 and 1 and one longer than a block (256 threads). Advantages of
// both signs (every fifth one exactly 0); log-ratios wide enough that PPO clipping, dual
// clipping, TIS capping, MIS rejection (token and sequence) and the k3 cap all occur.
Batch RandomBatch(uint64_t seed, const std::vector<int64_t>& lengths) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0, 1);
  auto u = [&](double lo, double hi) { return F(lo + (hi - lo) * u01(rng)); };
  Batch b;
  b.offsets = {0};
  for (size_t s = 0; s < lengths.size(); ++s) {
    b.offsets.push_back(b.offsets.back() + lengths[s]);
    b.adv.push_back(s % 5 == 4 ? 0.0 : u(-2, 2));
    for (int64_t j = 0; j < lengths[s]; ++j) {
      const double old = u(-5, -1.5);
      const double lp = F(old + u(-1.5, 1.5));
      b.lp.push_back(lp);
      b.old_lp.push_back(old);
      b.roll_lp.push_back(F(old + u(-1, 1)));
      b.ref_lp.push_back(F(lp + u(-3, 3)));
      b.ent.push_back(u(0, 3));
      b.mask.push_back(u01(rng) < 0.8 ? 1.0 : 0.0);
    }
  }
  return b;
}

// Sequence 0 (5 tokens) is entirely masked out; 1 is empty; 5 has 600 tokens.
Batch MainBatch() {
  Batch b = RandomBatch(7, {5, 0, 1, 37, 1, 600, 12, 3, 80, 5, 2, 9});
  std::fill_n(b.mask.begin(), 5, 0.0);
  return b;
}

template <typename Real>
std::vector<Real> As(const std::vector<double>& v) {
  return std::vector<Real>(v.begin(), v.end());
}

// A batch on the device in element type Real, with room for the outputs.
template <typename Real>
struct DeviceBatch {
  explicit DeviceBatch(const Batch& b)
      : T(b.T()),
        B(b.B()),
        offsets(Upload(b.offsets)),
        lp(Upload(As<Real>(b.lp))),
        old_lp(Upload(As<Real>(b.old_lp))),
        roll_lp(Upload(As<Real>(b.roll_lp))),
        ref_lp(Upload(As<Real>(b.ref_lp))),
        ent(Upload(As<Real>(b.ent))),
        mask(Upload(As<Real>(b.mask))),
        adv(Upload(b.adv)),
        dlp(Zeros<Real>(b.T())),
        dent(Zeros<Real>(b.T())) {}

  cuda::GrpoLossInput<Real> View(Present p) const {
    cuda::GrpoLossInput<Real> in;
    in.num_seqs = B;
    in.num_tokens = T;
    in.offsets = offsets.as<int64_t>();
    in.logprobs = lp.as<Real>();
    in.old_logprobs = old_lp.as<Real>();
    if (p.roll) in.rollout_logprobs = roll_lp.as<Real>();
    if (p.ref) in.ref_logprobs = ref_lp.as<Real>();
    if (p.ent) in.entropy = ent.as<Real>();
    in.mask = mask.as<Real>();
    in.advantages = adv.as<double>();
    return in;
  }

  int64_t T, B;
  cuda::DeviceBuffer offsets, lp, old_lp, roll_lp, ref_lp, ent, mask, adv, dlp, dent;
};

struct GpuRun {
  absl::StatusOr<cuda::GrpoLossResult> result;
  std::vector<double> dlp, dent;  // (T) when result is ok
};

template <typename Real>
GpuRun RunGpu(DeviceBatch<Real>& d, const cuda::GrpoLossInput<Real>& in, const LossNormalizer& norm,
              const LossConfig& c) {
  REQUIRE(cuda::Memset(d.dlp.data(), 0xff, sizeof(Real) * d.T).ok());  // NaN
  REQUIRE(cuda::Memset(d.dent.data(), 0xff, sizeof(Real) * d.T).ok());
  GpuRun run;
  run.result = cuda::GrpoLossForwardBackward(in, {norm.num_tokens, norm.num_seqs}, ToCuda(c),
                                             d.dlp.template as<Real>(), d.dent.template as<Real>());
  if (run.result.ok()) {
    const std::vector<Real> dlp = Download<Real>(d.dlp, d.T), dent = Download<Real>(d.dent, d.T);
    run.dlp.assign(dlp.begin(), dlp.end());
    run.dent.assign(dent.begin(), dent.end());
  }
  return run;
}

// Sum over masked-in tokens of the aggregation weight: the scale of the loss's terms.
double LossMass(const Batch& b, const LossNormalizer& norm, const LossConfig& c) {
  const double N = static_cast<double>(norm.num_seqs);
  double mass = 0;
  for (int64_t s = 0; s < b.B(); ++s) {
    double n_b = 0;
    for (int64_t t = b.offsets[s]; t < b.offsets[s + 1]; ++t) n_b += b.mask[t];
    if (n_b == 0) continue;
    switch (c.aggregation) {
      case LossAggregation::kTokenMean:
        mass += n_b / norm.num_tokens;
        break;
      case LossAggregation::kSeqMeanTokenMean:
        mass += 1 / N;
        break;
      case LossAggregation::kSeqMeanTokenSumNorm:
        mass += n_b / (N * static_cast<double>(c.norm_length));
        break;
      case LossAggregation::kSeqMeanTokenSum:
        mass += n_b / N;
        break;
    }
  }
  return mass;
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

std::string Full(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  return buf;
}

void CheckNear(const char* name, double got, double ref, double scale) {
  const double allowed = kTol * (std::abs(ref) + scale);
  INFO(name << ": gpu " << Full(got) << ", cpu " << Full(ref) << ", allowed " << Full(allowed));
  CHECK(std::abs(got - ref) <= allowed);
}

void CompareToCpu(const std::string& what, const LossOutput& ref, const GpuRun& got, double mass,
                  double out_rel) {
  INFO(what);
  if (!got.result.ok()) FAIL(got.result.status().ToString());
  const cuda::GrpoLossStats& g = got.result->stats;
  const LossStats& r = ref.stats;
  CHECK(g.num_tokens == r.num_tokens);
  CHECK(g.num_seqs == r.num_seqs);
  CHECK(g.clipped == r.clipped);
  CHECK(g.dual_clipped == r.dual_clipped);
  CHECK(g.is_rejected == r.is_rejected);
  CHECK(g.mismatch_tokens == r.mismatch_tokens);
  const double n = r.num_tokens;
  CheckNear("loss", got.result->loss, ref.loss, mass);
  CheckNear("pg_loss_sum", g.pg_loss_sum, r.pg_loss_sum, n);
  CheckNear("kl_sum", g.kl_sum, r.kl_sum, n);
  CheckNear("entropy_sum", g.entropy_sum, r.entropy_sum, n);
  CheckNear("ratio_sum", g.ratio_sum, r.ratio_sum, n);
  CheckNear("is_weight_sum", g.is_weight_sum, r.is_weight_sum, n);
  CheckNear("mismatch_abs_sum", g.mismatch_abs_sum, r.mismatch_abs_sum, n);
  CheckNear("ratio_min", g.ratio_min, r.ratio_min, 0);
  CheckNear("ratio_max", g.ratio_max, r.ratio_max, 0);
  const double max_dlp = MaxAbs(ref.dlogprobs);
  CHECK(max_dlp > 0);  // a comparison against all zeros would prove little
  CheckClose(what + " dlogprobs", got.dlp, ref.dlogprobs, kTol * max_dlp, out_rel);
  CheckClose(what + " dentropy", got.dent, ref.dentropy, kTol * MaxAbs(ref.dentropy), out_rel);
}

std::string Describe(const LossConfig& c, Present p) {
  const char* policy = c.policy_loss == PolicyLossType::kPpoClip ? "ppo" : "gspo";
  const char* kl[] = {"k1", "k2", "k3"};
  const char* agg[] = {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm",
                       "seq-mean-token-sum"};
  const char* mis[] = {"none", "token_tis", "token_mis", "seq_tis", "seq_mis"};
  return std::string(policy) + " dual_clip=" + std::to_string(c.dual_clip) +
         " kl=" + (c.kl_coef > 0 ? kl[static_cast<int>(c.kl_estimator)] : "off") +
         " entropy_coef=" + std::to_string(c.entropy_coef) + (p.ent ? " (entropy given)" : "") +
         " " + agg[static_cast<int>(c.aggregation)] +
         " mismatch=" + mis[static_cast<int>(c.mismatch)] + (p.roll ? " (rollout given)" : "");
}

// Runs one config through the CPU and both device paths and compares; returns the CPU stats.
LossStats CompareConfig(const Batch& b, DeviceBatch<double>& d64, DeviceBatch<float>& d32,
                        const LossNormalizer& norm, const LossConfig& c, Present p) {
  const std::string what = Describe(c, p);
  INFO(what);
  absl::StatusOr<LossOutput> ref = ComputeLoss(CpuView(b, p), norm, c);
  INFO(ref.status().ToString());
  REQUIRE(ref.ok());
  const double mass = LossMass(b, norm, c);
  CompareToCpu(what + " fp64", *ref, RunGpu(d64, d64.View(p), norm, c), mass, kTol);
  CompareToCpu(what + " fp32", *ref, RunGpu(d32, d32.View(p), norm, c), mass, kFloatRel);
  return ref->stats;
}

const PolicyLossType kPolicies[] = {PolicyLossType::kPpoClip, PolicyLossType::kGspo};
const LossAggregation kAggregations[] = {
    LossAggregation::kTokenMean, LossAggregation::kSeqMeanTokenMean,
    LossAggregation::kSeqMeanTokenSumNorm, LossAggregation::kSeqMeanTokenSum};
const MismatchCorrection kCorrections[] = {
    MismatchCorrection::kTokenTis, MismatchCorrection::kTokenMis, MismatchCorrection::kSeqTis,
    MismatchCorrection::kSeqMis};

TEST_CASE("cuda GRPO loss equals the CPU loss in every variant", "[cuda][gpu]") {
  const Batch b = MainBatch();
  // This micro-batch's share of a larger mini-batch: the op must use the normalizer it is given.
  LossNormalizer norm = ComputeNormalizer(b.offsets, b.mask);
  norm.num_tokens += 37;
  norm.num_seqs += 3;
  DeviceBatch<double> d64(b);
  DeviceBatch<float> d32(b);

  // The data exercises every branch (checked on the inputs where the stats cannot show it).
  bool k3_capped = false, tis_capped = false, adv_pos = false, adv_neg = false;
  for (int64_t s = 0; s < b.B(); ++s) {
    for (int64_t t = b.offsets[s]; t < b.offsets[s + 1]; ++t) {
      if (b.mask[t] == 0) continue;
      const double x = b.ref_lp[t] - b.lp[t];
      k3_capped |= std::exp(x) - x - 1 > 10;
      tis_capped |= std::exp(b.old_lp[t] - b.roll_lp[t]) > 2;
      adv_pos |= b.adv[s] > 0;
      adv_neg |= b.adv[s] < 0;
    }
  }
  CHECK(k3_capped);
  CHECK(tis_capped);
  CHECK(adv_pos);
  CHECK(adv_neg);

  double ppo_clipped = 0, gspo_clipped = 0, gspo_unclipped = 0, dual_clipped = 0;
  double token_rejected = 0, token_kept = 0, seq_rejected = 0, seq_kept = 0;
  for (PolicyLossType policy : kPolicies) {
    for (double dual : {0.0, 3.0}) {  // GSPO ignores dual_clip: both must give the CPU's result
      for (int kl = -1; kl < 3; ++kl) {
        for (int ent = 0; ent < 3; ++ent) {  // not given; given with coef 0; coef 0.01
          for (LossAggregation agg : kAggregations) {
            for (int mis = -2; mis < 4; ++mis) {  // -2: none, -1: none with rollout logprobs
              LossConfig c;
              c.policy_loss = policy;
              c.clip_low = 0.2;
              c.clip_high = 0.28;
              c.dual_clip = dual;
              c.kl_coef = kl < 0 ? 0.0 : 0.05;
              c.kl_estimator = static_cast<KlEstimator>(std::max(kl, 0));
              c.entropy_coef = ent == 2 ? 0.01 : 0.0;
              c.aggregation = agg;
              c.norm_length = 64;
              c.mismatch = mis < 0 ? MismatchCorrection::kNone : kCorrections[mis];
              Present p;
              p.roll = mis != -2;
              p.ref = kl >= 0;
              p.ent = ent > 0;
              const LossStats st = CompareConfig(b, d64, d32, norm, c, p);
              if (policy == PolicyLossType::kPpoClip) {
                ppo_clipped += st.clipped;
                dual_clipped += st.dual_clipped;
              } else {
                gspo_clipped += st.clipped;
                gspo_unclipped += st.num_tokens - st.clipped;
              }
              if (c.mismatch == MismatchCorrection::kTokenMis) {
                token_rejected += st.is_rejected;
                token_kept += st.num_tokens - st.is_rejected;
              }
              if (c.mismatch == MismatchCorrection::kSeqMis) {
                seq_rejected += st.is_rejected;
                seq_kept += st.num_tokens - st.is_rejected;
              }
            }
          }
        }
      }
    }
  }
  CHECK(ppo_clipped > 0);
  CHECK(dual_clipped > 0);
  CHECK(gspo_clipped > 0);
  CHECK(gspo_unclipped > 0);
  CHECK(token_rejected > 0);
  CHECK(token_kept > 0);
  CHECK(seq_rejected > 0);
  CHECK(seq_kept > 0);
}

TEST_CASE("cuda GRPO loss follows the CPU through the log-ratio clamps", "[cuda][gpu]") {
  // Token log-ratios of +-25 (clamped to 20: no gradient), a GSPO mean log-ratio of 11.5
  // (clamped to 10) under a negative advantage (so the unclipped branch, whose gradient the
  // clamp removes, wins), sequence and token mismatch log-ratios beyond -20, k3 beyond +-20.
  Batch b;
  b.offsets = {0, 3, 5, 9, 11};
  b.adv = {-1.5, -0.75, 1.25, 0.5};
  b.Add(-2.0 + 25, -2.0, -2.5, -2.0 + 25 + 25, 1.0, 1);  // seq 0
  b.Add(-30.0, -5.0, -5.5, -30.0 - 25, 0.5, 1);
  b.Add(-1.5, -2.0, -1.75, -1.0, 2.0, 1);
  b.Add(-1.0 + 12, -1.0, -1.5, -2.0, 1.0, 1);  // seq 1: GSPO mean 11.5
  b.Add(-2.0 + 11, -2.0, -1.25, -3.0, 1.5, 1);
  for (int i = 0; i < 4; ++i) b.Add(-1.0, -1.25, -1.25 + 6, -0.5, 0.25, 1);  // seq 2
  b.Add(-3.0, -2.0, -2.0 + 25, -3.5, 1.0, 1);  // seq 3: token mismatch -25
  b.Add(-2.0, -2.25, -2.5, -2.0, 1.0, 0);
  LossNormalizer norm = ComputeNormalizer(b.offsets, b.mask);
  DeviceBatch<double> d64(b);
  DeviceBatch<float> d32(b);
  for (PolicyLossType policy : kPolicies) {
    for (double dual : {0.0, 3.0}) {
      for (int kl = 0; kl < 3; ++kl) {
        for (LossAggregation agg :
             {LossAggregation::kTokenMean, LossAggregation::kSeqMeanTokenMean}) {
          for (int mis = -1; mis < 4; ++mis) {
            LossConfig c;
            c.policy_loss = policy;
            c.dual_clip = dual;
            c.kl_coef = 0.1;
            c.kl_estimator = static_cast<KlEstimator>(kl);
            c.aggregation = agg;
            c.mismatch = mis < 0 ? MismatchCorrection::kNone : kCorrections[mis];
            Present p;
            p.roll = true;
            p.ref = true;
            CompareConfig(b, d64, d32, norm, c, p);
          }
        }
      }
    }
  }
}

TEST_CASE("cuda GRPO loss is bitwise reproducible over many sequences", "[cuda][gpu]") {
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int64_t> len(0, 70);
  std::vector<int64_t> lengths(3000);
  for (auto& l : lengths) l = len(rng);
  const Batch b = RandomBatch(5, lengths);
  const LossNormalizer norm = ComputeNormalizer(b.offsets, b.mask);
  DeviceBatch<double> d64(b);
  DeviceBatch<float> d32(b);
  LossConfig c;
  c.policy_loss = PolicyLossType::kGspo;
  c.kl_coef = 0.05;
  c.entropy_coef = 0.01;
  c.mismatch = MismatchCorrection::kTokenTis;
  const Present p{true, true, true};
  CompareConfig(b, d64, d32, norm, c, p);
  const GpuRun r1 = RunGpu(d64, d64.View(p), norm, c), r2 = RunGpu(d64, d64.View(p), norm, c);
  REQUIRE(r1.result.ok());
  REQUIRE(r2.result.ok());
  CHECK(r1.result->loss == r2.result->loss);
  CHECK(r1.result->stats.pg_loss_sum == r2.result->stats.pg_loss_sum);
  CHECK(r1.result->stats.kl_sum == r2.result->stats.kl_sum);
  CHECK(r1.dlp == r2.dlp);  // every element bit for bit (no NaN here: checked against the CPU)
}

// The ComputeLoss verdict and the device's, for each element type: both reject with
// InvalidArgument (the device naming `needle`) or both accept with equal results.
void ExpectVerdict(const Batch& b, const LossConfig& c, Present p, const std::string& needle) {
  INFO("expect " << (needle.empty() ? "accepted" : "rejected naming '" + needle + "'"));
  const LossNormalizer norm = ComputeNormalizer(b.offsets, b.mask);
  absl::StatusOr<LossOutput> ref = ComputeLoss(CpuView(b, p), norm, c);
  DeviceBatch<double> d64(b);
  DeviceBatch<float> d32(b);
  const GpuRun g64 = RunGpu(d64, d64.View(p), norm, c);
  const GpuRun g32 = RunGpu(d32, d32.View(p), norm, c);
  if (needle.empty()) {
    INFO(ref.status().ToString());
    REQUIRE(ref.ok());
    const double mass = LossMass(b, norm, c);
    CompareToCpu("fp64", *ref, g64, mass, kTol);
    CompareToCpu("fp32", *ref, g32, mass, kFloatRel);
    return;
  }
  CHECK(ref.status().code() == absl::StatusCode::kInvalidArgument);
  for (const GpuRun* g : {&g64, &g32}) {
    REQUIRE(!g->result.ok());
    const std::string msg(g->result.status().message());
    INFO(msg);
    CHECK(g->result.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(msg.find(needle) != std::string::npos);
  }
}

TEST_CASE("cuda GRPO loss rejects what the CPU rejects, naming the token and field",
          "[cuda][gpu]") {
  const Batch base = RandomBatch(11, {4, 7, 1, 400, 9});
  LossConfig c;  // every optional array required
  c.kl_coef = 0.05;
  c.entropy_coef = 0.01;
  c.mismatch = MismatchCorrection::kTokenMis;
  const Present all{true, true, true};
  // Masked-in / masked-out tokens of sequence 3 handled by different threads of its block.
  auto find = [&](int64_t from, double m) {
    int64_t t = from;
    while (t < base.offsets[4] && base.mask[t] != m) ++t;
    REQUIRE(t < base.offsets[4]);
    return t;
  };
  const int64_t s3 = base.offsets[3];
  const int64_t t_in = find(s3 + 300, 1), t_out = find(s3 + 300, 0), t_early = find(s3 + 5, 1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto at = [](int64_t t) { return "[" + std::to_string(t) + "]"; };

  ExpectVerdict(base, c, all, "");
  Batch b = base;
  b.lp[t_in] = nan;
  ExpectVerdict(b, c, all, "logprobs" + at(t_in));
  b = base;
  b.lp[t_out] = nan;  // masked out: never looked at, by either side
  b.old_lp[t_out] = inf;
  b.roll_lp[t_out] = nan;
  b.ref_lp[t_out] = nan;
  b.ent[t_out] = nan;
  ExpectVerdict(b, c, all, "");
  b = base;
  b.old_lp[t_in] = -inf;
  ExpectVerdict(b, c, all, "old_logprobs" + at(t_in));
  b = base;
  b.roll_lp[t_in] = nan;
  ExpectVerdict(b, c, all, "rollout_logprobs" + at(t_in));
  b = base;
  b.ref_lp[t_in] = inf;
  ExpectVerdict(b, c, all, "ref_logprobs" + at(t_in));
  b = base;
  b.ent[t_in] = nan;
  ExpectVerdict(b, c, all, "entropy" + at(t_in));
  b = base;
  b.mask[t_out] = 0.5;
  ExpectVerdict(b, c, all, "mask" + at(t_out) + " is not 0 or 1");

  // Several bad tokens: the first in token order is named, as the CPU's scan finds it.
  b = base;
  b.lp[t_in] = nan;
  b.mask[t_early] = 2;
  b.ent[base.offsets[4] + 1] = nan;
  ExpectVerdict(b, c, all, "mask" + at(t_early));
  b = base;
  b.ent[base.offsets[4] + 1] = nan;
  b.ent[base.offsets[4]] = nan;
  b.mask[base.offsets[4]] = 1;
  b.ref_lp[base.offsets[4]] = nan;
  ExpectVerdict(b, c, all, "ref_logprobs" + at(base.offsets[4]));

  // A given array the config does not need is not checked (ComputeLoss neither).
  LossConfig plain;
  Present ref_only;
  ref_only.ref = true;
  b = base;
  b.ref_lp[t_in] = nan;
  ExpectVerdict(b, plain, ref_only, "");

  b = base;
  b.adv[2] = nan;
  ExpectVerdict(b, c, all, "advantage 2");
  b = base;
  b.offsets[2] = b.offsets[1] - 1;
  ExpectVerdict(b, c, all, "offsets decrease");

  // Errors only the device API can have, checked on it alone.
  DeviceBatch<double> d(base);
  const LossNormalizer norm = ComputeNormalizer(base.offsets, base.mask);
  auto rejects = [&](const cuda::GrpoLossInput<double>& in, const LossNormalizer& n,
                     const LossConfig& cfg, const std::string& needle) {
    const GpuRun g = RunGpu(d, in, n, cfg);
    REQUIRE(!g.result.ok());
    const std::string msg(g.result.status().message());
    INFO(msg);
    CHECK(g.result.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(msg.find(needle) != std::string::npos);
  };
  cuda::GrpoLossInput<double> in = d.View(all);
  in.num_tokens = base.T() - 1;  // offsets[B] != T
  rejects(in, norm, c, "offsets");
  in = d.View(all);
  in.ref_logprobs = nullptr;
  rejects(in, norm, c, "ref_logprobs is missing");
  in = d.View(all);
  in.num_seqs = 0;
  rejects(in, norm, c, "0 sequences");
  rejects(d.View(all), LossNormalizer{0, norm.num_seqs}, c, "normalizer is empty");
  rejects(d.View(all), LossNormalizer{norm.num_tokens, 0}, c, "normalizer is empty");
  LossConfig bad = c;
  bad.clip_low = 1;
  rejects(d.View(all), norm, bad, "clip_low");
  // The device is still usable after rejections.
  CompareToCpu("after errors", *ComputeLoss(CpuView(base, all), norm, c),
               RunGpu(d, d.View(all), norm, c), LossMass(base, norm, c), kTol);
}

}  // namespace
}  // namespace grpo
