// Tests for learner/optimizer.h: AdamW against an fp64 transcription of PyTorch's update,
// global-norm clipping, skipping non-finite steps, the schedules at hand-computed points, and the
// state file round trip and corruption checks. Plus CRC-32C's standard check value.
#include "learner/optimizer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <numbers>
#include <vector>

#include "learner/crc32c.h"

namespace grpo {
namespace {

using Catch::Matchers::WithinRel;

TEST_CASE("CRC-32C check value and TFRecord mask", "[optimizer]") {
  CHECK(Crc32cOf("123456789") == 0xE3069283u);
  CHECK(Crc32cOf("") == 0u);
  CHECK(Crc32cOf("6789", Crc32cOf("12345")) == 0xE3069283u);
  CHECK(MaskCrc32c(0) == 0xa282ead8u);
}

TEST_CASE("AdamW matches PyTorch's update in fp64 over several steps", "[optimizer]") {
  OptimizerConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.1;
  c.max_grad_norm = 0;  // no clipping here
  std::vector<float> p = {0.5f, -1.0f, 2.0f};
  std::vector<double> pd(p.begin(), p.end()), m(3, 0), v(3, 0);
  AdamW opt(3, c);
  for (int step = 1; step <= 5; ++step) {
    std::vector<float> g = {0.1f * step, -0.2f, 0.05f / step};
    opt.Step(p.data(), g.data(), c.lr);
    for (int i = 0; i < 3; ++i) {
      pd[i] *= 1 - c.lr * c.weight_decay;
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(0.9, step)), vh = v[i] / (1 - std::pow(0.999, step));
      pd[i] -= c.lr * mh / (std::sqrt(vh) + 1e-8);
    }
  }
  for (int i = 0; i < 3; ++i) CHECK_THAT(p[i], WithinRel(pd[i], 1e-5));
  CHECK(opt.step_count() == 5);
}

TEST_CASE("global-norm clipping and non-finite skip", "[optimizer]") {
  OptimizerConfig c;
  c.lr = 0.1;
  c.max_grad_norm = 1.0;
  AdamW opt(2, c);
  std::vector<float> p = {1, 1};
  std::vector<float> g = {3, 4};  // norm 5
  auto r = opt.Step(p.data(), g.data(), c.lr);
  CHECK(r.grad_norm == Approx(5.0));
  CHECK(r.clip_scale == Approx(1.0 / (5 + 1e-6)));
  CHECK(g[0] == Approx(0.6).epsilon(1e-6));  // clipped in place
  CHECK(g[1] == Approx(0.8).epsilon(1e-6));

  const std::vector<float> before = p;
  const std::string state = opt.SerializeState();
  std::vector<float> bad = {NAN, 1};
  r = opt.Step(p.data(), bad.data(), c.lr);
  CHECK(r.skipped);
  CHECK(p == before);
  CHECK(opt.step_count() == 1);
  CHECK(opt.SerializeState() == state);
  std::vector<float> inf = {INFINITY, 1};
  CHECK(opt.Step(p.data(), inf.data(), c.lr).skipped);
}

TEST_CASE("learning-rate schedules at hand-computed points", "[optimizer]") {
  OptimizerConfig c;
  c.lr = 1.0;
  CHECK(LearningRate(c, 0, 100) == 1.0);
  c.warmup_steps = 4;
  CHECK(LearningRate(c, 0, 100) == 0.0);
  CHECK(LearningRate(c, 2, 100) == 0.5);
  CHECK(LearningRate(c, 7, 100) == 1.0);
  c.schedule = "cosine";
  c.warmup_init_ratio = 0.2;
  c.min_lr_ratio = 0.1;
  CHECK_THAT(LearningRate(c, 2, 104), WithinRel(0.2 + 0.8 * 0.5, 1e-15));
  CHECK_THAT(LearningRate(c, 4, 104), WithinRel(1.0, 1e-15));
  // Halfway through the decay: cos(pi/2) = 0 -> (1 + 0.1) / 2.
  CHECK_THAT(LearningRate(c, 54, 104), WithinRel(0.55, 1e-12));
  CHECK_THAT(LearningRate(c, 104, 104), WithinRel(0.1, 1e-12));
  c.schedule = "linear";
  CHECK(!c.Validate().ok());
}

TEST_CASE("AdamW state round trip and corruption", "[optimizer]") {
  OptimizerConfig c;
  c.lr = 0.01;
  AdamW a(4, c), b(4, c);
  std::vector<float> pa = {1, 2, 3, 4}, pb = pa;
  std::vector<float> g = {0.1f, -0.1f, 0.3f, 0.0f};
  std::vector<float> g2 = g;
  a.Step(pa.data(), g2.data(), c.lr);
  REQUIRE(b.RestoreState(a.SerializeState(), "state").ok());
  pb = pa;
  g2 = g;
  std::vector<float> g3 = g;
  a.Step(pa.data(), g2.data(), c.lr);
  b.Step(pb.data(), g3.data(), c.lr);
  CHECK(pa == pb);  // bitwise
  std::string s = a.SerializeState();
  s[40] ^= 1;
  auto st = b.RestoreState(s, "opt.bin");
  CHECK(!st.ok());
  CHECK(std::string(st.message()).find("checksum") != std::string::npos);
  CHECK(!b.RestoreState(s.substr(0, 30), "opt.bin").ok());
  AdamW other(5, c);
  CHECK(!other.RestoreState(a.SerializeState(), "opt.bin").ok());
}

}  // namespace
}  // namespace grpo
