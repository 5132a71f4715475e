// Tests for learner/optimizer.h: AdamW against an fp64 transcription of PyTorch's update,
// global-norm clipping, skipping non-finite steps, the schedules at hand-computed points, and the
// state file round trip and corruption checks, bf16 weights with an fp32 master copy. Plus
// CRC-32C's standard check value.
#include "learner/optimizer.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <numbers>
#include <vector>

#include "learner/crc32c.h"
#include "rollout/weight_sync.h"

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

bool IsBf16Valued(float x) { return Bf16ToFloat(FloatToBf16(x)) == x; }

TEST_CASE("bf16 weights: AdamW updates an fp32 master and the weights are its rounding",
          "[optimizer]") {
  OptimizerConfig c;
  c.lr = 1e-3;  // each step moves a weight near 1 by ~1e-3, under half a bf16 ulp (2^-8)
  c.max_grad_norm = 0;
  OptimizerConfig cb = c;
  cb.weight_dtype = "bf16";
  REQUIRE(cb.Validate().ok());
  std::vector<float> p32 = {1.0f, -0.3f, 2.5f, 0.123456789f};
  std::vector<float> p16 = p32;
  AdamW a32(4, c), a16(4, cb);
  CHECK(a16.bf16_weights());
  a16.BindWeights(p16.data());
  REQUIRE(a16.master() != nullptr);
  CHECK(std::vector<float>(a16.master(), a16.master() + 4) == p32);  // the unrounded start
  for (float x : p16) CHECK(IsBf16Valued(x));
  CHECK(p16[3] != p32[3]);  // 0.123456789 is not a bf16 value
  a32.BindWeights(p32.data());  // fp32: nothing to do
  CHECK(a32.master() == nullptr);
  for (int step = 1; step <= 10; ++step) {
    std::vector<float> g = {0.5f, -0.25f, 0.125f * step, 1.0f};
    std::vector<float> g2 = g;
    a32.Step(p32.data(), g.data(), c.lr);
    a16.Step(p16.data(), g2.data(), cb.lr);
    // The master follows the fp32 run bit for bit; the weights are its rounding.
    for (int i = 0; i < 4; ++i) {
      CHECK(a16.master()[i] == p32[i]);
      CHECK(p16[i] == Bf16ToFloat(FloatToBf16(p32[i])));
    }
  }
  // Ten steps of ~1e-3 add up past a bf16 ulp: the weight moved, which rounding the weights
  // themselves after every step (no master) would never do.
  CHECK(p16[0] < 1.0f);
  CHECK(p16[0] == Bf16ToFloat(FloatToBf16(p32[0])));

  // State round trip keeps the master: a restored copy continues bit for bit.
  AdamW b16(4, cb);
  REQUIRE(b16.RestoreState(a16.SerializeState(), "state").ok());
  std::vector<float> q16 = p16;
  b16.BindWeights(q16.data());
  CHECK(q16 == p16);
  {
    std::vector<float> g = {0.1f, 0.2f, 0.3f, 0.4f}, g2 = g;
    a16.Step(p16.data(), g.data(), cb.lr);
    b16.Step(q16.data(), g2.data(), cb.lr);
    CHECK(q16 == p16);
    CHECK(std::vector<float>(b16.master(), b16.master() + 4) ==
          std::vector<float>(a16.master(), a16.master() + 4));
  }
  // Resumed as fp32: the weights take the master's full precision and the copy is dropped.
  AdamW f32(4, c);
  REQUIRE(f32.RestoreState(a16.SerializeState(), "state").ok());
  std::vector<float> r32 = p16;
  f32.BindWeights(r32.data());
  CHECK(f32.master() == nullptr);
  CHECK(r32 == std::vector<float>(a16.master(), a16.master() + 4));
  CHECK(f32.SerializeState().size() < a16.SerializeState().size());

  // Step binds lazily when BindWeights was not called.
  AdamW lazy(4, cb);
  std::vector<float> pl = {0.123456789f, 1, 1, 1}, gl = {0, 0, 0, 0};
  lazy.Step(pl.data(), gl.data(), 0.0);
  REQUIRE(lazy.master() != nullptr);
  CHECK(lazy.master()[0] == 0.123456789f);
  CHECK(IsBf16Valued(pl[0]));

  OptimizerConfig bad = c;
  bad.weight_dtype = "fp16";
  const absl::Status st = bad.Validate();
  CHECK(!st.ok());
  CHECK(std::string(st.message()).find("optimizer.weight_dtype 'fp16'") != std::string::npos);
}

TEST_CASE("AdamW reads version 1 state files (no master copy)", "[optimizer]") {
  OptimizerConfig c;
  const std::vector<float> m = {0.5f, -0.5f}, v = {0.25f, 0.125f};
  std::string s = "GRPOADAM";
  auto put = [&](const auto& x) { s.append(reinterpret_cast<const char*>(&x), sizeof(x)); };
  put(uint32_t{1});
  put(int64_t{2});   // n
  put(int64_t{7});   // step
  s.append(reinterpret_cast<const char*>(m.data()), 8);
  s.append(reinterpret_cast<const char*>(v.data()), 8);
  put(Crc32cOf(s));
  AdamW a(2, c);
  REQUIRE(a.RestoreState(s, "v1.bin").ok());
  CHECK(a.step_count() == 7);
  CHECK(a.master() == nullptr);
  // Re-serialized as version 2, it reads back the same.
  AdamW b(2, c);
  REQUIRE(b.RestoreState(a.SerializeState(), "v2.bin").ok());
  CHECK(b.SerializeState() == a.SerializeState());
  // A version-2 has_master field other than 0 or 1 is refused by name.
  std::string bad = a.SerializeState();
  bad[28] = 5;
  const absl::Status st = b.RestoreState(bad, "opt.bin");
  CHECK(!st.ok());
  CHECK(std::string(st.message()).find("has_master") != std::string::npos);
}

}  // namespace
}  // namespace grpo
