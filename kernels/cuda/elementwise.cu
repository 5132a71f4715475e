// Elementwise and small ops: casts, bias, column reductions, embedding, SwiGLU, AdamW, scratch.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {

absl::Status GetScratch(ScratchSlot slot, size_t bytes, void** ptr) {
  // Per host thread and device (common.cuh): freed when the thread ends.
  thread_local std::vector<std::array<DeviceBuffer, kNumScratch>> per_device;
  int device = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  if (device >= static_cast<int>(per_device.size())) per_device.resize(device + 1);
  DeviceBuffer& b = per_device[device][slot];
  RETURN_IF_ERROR(b.Reserve(bytes));
  *ptr = b.data();
  return absl::OkStatus();
}

namespace {

constexpr int kThreads = 256;
unsigned Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);
}

__global__ void cast_to_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}
__global__ void cast_to_float_kernel(float* out, const __nv_bfloat16* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}
__global__ void add_row_bias_kernel(float* y, const float* b, int64_t R, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < R * C;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % C];
}

// Block (32, 8) covers 32 columns; blockIdx.y takes rows [y*rows_per, (y+1)*rows_per).
// partial (gridDim.y, C) = each block's column sums, in a fixed order.
__global__ void column_partial_kernel(float* partial, const float* a, const float* b,
                                      const float* s, int64_t R, int64_t C, int64_t rows_per) {
  __shared__ float sh[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per, r1 = min(R, r0 + rows_per);
  float acc = 0.f;
  if (c < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const float v = a[r * C + c];
      acc += b == nullptr ? v : v * b[r * C + c] * s[r];
    }
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.f;
    for (int i = 0; i < 8; ++i) t += sh[i][threadIdx.x];
    partial[blockIdx.y * C + c] = t;
  }
}
__global__ void column_finish_kernel(float* out, const float* partial, int64_t num_parts,
                                     int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float t = 0.f;
  for (int64_t p = 0; p < num_parts; ++p) t += partial[p * C + c];
  out[c] += t;
}

__global__ void embedding_forward_kernel(float* x, const int32_t* tokens,
                                         const __nv_bfloat16* table, int64_t H) {
  const int64_t t = blockIdx.x;
  const __nv_bfloat16* row = table + int64_t(tokens[t]) * H;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) x[t * H + j] = __bfloat162float(row[j]);
}
__global__ void embedding_backward_kernel(float* dtable, const int32_t* tokens, const float* dx,
                                          int64_t H) {
  const int64_t t = blockIdx.x;
  float* row = dtable + int64_t(tokens[t]) * H;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) atomicAdd(row + j, dx[t * H + j]);
}

__device__ __forceinline__ float Silu(float g) { return g / (1.f + __expf(-g)); }

__global__ void swiglu_forward_kernel(__nv_bfloat16* h, const float* gu, int64_t N, int64_t I) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * I;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / I, j = i % I;
    const float g = gu[r * 2 * I + j], u = gu[r * 2 * I + I + j];
    h[i] = __float2bfloat16(Silu(g) * u);
  }
}
__global__ void swiglu_backward_kernel(__nv_bfloat16* dgu, const float* dh, const float* gu,
                                       int64_t N, int64_t I) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * I;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / I, j = i % I;
    const float g = gu[r * 2 * I + j], u = gu[r * 2 * I + I + j];
    const float sg = 1.f / (1.f + __expf(-g));
    const float d = dh[i];
    // d(silu)/dg = sg * (1 + g * (1 - sg)).
    dgu[r * 2 * I + j] = __float2bfloat16(d * u * sg * (1.f + g * (1.f - sg)));
    dgu[r * 2 * I + I + j] = __float2bfloat16(d * g * sg);
  }
}

__global__ void adamw_kernel(float* p, __nv_bfloat16* p_bf16, const float* g, float* m, float* v,
                             int64_t n, AdamWParams a, float bc1, float bc2) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = a.beta1 * m[i] + (1.f - a.beta1) * gi;
    const float vi = a.beta2 * v[i] + (1.f - a.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i] * (1.f - a.lr * a.weight_decay);
    pi -= a.lr * (mi / bc1) / (sqrtf(vi / bc2) + a.eps);
    p[i] = pi;
    if (p_bf16 != nullptr) p_bf16[i] = __float2bfloat16(pi);
  }
}

}  // namespace

