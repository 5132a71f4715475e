// Golden test of the learner's loss path against PyTorch: tests/fixtures/loss/ (written by
// scripts/make_loss_fixtures.py with transformers in float64) holds a tiny Qwen3-MoE, packed
// prompt+completion sequences, old/reference logprobs, advantages, the GRPO loss (PPO clip with
// clip-higher and dual-clip, k3 KL, token-mean) and d(loss)/d(param) for every tensor. Here the
// same is computed the way the trainer does it — Model<float> forward, ComputeLoss in fp64, the
// logprob gradients through Model<float>::Backward — and compared.
// Metrics: loss relative error <= 1e-5; per tensor, ||g - g_ref|| / ||g_ref|| <= 1e-5 (normalized
// error, since single entries near zero carry fp32 rounding of the whole forward). Note that the
// reference is not pure fp64: transformers keeps RMSNorm, the attention and router softmaxes and
// the RoPE frequencies in fp32 even in a float64 model (~5e-7 in a logprob).
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "learner/grpo.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace grpo {
namespace {

const std::string kDir = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/loss";

// Runs the fixture through `m` and checks logprobs (max abs), the loss (relative) and every
// parameter gradient (normalized) against PyTorch's.
template <typename Real>
void CheckGolden(Model<Real>& m, double lp_tol, double loss_tol, double grad_tol) {
  auto fx = ReadJsonFile(kDir + "/loss.json");
  REQUIRE(fx.ok());

  const auto seqs = (*fx)["sequences"].get<std::vector<std::vector<int32_t>>>();
  const auto prompt_lengths = (*fx)["prompt_lengths"].get<std::vector<int64_t>>();
  TokenBatch batch;
  for (const auto& s : seqs) batch.Add(s);
  ForwardOptions fo;
  fo.temperature = (*fx)["temperature"].get<float>();
  fo.for_backward = true;
  ForwardResult<Real> res;
  REQUIRE(m.Forward(batch, fo, &res).ok());

  std::vector<int64_t> offsets = {0};
  std::vector<double> lp, old_lp, ref_lp, mask, adv;
  double max_lp_err = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const auto ref_seq = (*fx)["logprobs"][b].get<std::vector<double>>();
    const auto old_seq = (*fx)["old_logprobs"][b].get<std::vector<double>>();
    const auto kl_seq = (*fx)["ref_logprobs"][b].get<std::vector<double>>();
    const auto mask_seq = (*fx)["mask"][b].get<std::vector<double>>();
    const int64_t P = prompt_lengths[b];
    for (size_t j = 0; j < ref_seq.size(); ++j) {
      const double v = res.logprobs[batch.offsets[b] + P - 1 + j];
      max_lp_err = std::max(max_lp_err, std::abs(v - ref_seq[j]));
      lp.push_back(v);
    }
    old_lp.insert(old_lp.end(), old_seq.begin(), old_seq.end());
    ref_lp.insert(ref_lp.end(), kl_seq.begin(), kl_seq.end());
    mask.insert(mask.end(), mask_seq.begin(), mask_seq.end());
    adv.push_back((*fx)["advantages"][b].get<double>());
    offsets.push_back(offsets.back() + static_cast<int64_t>(ref_seq.size()));
  }
  INFO("max |logprob - torch| = " << max_lp_err);
  CHECK(max_lp_err < lp_tol);

  const auto& c = (*fx)["config"];
  LossConfig lc;
  lc.policy_loss = *ParsePolicyLossType(c["policy_loss"]);
  lc.clip_low = c["clip_low"];
  lc.clip_high = c["clip_high"];
  lc.dual_clip = c["dual_clip"];
  lc.kl_coef = c["kl_coef"];
  lc.kl_estimator = *ParseKlEstimator(c["kl_estimator"]);
  lc.aggregation = *ParseLossAggregation(c["aggregation"]);
  LossInput in;
  in.offsets = offsets;
  in.logprobs = lp;
  in.old_logprobs = old_lp;
  in.ref_logprobs = ref_lp;
  in.mask = mask;
  in.advantages = adv;
  auto out = ComputeLoss(in, ComputeNormalizer(offsets, mask), lc);
  REQUIRE(out.ok());
  const double ref_loss = (*fx)["loss"].get<double>();
  INFO("loss " << out->loss << " vs torch " << ref_loss);
  CHECK(std::abs(out->loss - ref_loss) <= loss_tol * std::abs(ref_loss));
  CHECK(out->stats.clipped > 0);  // the example exercises the clipped branch

  std::vector<Real> dlp(batch.num_tokens(), Real(0));
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t P = prompt_lengths[b];
    for (int64_t j = 0; j < offsets[b + 1] - offsets[b]; ++j) {
      dlp[batch.offsets[b] + P - 1 + j] = static_cast<Real>(out->dlogprobs[offsets[b] + j]);
    }
  }
  m.ZeroGrads();
  REQUIRE(m.Backward(dlp, {}).ok());

  auto gf = SafetensorsFile::Open(kDir + "/grads.safetensors");
  REQUIRE(gf.ok());
  int64_t checked = 0;
  double worst = 0;
  std::string worst_name;
  for (const ParamTensor& t : m.layout().tensors) {
    const TensorInfo* info = (*gf)->Find(t.name);
    INFO(t.name);
    REQUIRE(info != nullptr);
    REQUIRE(info->numel() == t.numel);
    std::vector<float> ref(t.numel);
    REQUIRE((*gf)->ReadAsFloat(*info, ref.data()).ok());
    double num = 0, den = 0;
    const Real* g = m.grads() + t.offset;
    for (int64_t i = 0; i < t.numel; ++i) {
      REQUIRE(std::isfinite(g[i]));
      num += (double(g[i]) - ref[i]) * (double(g[i]) - ref[i]);
      den += double(ref[i]) * ref[i];
    }
    const double err = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
    if (err > worst) {
      worst = err;
      worst_name = t.name;
    }
    CHECK(den > 0);  // every tensor gets a gradient (non-zero reference)
    CHECK(err <= grad_tol);
    ++checked;
  }
  INFO("worst normalized gradient error " << worst << " in " << worst_name);
  CHECK(checked == static_cast<int64_t>((*gf)->tensors().size()));
  WARN("golden (" << (sizeof(Real) == 4 ? "fp32" : "fp64") << "): loss rel err "
                  << std::abs(out->loss - ref_loss) / std::abs(ref_loss) << ", max logprob err "
                  << max_lp_err << ", worst grad err " << worst << " (" << worst_name << ")");
}

TEST_CASE("golden: GRPO loss and parameter gradients match PyTorch (fp32 learner path)",
          "[golden][learner]") {
  auto model = LoadModel(kDir + "/model");
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  CheckGolden<float>(**model, 1e-5, 1e-5, 1e-5);
}

}  // namespace
}  // namespace grpo
