// RMSNorm forward/backward and the attention input block (bias, q/k RMSNorm, RoPE, K/V write).
#include <algorithm>

#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {
namespace {

// One block per row: sum of squares in fp32, then the scaled write.
__global__ void rmsnorm_forward_kernel(float* out_f, __nv_bfloat16* out_b, float* rstd,
                                       const float* x, const float* w, int64_t C, float eps) {
  __shared__ float scratch[33];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * C;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) sum += xr[i] * xr[i];
  sum = BlockSum(sum, scratch);
  const float r = rsqrtf(sum / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
    const float y = w[i] * (xr[i] * r);
    if (out_f != nullptr) out_f[row * C + i] = y;
    if (out_b != nullptr) out_b[row * C + i] = __float2bfloat16(y);
  }
}

// dx_c += r w_c dy_c - x_c r^3 / C * sum_j w_j dy_j x_j (see the CPU reference).
__global__ void rmsnorm_backward_kernel(float* dx, const float* dout, const float* x,
                                        const float* w, const float* rstd, int64_t C) {
  __shared__ float scratch[33];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * C;
  const float* dyr = dout + row * C;
  float dot = 0.f;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dot += w[i] * dyr[i] * xr[i];
  dot = BlockSum(dot, scratch);
  const float r = rstd[row];
  const float coef = dot * r * r * r / static_cast<float>(C);
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
    dx[row * C + i] += r * w[i] * dyr[i] - xr[i] * coef;
}

// One warp per (token, head slot); slots [0,nh) are q heads, [nh, nh+nkv) k, then v.
// Dynamic shared memory: hd floats per warp.
__global__ void qkv_forward_kernel(float* q, __nv_bfloat16* kbuf, __nv_bfloat16* vbuf,
                                   float* rstd_q, float* rstd_k, const float* qkv,
                                   const float* bias, const float* q_norm, const float* k_norm,
                                   const int32_t* pos, const int64_t* kv_row, const float* cos,
                                   const float* sin, QkvDims d, float eps) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slots = d.nh + 2 * d.nkv;
  const int64_t item = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (item >= d.T * slots) return;
  const int64_t t = item / slots, s = item % slots, hd = d.hd, half = hd / 2;
  const int64_t qkvd = slots * hd, kvd = d.nkv * hd;
  float* buf = smem + warp * hd;
  const float* src = qkv + t * qkvd + s * hd;
  const float* b = bias != nullptr ? bias + s * hd : nullptr;
  const int64_t row = kv_row != nullptr ? kv_row[t] : t;
  if (s >= d.nh + d.nkv) {  // v: bias only
    __nv_bfloat16* dst = vbuf + row * kvd + (s - d.nh - d.nkv) * hd;
    for (int64_t j = lane; j < hd; j += 32) dst[j] = __float2bfloat16(src[j] + (b ? b[j] : 0.f));
    return;
  }
  const bool is_q = s < d.nh;
  const float* nw = is_q ? q_norm : k_norm;
  float ss = 0.f;
  for (int64_t j = lane; j < hd; j += 32) {
    const float v = src[j] + (b ? b[j] : 0.f);
    buf[j] = v;
    ss += v * v;
  }
  if (nw != nullptr) {
    ss = WarpSum(ss);
    const float r = rsqrtf(ss / static_cast<float>(hd) + eps);
    if (lane == 0) {
      if (is_q)
        rstd_q[t * d.nh + s] = r;
      else
        rstd_k[t * d.nkv + (s - d.nh)] = r;
    }
    for (int64_t j = lane; j < hd; j += 32) buf[j] = nw[j] * (buf[j] * r);
  }
  __syncwarp();
  const float* cr = cos + int64_t(pos[t]) * half;
  const float* sr = sin + int64_t(pos[t]) * half;
  for (int64_t j = lane; j < half; j += 32) {
    const float x1 = buf[j], x2 = buf[j + half], c = cr[j], sn = sr[j];
    const float y1 = x1 * c - x2 * sn, y2 = x2 * c + x1 * sn;
    if (is_q) {
      float* dst = q + (t * d.nh + s) * hd;
      dst[j] = y1;
      dst[j + half] = y2;
    } else {
      __nv_bfloat16* dst = kbuf + row * kvd + (s - d.nh) * hd;
      dst[j] = __float2bfloat16(y1);
      dst[j + half] = __float2bfloat16(y2);
    }
  }
}

