// RMSNorm forward on the GPU, the CUDA twin of cpu::RmsNormForward<float>. Host-facing API with
// no CUDA types: buffers are device pointers obtained from DeviceBuffer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grpo::cuda {

// Owns one device allocation (move-only). Empty when size is 0.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// out (T, C), rstd (T) = RMSNorm of x (T, C) with weight w (C); all device pointers, fp32.
// Synchronous: returns after the kernel finished, with its error if any.
absl::Status RmsNormForward(float* out, float* rstd, const float* x, const float* w, int64_t T,
                            int64_t C, float eps);

}  // namespace grpo::cuda
