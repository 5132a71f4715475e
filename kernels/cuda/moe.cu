// MoE routing on the GPU: softmax top-k router (+ replay) and its backward, the stable
// dispatch of (token, k) pairs to expert-grouped rows, gather, combine and their backwards.
// Dispatch order equals the CPU model's (grouped by expert, tokens ascending), so expert GEMM
// inputs line up row for row with the reference.
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {
namespace {

// One warp per token; shared memory E floats per warp.
__global__ void router_forward_kernel(float* probs, int32_t* idx, float* w, const float* logits,
                                      const int32_t* forced, int64_t T, int64_t E, int64_t K,
                                      bool norm_topk) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (t >= T) return;
  float* p = smem + warp * E;
  const float* lg = logits + t * E;
  float m = -INFINITY;
  for (int64_t e = lane; e < E; e += 32) m = fmaxf(m, lg[e]);
  m = WarpMax(m);
  float sum = 0.f;
  for (int64_t e = lane; e < E; e += 32) {
    p[e] = expf(lg[e] - m);
    sum += p[e];
  }
  sum = WarpSum(sum);
  const float inv = 1.f / sum;  // torch's softmax multiplies by the reciprocal
  for (int64_t e = lane; e < E; e += 32) {
    p[e] *= inv;
    probs[t * E + e] = p[e];
  }
  __syncwarp();
  float wsum = 0.f;
  for (int64_t j = 0; j < K; ++j) {
    int32_t best;
    if (forced != nullptr) {
      best = forced[t * K + j];
    } else {
      // Arg-max with lower id winning ties; chosen experts are marked -1 (probs are >= 0).
      float bv = -2.f;
      int32_t bi = 0x7fffffff;
      for (int64_t e = lane; e < E; e += 32) {
        if (p[e] > bv) {
          bv = p[e];
          bi = static_cast<int32_t>(e);
        }
      }
      for (int o = 16; o > 0; o /= 2) {
        const float ov = __shfl_xor_sync(0xffffffff, bv, o);
        const int32_t oi = __shfl_xor_sync(0xffffffff, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
          bv = ov;
          bi = oi;
        }
      }
      best = bi;
    }
    const float pw = probs[t * E + best];
    wsum += pw;
    if (lane == 0) {
      idx[t * K + j] = best;
      w[t * K + j] = pw;
    }
    __syncwarp();
    if (forced == nullptr && lane == 0) p[best] = -1.f;
    __syncwarp();
  }
  if (norm_topk && lane == 0) {
    for (int64_t j = 0; j < K; ++j) w[t * K + j] /= wsum;
  }
}

__global__ void router_backward_kernel(float* dlogits, const float* dw, const float* dprobs_extra,
                                       const float* probs, const int32_t* idx, const float* w,
                                       int64_t T, int64_t E, int64_t K, bool norm_topk) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + warp;
  if (t >= T) return;
  float* dp = smem + warp * E;
  const float* p = probs + t * E;
  for (int64_t e = lane; e < E; e += 32) dp[e] = dprobs_extra != nullptr ? dprobs_extra[e] : 0.f;
  __syncwarp();
  if (lane == 0 && dw != nullptr) {
    const float* dwr = dw + t * K;
    const int32_t* id = idx + t * K;
    if (norm_topk) {
      // w_j = p_j / S: dp_j = (dw_j - sum_m dw_m w_m) / S.
      float s = 0.f, dot = 0.f;
      for (int64_t j = 0; j < K; ++j) {
        s += p[id[j]];
        dot += dwr[j] * w[t * K + j];
      }
      for (int64_t j = 0; j < K; ++j) dp[id[j]] += (dwr[j] - dot) / s;
    } else {
      for (int64_t j = 0; j < K; ++j) dp[id[j]] += dwr[j];
    }
  }
  __syncwarp();
  float pdp = 0.f;
  for (int64_t e = lane; e < E; e += 32) pdp += p[e] * dp[e];
  pdp = WarpSum(pdp);
  for (int64_t e = lane; e < E; e += 32) dlogits[t * E + e] = p[e] * (dp[e] - pdp);
}

__global__ void moe_count_kernel(int32_t* counts, const int32_t* idx, int64_t NK) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < NK;
       i += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(counts + idx[i], 1);
}

// One block per expert: a stable block-wide scan over all pairs finds each pair's rank.
template <int kThreads>
__global__ void moe_assign_kernel(int32_t* slot_token, int32_t* slot_of, const int32_t* idx,
                                  const int64_t* expert_begin, int64_t NK, int64_t K) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int running;
  const int32_t e = blockIdx.x;
  if (threadIdx.x == 0) running = 0;
  __syncthreads();
  for (int64_t base = 0; base < NK; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const int flag = i < NK && idx[i] == e ? 1 : 0;
    int rank, total;
    Scan(tmp).ExclusiveSum(flag, rank, total);
    if (flag) {
      const int64_t slot = expert_begin[e] + running + rank;
      slot_token[slot] = static_cast<int32_t>(i / K);
      slot_of[i] = static_cast<int32_t>(slot);
    }
    __syncthreads();
    if (threadIdx.x == 0) running += total;
    __syncthreads();
  }
}

__global__ void gather_rows_kernel(__nv_bfloat16* xe, const __nv_bfloat16* x,
                                   const int32_t* slot_token, int64_t H) {
  const int64_t r = blockIdx.x;
  const int32_t t = slot_token[r];
  if (t < 0) {  // a padding row
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) xe[r * H + j] = __float2bfloat16(0.f);
    return;
  }
  const __nv_bfloat16* src = x + int64_t(t) * H;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) xe[r * H + j] = src[j];
}

