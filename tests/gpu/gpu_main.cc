// Main of grpo_gpu_tests: CUDA kernels checked against their CPU twins. With no CUDA device it
// prints a SKIPPED line and exits 77, which ctest reports as "Skipped" (visible in CI's log).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "kernels/cuda/device.h"

int main(int argc, char** argv) {
  if (grpo::cuda::DeviceCount() == 0) {
    std::printf("SKIPPED: no CUDA device on this machine; GPU tests (CUDA vs CPU twins) not run\n");
    return 77;
  }
  std::printf("GPU: %s\n", grpo::cuda::DeviceDescription(0).c_str());
  return Catch::Session().run(argc, argv);
}
