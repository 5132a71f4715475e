// Private to kernels/cuda: error conversion and small device helpers shared by the .cu files.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace grpo::cuda {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

inline absl::Status CublasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", static_cast<int>(st)));
}

// After a launch: configuration errors (bad grid, too much shared memory) surface here;
// execution errors surface at the next synchronizing call.
inline absl::Status LaunchStatus(const char* kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

// The stream every kernel launch, asynchronous copy and cuBLAS call of the calling thread goes
// to: the legacy default stream (nullptr), except while a DeviceGraph (device.h) captures this
// thread's work, when it is the capture stream.
cudaStream_t Stream();

inline unsigned CeilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// Block-wide sum/max for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `scratch` holds 33 floats of shared memory; the call contains __syncthreads().
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nw ? scratch[lane] : 0.f;
    s = WarpSum(s);
    if (lane == 0) scratch[32] = s;
  }
  __syncthreads();
  return scratch[32];
}
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nw ? scratch[lane] : -INFINITY;
    s = WarpMax(s);
    if (lane == 0) scratch[32] = s;
  }
  __syncthreads();
  return scratch[32];
}

__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

}  // namespace grpo::cuda

namespace grpo::cuda {

// Per-purpose device scratch that grows on demand and is never shrunk (steady state: no
// allocation per call). One set per host thread and device: within a thread all work is on one
// stream in order, so a later user of a slot is queued after every earlier reader; two threads
// driving models on one GPU (several rollout engines in a process, data-parallel ranks) have
// their own, since one could otherwise rewrite a table another's queued kernel has yet to read.
// Slots: kScratchSeqs (attention sequence tables), kScratchPartials (column-reduction partials),
// kScratchGemmPtrs (grouped GEMM pointer arrays).
enum ScratchSlot {
  kScratchSeqs = 0,
  kScratchPartials = 1,
  kScratchGemmPtrs = 2,
  kNumScratch = 3
};
absl::Status GetScratch(ScratchSlot slot, size_t bytes, void** ptr);

// out (C) += sum over rows of a[r,c] (b == null) or of a[r,c] * b[r,c] * s[r]; deterministic.
absl::Status ColumnReduceAdd(float* out, const float* a, const float* b, const float* s, int64_t R,
                             int64_t C);

}  // namespace grpo::cuda