absl::Status CastToBf16(bf16_bits* out, const float* in, int64_t n) {
  if (n == 0) return absl::OkStatus();
  cast_to_bf16_kernel<<<Blocks(n), kThreads, 0, Stream()>>>(reinterpret_cast<__nv_bfloat16*>(out),
                                                            in, n);
  return LaunchStatus("cast_to_bf16_kernel");
}
absl::Status CastToFloat(float* out, const bf16_bits* in, int64_t n) {
  if (n == 0) return absl::OkStatus();
  cast_to_float_kernel<<<Blocks(n), kThreads, 0, Stream()>>>(
      out, reinterpret_cast<const __nv_bfloat16*>(in), n);
  return LaunchStatus("cast_to_float_kernel");
}
absl::Status AddRowBias(float* y, const float* b, int64_t R, int64_t C) {
  if (R * C == 0) return absl::OkStatus();
  add_row_bias_kernel<<<Blocks(R * C), kThreads, 0, Stream()>>>(y, b, R, C);
  return LaunchStatus("add_row_bias_kernel");
}

absl::Status ColumnReduceAdd(float* out, const float* a, const float* b, const float* s, int64_t R,
                             int64_t C) {
  if (R == 0 || C == 0) return absl::OkStatus();
  // Enough row splits to fill the GPU, each at least 64 rows.
  const int64_t col_blocks = (C + 31) / 32;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>((R + 63) / 64, 1024 / col_blocks + 1));
  parts = std::min<int64_t>(parts, 65535);
  const int64_t rows_per = (R + parts - 1) / parts;
  parts = (R + rows_per - 1) / rows_per;
  void* scratch = nullptr;
  RETURN_IF_ERROR(GetScratch(kScratchPartials, sizeof(float) * parts * C, &scratch));
  float* partial = static_cast<float*>(scratch);
  column_partial_kernel<<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(parts)),
                          dim3(32, 8), 0, Stream()>>>(partial, a, b, s, R, C, rows_per);
  RETURN_IF_ERROR(LaunchStatus("column_partial_kernel"));
  column_finish_kernel<<<CeilDiv(C, 256), 256, 0, Stream()>>>(out, partial, parts, C);
  return LaunchStatus("column_finish_kernel");
}

absl::Status ColumnSumAdd(float* out, const float* in, int64_t R, int64_t C) {
  return ColumnReduceAdd(out, in, nullptr, nullptr, R, C);
}

absl::Status EmbeddingForward(float* x, const int32_t* tokens, const bf16_bits* table, int64_t T,
                              int64_t H) {
  if (T == 0) return absl::OkStatus();
  embedding_forward_kernel<<<static_cast<unsigned>(T), 128, 0, Stream()>>>(
      x, tokens, reinterpret_cast<const __nv_bfloat16*>(table), H);
  return LaunchStatus("embedding_forward_kernel");
}
absl::Status EmbeddingBackward(float* dtable, const int32_t* tokens, const float* dx, int64_t T,
                               int64_t H) {
  if (T == 0) return absl::OkStatus();
  embedding_backward_kernel<<<static_cast<unsigned>(T), 128, 0, Stream()>>>(dtable, tokens, dx, H);
  return LaunchStatus("embedding_backward_kernel");
}

absl::Status SwiGluForward(bf16_bits* h, const float* gu, int64_t N, int64_t I) {
  if (N * I == 0) return absl::OkStatus();
  swiglu_forward_kernel<<<Blocks(N * I), kThreads, 0, Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(h), gu, N, I);
  return LaunchStatus("swiglu_forward_kernel");
}
absl::Status SwiGluBackward(bf16_bits* dgu, const float* dh, const float* gu, int64_t N,
                            int64_t I) {
  if (N * I == 0) return absl::OkStatus();
  swiglu_backward_kernel<<<Blocks(N * I), kThreads, 0, Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(dgu), dh, gu, N, I);
  return LaunchStatus("swiglu_backward_kernel");
}

absl::Status AdamW(float* p, bf16_bits* p_bf16, const float* g, float* m, float* v, int64_t n,
                   AdamWParams a) {
  if (n == 0) return absl::OkStatus();
  if (a.step < 1) return absl::InvalidArgumentError("AdamW: step counts from 1");
  const float bc1 = 1.f - std::pow(a.beta1, static_cast<float>(a.step));
  const float bc2 = 1.f - std::pow(a.beta2, static_cast<float>(a.step));
  adamw_kernel<<<Blocks(n), kThreads, 0, Stream()>>>(p, reinterpret_cast<__nv_bfloat16*>(p_bf16), g,
                                                     m, v, n, a, bc1, bc2);
  return LaunchStatus("adamw_kernel");
}

}  // namespace grpo::cuda