// Backward of qkv_forward_kernel for training (kv rows == tokens). For normed heads the gradient
// buffer dq/dk row is overwritten with dy * x * rstd (the norm weight's per-row contribution).
__global__ void qkv_backward_kernel(float* dqkv, float* dq, float* dk, const float* dv,
                                    const float* qkv, const float* bias, const float* q_norm,
                                    const float* k_norm, const float* rstd_q, const float* rstd_k,
                                    const int32_t* pos, const float* cos, const float* sin,
                                    QkvDims d) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slots = d.nh + 2 * d.nkv;
  const int64_t item = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (item >= d.T * slots) return;
  const int64_t t = item / slots, s = item % slots, hd = d.hd, half = hd / 2;
  const int64_t qkvd = slots * hd;
  float* out = dqkv + t * qkvd + s * hd;
  if (s >= d.nh + d.nkv) {
    const float* g = dv + (t * d.nkv + (s - d.nh - d.nkv)) * hd;
    for (int64_t j = lane; j < hd; j += 32) out[j] = g[j];
    return;
  }
  const bool is_q = s < d.nh;
  float* g = is_q ? dq + (t * d.nh + s) * hd : dk + (t * d.nkv + (s - d.nh)) * hd;
  float* buf = smem + warp * hd;
  // RoPE backward: the rotation by -angle.
  const float* cr = cos + int64_t(pos[t]) * half;
  const float* sr = sin + int64_t(pos[t]) * half;
  for (int64_t j = lane; j < half; j += 32) {
    const float g1 = g[j], g2 = g[j + half], c = cr[j], sn = sr[j];
    buf[j] = g1 * c + g2 * sn;
    buf[j + half] = g2 * c - g1 * sn;
  }
  __syncwarp();
  const float* nw = is_q ? q_norm : k_norm;
  if (nw == nullptr) {
    for (int64_t j = lane; j < hd; j += 32) out[j] = buf[j];
    return;
  }
  const float r = is_q ? rstd_q[t * d.nh + s] : rstd_k[t * d.nkv + (s - d.nh)];
  const float* src = qkv + t * qkvd + s * hd;
  const float* b = bias != nullptr ? bias + s * hd : nullptr;
  float dot = 0.f;
  for (int64_t j = lane; j < hd; j += 32) dot += nw[j] * buf[j] * (src[j] + (b ? b[j] : 0.f));
  dot = WarpSum(dot);
  const float coef = dot * r * r * r / static_cast<float>(hd);
  for (int64_t j = lane; j < hd; j += 32) {
    const float x = src[j] + (b ? b[j] : 0.f);
    out[j] = r * nw[j] * buf[j] - x * coef;
    g[j] = buf[j] * x * r;
  }
}

int RowThreads(int64_t C) { return C >= 1024 ? 512 : C >= 256 ? 256 : 128; }

}  // namespace

absl::Status RmsNormForward(float* out_f32, bf16_bits* out_bf16, float* rstd, const float* x,
                            const float* w, int64_t T, int64_t C, float eps) {
  if (T == 0) return absl::OkStatus();
  rmsnorm_forward_kernel<<<static_cast<unsigned>(T), RowThreads(C), 0, Stream()>>>(
      out_f32, reinterpret_cast<__nv_bfloat16*>(out_bf16), rstd, x, w, C, eps);
  return LaunchStatus("rmsnorm_forward_kernel");
}

absl::Status RmsNormBackward(float* dx, float* dw, const float* dout, const float* x,
                             const float* w, const float* rstd, int64_t T, int64_t C) {
  if (T == 0) return absl::OkStatus();
  if (dx != nullptr) {
    rmsnorm_backward_kernel<<<static_cast<unsigned>(T), RowThreads(C), 0, Stream()>>>(dx, dout, x,
                                                                                      w, rstd, C);
    RETURN_IF_ERROR(LaunchStatus("rmsnorm_backward_kernel"));
  }
  if (dw != nullptr) return ColumnReduceAdd(dw, dout, x, rstd, T, C);
  return absl::OkStatus();
}

absl::Status QkvForward(float* q, bf16_bits* kbuf, bf16_bits* vbuf, float* rstd_q, float* rstd_k,
                        const float* qkv, const float* bias, const float* q_norm,
                        const float* k_norm, const int32_t* pos, const int64_t* kv_row,
                        const float* cos, const float* sin, QkvDims d, float eps) {
  if (d.T == 0) return absl::OkStatus();
  if (d.hd % 2 != 0 || d.hd > 1024) return absl::InvalidArgumentError("QkvForward: bad head_dim");
  const int64_t items = d.T * (d.nh + 2 * d.nkv);
  constexpr int kWarps = 4;
  qkv_forward_kernel<<<CeilDiv(items, kWarps), kWarps * 32, kWarps * d.hd * sizeof(float),
                       Stream()>>>(q, reinterpret_cast<__nv_bfloat16*>(kbuf),
                                   reinterpret_cast<__nv_bfloat16*>(vbuf), rstd_q, rstd_k, qkv,
                                   bias, q_norm, k_norm, pos, kv_row, cos, sin, d, eps);
  return LaunchStatus("qkv_forward_kernel");
}

absl::Status QkvBackward(float* dqkv, float* dq_norm, float* dk_norm, float* dq, float* dk,
                         const float* dv, const float* qkv, const float* bias, const float* q_norm,
                         const float* k_norm, const float* rstd_q, const float* rstd_k,
                         const int32_t* pos, const float* cos, const float* sin, QkvDims d) {
  if (d.T == 0) return absl::OkStatus();
  const int64_t items = d.T * (d.nh + 2 * d.nkv);
  constexpr int kWarps = 4;
  qkv_backward_kernel<<<CeilDiv(items, kWarps), kWarps * 32, kWarps * d.hd * sizeof(float),
                        Stream()>>>(dqkv, dq, dk, dv, qkv, bias, q_norm, k_norm, rstd_q, rstd_k,
                                    pos, cos, sin, d);
  RETURN_IF_ERROR(LaunchStatus("qkv_backward_kernel"));
  if (q_norm != nullptr && dq_norm != nullptr) {
    RETURN_IF_ERROR(ColumnSumAdd(dq_norm, dq, d.T * d.nh, d.hd));
  }
  if (k_norm != nullptr && dk_norm != nullptr) return ColumnSumAdd(dk_norm, dk, d.T * d.nkv, d.hd);
  return absl::OkStatus();
}

}  // namespace grpo::cuda
