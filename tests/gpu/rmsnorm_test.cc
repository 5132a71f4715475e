// CUDA RMSNorm against its CPU twin. Part of grpo_gpu_tests (see gpu_main.cc for the skip).
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/rmsnorm.h"

namespace grpo {
namespace {

TEST_CASE("cuda RmsNormForward matches the CPU reference", "[cuda][gpu]") {
  INFO(cuda::DeviceDescription(0));
  const int64_t T = 37, C = 1000;
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.f, 2.f);
  std::vector<float> x(T * C), w(C);
  for (auto& v : x) v = n(rng);
  for (auto& v : w) v = 1.f + 0.1f * n(rng);
  std::vector<float> ref(T * C), ref_rstd(T);
  cpu::RmsNormForward<float>(ref.data(), ref_rstd.data(), x.data(), w.data(), T, C, 1e-6f);

  auto dx = cuda::DeviceBuffer::Allocate(x.size() * 4);
  auto dw = cuda::DeviceBuffer::Allocate(w.size() * 4);
  auto dout = cuda::DeviceBuffer::Allocate(x.size() * 4);
  auto drstd = cuda::DeviceBuffer::Allocate(T * 4);
  REQUIRE((dx.ok() && dw.ok() && dout.ok() && drstd.ok()));
  REQUIRE(dx->CopyFromHost(x.data(), x.size() * 4).ok());
  REQUIRE(dw->CopyFromHost(w.data(), w.size() * 4).ok());
  REQUIRE(cuda::RmsNormForward(static_cast<float*>(dout->data()), static_cast<float*>(drstd->data()),
                               static_cast<const float*>(dx->data()),
                               static_cast<const float*>(dw->data()), T, C, 1e-6f)
              .ok());
  std::vector<float> out(T * C), rstd(T);
  REQUIRE(dout->CopyToHost(out.data(), out.size() * 4).ok());
  REQUIRE(drstd->CopyToHost(rstd.data(), rstd.size() * 4).ok());
  // Different summation order: tolerance 1e-5 relative on O(1) values.
  double worst = 0;
  for (int64_t i = 0; i < T * C; ++i) worst = std::max(worst, double(std::abs(out[i] - ref[i])) / (1e-3 + std::abs(ref[i])));
  CHECK(worst < 1e-5);
  for (int64_t t = 0; t < T; ++t) CHECK(std::abs(rstd[t] - ref_rstd[t]) <= 1e-5f * ref_rstd[t]);
}

}  // namespace
}  // namespace grpo