__global__ void moe_combine_kernel(float* out, const float* ye, const float* w,
                                   const int32_t* slot_of, int64_t K, int64_t H) {
  const int64_t t = blockIdx.x;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc += w[t * K + k] * ye[int64_t(slot_of[t * K + k]) * H + j];
    out[t * H + j] += acc;
  }
}

__global__ void moe_combine_backward_kernel(__nv_bfloat16* dye, float* dw, const float* dout,
                                            const float* ye, const float* w, const int32_t* slot_of,
                                            int64_t K, int64_t H) {
  __shared__ float scratch[33];
  const int64_t t = blockIdx.x;
  const float* dy = dout + t * H;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t slot = slot_of[t * K + k];
    const float wk = w[t * K + k];
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      dye[slot * H + j] = __float2bfloat16(wk * dy[j]);
      dot += dy[j] * ye[slot * H + j];
    }
    dot = BlockSum(dot, scratch);
    if (threadIdx.x == 0) dw[t * K + k] = dot;
  }
}

__global__ void moe_gather_add_kernel(float* dx, const float* dxe, const int32_t* slot_of,
                                      int64_t K, int64_t H) {
  const int64_t t = blockIdx.x;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc += dxe[int64_t(slot_of[t * K + k]) * H + j];
    dx[t * H + j] += acc;
  }
}

int RowThreads(int64_t H) { return H >= 512 ? 256 : 128; }

}  // namespace

absl::Status RouterForward(float* probs, int32_t* idx, float* w, const float* logits,
                           const int32_t* forced_idx, int64_t T, int64_t E, int64_t K,
                           bool norm_topk) {
  if (T == 0) return absl::OkStatus();
  if (E > 1024 || K < 1 || K > E) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouterForward: need 1 <= K (", K, ") <= E (", E, ") <= 1024"));
  }
  constexpr int kWarps = 4;
  router_forward_kernel<<<CeilDiv(T, kWarps), kWarps * 32, kWarps * E * sizeof(float), Stream()>>>(
      probs, idx, w, logits, forced_idx, T, E, K, norm_topk);
  return LaunchStatus("router_forward_kernel");
}

absl::Status RouterBackward(float* dlogits, const float* dw, const float* dprobs_extra,
                            const float* probs, const int32_t* idx, const float* w, int64_t T,
                            int64_t E, int64_t K, bool norm_topk) {
  if (T == 0) return absl::OkStatus();
  constexpr int kWarps = 4;
  router_backward_kernel<<<CeilDiv(T, kWarps), kWarps * 32, kWarps * E * sizeof(float), Stream()>>>(
      dlogits, dw, dprobs_extra, probs, idx, w, T, E, K, norm_topk);
  return LaunchStatus("router_backward_kernel");
}

absl::Status MoeCount(int32_t* counts, const int32_t* idx, int64_t NK, int64_t E) {
  absl::Status s = Memset(counts, 0, sizeof(int32_t) * E);
  if (!s.ok() || NK == 0) return s;
  moe_count_kernel<<<std::min<unsigned>(CeilDiv(NK, 256), 1024), 256, 0, Stream()>>>(counts, idx,
                                                                                     NK);
  return LaunchStatus("moe_count_kernel");
}

absl::Status MoeAssign(int32_t* slot_token, int32_t* slot_of, const int32_t* idx,
                       const int64_t* expert_begin, int64_t NK, int64_t K, int64_t E) {
  if (NK == 0) return absl::OkStatus();
  moe_assign_kernel<1024><<<static_cast<unsigned>(E), 1024, 0, Stream()>>>(slot_token, slot_of, idx,
                                                                           expert_begin, NK, K);
  return LaunchStatus("moe_assign_kernel");
}

absl::Status GatherRows(bf16_bits* xe, const bf16_bits* x, const int32_t* slot_token, int64_t NK,
                        int64_t H) {
  if (NK == 0) return absl::OkStatus();
  gather_rows_kernel<<<static_cast<unsigned>(NK), RowThreads(H), 0, Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(xe), reinterpret_cast<const __nv_bfloat16*>(x), slot_token,
      H);
  return LaunchStatus("gather_rows_kernel");
}

absl::Status MoeCombine(float* out, const float* ye, const float* w, const int32_t* slot_of,
                        int64_t T, int64_t K, int64_t H) {
  if (T == 0) return absl::OkStatus();
  moe_combine_kernel<<<static_cast<unsigned>(T), RowThreads(H), 0, Stream()>>>(out, ye, w, slot_of,
                                                                               K, H);
  return LaunchStatus("moe_combine_kernel");
}

absl::Status MoeCombineBackward(bf16_bits* dye, float* dw, const float* dout, const float* ye,
                                const float* w, const int32_t* slot_of, int64_t T, int64_t K,
                                int64_t H) {
  if (T == 0) return absl::OkStatus();
  moe_combine_backward_kernel<<<static_cast<unsigned>(T), RowThreads(H), 0, Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(dye), dw, dout, ye, w, slot_of, K, H);
  return LaunchStatus("moe_combine_backward_kernel");
}

absl::Status MoeGatherAdd(float* dx, const float* dxe, const int32_t* slot_of, int64_t T, int64_t K,
                          int64_t H) {
  if (T == 0) return absl::OkStatus();
  moe_gather_add_kernel<<<static_cast<unsigned>(T), RowThreads(H), 0, Stream()>>>(dx, dxe, slot_of,
                                                                                  K, H);
  return LaunchStatus("moe_gather_add_kernel");
}

}  // namespace grpo::cuda
