// Finite-difference gradient checks of Model<double>::Backward for every parameter kind of every
// family, with logprob, entropy and load-balancing terms in the loss, with and without routing
// replay. fp64 throughout: central differences with eps 1e-5 have truncation error ~eps^2 * f'''
// (~1e-10 here) and rounding ~1e-16/eps (~1e-11), so 1e-6 absolute + 1e-5 relative is loose
// enough to be stable and tight enough to catch any missing or mis-scaled term.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <random>
#include <regex>

#include "tests/model/tiny_models.h"

namespace grpo {
namespace {

using testing::MakeModel;
using testing::MustParse;
using testing::RandomBatch;

struct LossSpec {
  std::vector<double> c, d;  // weights on logprobs and entropies
  double aux_coef = 0;
  float temperature = 1;
  std::vector<int32_t> replay;
};

double Loss(Model<double>& m, const TokenBatch& batch, const LossSpec& spec) {
  ForwardOptions opt;
  opt.temperature = spec.temperature;
  opt.aux_loss_coef = spec.aux_coef;
  opt.replay_routing = spec.replay;
  ForwardResult<double> r;
  absl::Status s = m.Forward(batch, opt, &r);
  REQUIRE(s.ok());
  double L = spec.aux_coef * r.aux_loss;
  for (size_t t = 0; t < r.logprobs.size(); ++t) L += spec.c[t] * r.logprobs[t] + spec.d[t] * r.entropy[t];
  return L;
}

// Parameter kind: the HF name with layer / expert numbers removed.
std::string Kind(const std::string& name) {
  static const std::regex num("\\.[0-9]+\\.");
  return std::regex_replace(std::regex_replace(name, num, ".N."), num, ".N.");
}

void CheckGradients(const nlohmann::json& config_json, const LossSpec& base, uint64_t seed,
                    bool use_replay) {
  ModelConfig config = MustParse(config_json);
  auto model = MakeModel<double>(config, seed);
  TokenBatch batch = RandomBatch({1, 6, 9}, config.vocab_size, seed + 1);
  const int64_t T = batch.num_tokens();
  LossSpec spec = base;
  std::mt19937_64 rng(seed + 2);
  std::normal_distribution<double> n(0, 1);
  spec.c.resize(T);
  spec.d.resize(T);
  for (int64_t t = 0; t < T; ++t) {
    spec.c[t] = n(rng);
    spec.d[t] = 0.5 * n(rng);
  }
  if (use_replay && config.num_experts > 0) {
    // Record routing, then replay a different valid routing (ids shifted by one expert).
    ForwardOptions rec;
    rec.record_routing = true;
    ForwardResult<double> r;
    REQUIRE(model->Forward(batch, rec, &r).ok());
    spec.replay = r.routing;
    for (auto& e : spec.replay) e = static_cast<int32_t>((e + 1) % config.num_experts);
  }

  // Analytical.
  model->ZeroGrads();
  {
    ForwardOptions opt;
    opt.for_backward = true;
    opt.temperature = spec.temperature;
    opt.aux_loss_coef = spec.aux_coef;
    opt.replay_routing = spec.replay;
    ForwardResult<double> r;
    REQUIRE(model->Forward(batch, opt, &r).ok());
    REQUIRE(model->Backward(spec.c, spec.d).ok());
  }
  std::vector<double> grads(model->grads(), model->grads() + model->num_params());

  // Every parameter kind must receive some gradient.
  std::map<std::string, double> kind_norm;
  for (const ParamTensor& t : model->layout().tensors) {
    double s = 0;
    for (int64_t i = 0; i < t.numel; ++i) s += grads[t.offset + i] * grads[t.offset + i];
    kind_norm[Kind(t.name)] += s;
  }
  for (const auto& [kind, norm] : kind_norm) {
    INFO("parameter kind " << kind);
    CHECK(norm > 1e-12);
    CHECK(std::isfinite(norm));
  }

  // Numerical, a few random elements of every tensor.
  const double eps = 1e-5;
  int checked = 0, bad = 0;
  for (const ParamTensor& t : model->layout().tensors) {
    std::uniform_int_distribution<int64_t> pick(0, t.numel - 1);
    for (int k = 0; k < 3; ++k) {
      const int64_t i = t.offset + pick(rng);
      double* p = model->params() + i;
      const double saved = *p;
      *p = saved + eps;
      const double lp = Loss(*model, batch, spec);
      *p = saved - eps;
      const double lm = Loss(*model, batch, spec);
      *p = saved;
      const double num = (lp - lm) / (2 * eps);
      const double err = std::abs(num - grads[i]);
      ++checked;
      if (err > 1e-6 + 1e-5 * std::abs(num)) {
        ++bad;
        if (bad <= 5) {
          UNSCOPED_INFO(t.name << " [" << i - t.offset << "]: analytical " << grads[i]
                               << " numerical " << num);
        }
      }
    }
  }
  INFO(checked << " elements checked");
  CHECK(bad == 0);
}

TEST_CASE("gradients match finite differences: qwen3_moe", "[model][grad]") {
  LossSpec spec;
  spec.temperature = 0.8f;
  spec.aux_coef = 0.3;
  CheckGradients(testing::TinyQwen3MoeJson(), spec, 11, false);
}

TEST_CASE("gradients match finite differences: qwen3_moe with routing replay", "[model][grad]") {
  LossSpec spec;
  spec.aux_coef = 0.1;
  CheckGradients(testing::TinyQwen3MoeJson(), spec, 12, true);
}

TEST_CASE("gradients match finite differences: qwen2_moe (shared expert, tied)", "[model][grad]") {
  LossSpec spec;
  spec.temperature = 1.3f;
  spec.aux_coef = 0.2;
  CheckGradients(testing::TinyQwen2MoeJson(), spec, 13, false);
}

TEST_CASE("gradients match finite differences: qwen2_moe with routing replay", "[model][grad]") {
  CheckGradients(testing::TinyQwen2MoeJson(), LossSpec{}, 14, true);
}

TEST_CASE("gradients match finite differences: llama (biases, llama3 rope)", "[model][grad]") {
  CheckGradients(testing::TinyLlamaJson(), LossSpec{}, 15, false);
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

TEST_CASE("gradients match finite differences: qwen2 dense (qkv bias, tied)", "[model][grad]") {
  LossSpec spec;
  spec.temperature = 0.6f;
  CheckGradients(testing::TinyQwen2Json(), spec, 16, false);
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

// The float path (oneDNN GEMMs once T > 16, the blocked attention) against the fp64 path whose
// gradients the finite-difference checks above validate. Float keeps ~7 digits; after a dozen
// layers of accumulation the measured error is ~1.3e-6 of the gradient norm; 2e-5 leaves room for
// other CPUs and thread counts, and a wrong term
// shows up as O(1).
TEST_CASE("float gradients match the fp64 reference on a larger batch", "[model][grad]") {
  for (const auto& j : {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson()}) {
    ModelConfig config = MustParse(j);
    INFO(config.model_type);
    auto mf = MakeModel<float>(config, 81);
    auto md = MakeModel<double>(config, 81);
    TokenBatch batch = RandomBatch({40, 23, 64}, config.vocab_size, 82);
    const int64_t T = batch.num_tokens();
    std::vector<float> cf(T);
    std::vector<double> cd(T);
    std::mt19937_64 rng(83);
    std::normal_distribution<double> n(0, 1);
    for (int64_t t = 0; t < T; ++t) cd[t] = cf[t] = static_cast<float>(n(rng));
    ForwardOptions opt;
    opt.for_backward = true;
    opt.aux_loss_coef = 0.01;
    ForwardResult<float> rf;
    ForwardResult<double> rd;
    mf->ZeroGrads();
    md->ZeroGrads();
    REQUIRE(mf->Forward(batch, opt, &rf).ok());
    REQUIRE(md->Forward(batch, opt, &rd).ok());
    REQUIRE(rf.routing == rd.routing);
    REQUIRE(mf->Backward(cf, {}).ok());
    REQUIRE(md->Backward(cd, {}).ok());
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < md->num_params(); ++i) {
      const double d = md->grads()[i];
      diff += (mf->grads()[i] - d) * (mf->grads()[i] - d);
      norm += d * d;
    }
    INFO("relative gradient error " << std::sqrt(diff / norm));
    CHECK(norm > 0);
    CHECK(std::sqrt(diff / norm) < 2e-5);
  }
}

}  // namespace
}  // namespace grpo
