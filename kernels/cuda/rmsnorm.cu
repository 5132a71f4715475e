#include "kernels/cuda/rmsnorm.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"

namespace grpo::cuda {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// One block per row; a block-wide sum of squares in fp32, then the scaled write.
template <int kThreads>
__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* w,
                                       int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * C;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < C; i += kThreads) sum += xr[i] * xr[i];
  __shared__ float partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffff, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    sum = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffff, sum, offset);
    if (threadIdx.x == 0) partial[0] = rsqrtf(sum / static_cast<float>(C) + eps);
  }
  __syncthreads();
  const float r = partial[0];
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t i = threadIdx.x; i < C; i += kThreads) out[row * C + i] = w[i] * (xr[i] * r);
}

}  // namespace

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  absl::Status s = CudaStatus(cudaMalloc(&b.ptr_, bytes), "cudaMalloc");
  if (!s.ok()) return s;
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  if (bytes > bytes_) return absl::OutOfRangeError("CopyFromHost: more bytes than the buffer");
  return CudaStatus(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  if (bytes > bytes_) return absl::OutOfRangeError("CopyToHost: more bytes than the buffer");
  return CudaStatus(cudaMemcpy(dst, ptr_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

absl::Status RmsNormForward(float* out, float* rstd, const float* x, const float* w, int64_t T,
                            int64_t C, float eps) {
  if (T == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  rmsnorm_forward_kernel<kThreads><<<static_cast<unsigned>(T), kThreads>>>(out, rstd, x, w, C, eps);
  absl::Status s = CudaStatus(cudaGetLastError(), "rmsnorm_forward_kernel launch");
  if (!s.ok()) return s;
  return CudaStatus(cudaDeviceSynchronize(), "rmsnorm_forward_kernel");
}

}  // namespace grpo::cuda
