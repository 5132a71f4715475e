// Causal GQA attention, flash-style: one warp per (query, head) streams the keys in chunks of 32
// with an online softmax, so no (T x T) score matrix exists. Each lane scores one key of a chunk
// (a full head-dim dot product against q held in shared memory), then the warp accumulates
// p_j * v_j with each lane owning dims lane, lane+32, ... Backward recomputes probabilities from
// the saved logsumexp: one kernel for dq (per query) and one for dk/dv (per key), no atomics.
// Plain fp32 SIMT arithmetic (no tensor cores): correct for any head_dim <= 256.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {
namespace {

constexpr int kMaxPer = 8;  // head_dim <= 32 * kMaxPer

__device__ __forceinline__ float DotSmemBf16(const float* a, const __nv_bfloat16* b, int64_t hd) {
  float s = 0.f;
  const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(b);
  for (int64_t d = 0; d < hd / 2; ++d) {
    const float2 f = __bfloat1622float2(b2[d]);
    s += a[2 * d] * f.x + a[2 * d + 1] * f.y;
  }
  return s;
}

__global__ void attention_forward_kernel(__nv_bfloat16* out, float* lse, const float* q,
                                         const __nv_bfloat16* k, const __nv_bfloat16* v,
                                         const AttnSeq* seqs, int64_t nh, int64_t nkv, int64_t hd,
                                         float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t h = blockIdx.y, g = h / (nh / nkv), kvd = nkv * hd;
  float* qs = smem + warp * hd;
  for (int64_t i = int64_t(blockIdx.z) * warps + warp; i < sq.q_len;
       i += int64_t(gridDim.z) * warps) {
    const int64_t t = sq.q_begin + i;
    const float* qr = q + (t * nh + h) * hd;
    for (int64_t d = lane; d < hd; d += 32) qs[d] = qr[d];
    __syncwarp();
    const int64_t nkeys = sq.kv_len - sq.q_len + i + 1;
    float m = -INFINITY, l = 0.f, acc[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) acc[r] = 0.f;
    for (int64_t kb = 0; kb < nkeys; kb += 32) {
      const int64_t j = kb + lane;
      float s = -INFINITY;
      if (j < nkeys) s = DotSmemBf16(qs, k + (sq.kv_begin + j) * kvd + g * hd, hd) * scale;
      const float mnew = fmaxf(m, WarpMax(s));
      const float p = j < nkeys ? expf(s - mnew) : 0.f;
      const float corr = expf(m - mnew);
      l = l * corr + WarpSum(p);
#pragma unroll
      for (int r = 0; r < kMaxPer; ++r) acc[r] *= corr;
      const int64_t n = (nkeys - kb) < 32 ? (nkeys - kb) : 32;
      for (int jj = 0; jj < n; ++jj) {
        const float pj = __shfl_sync(0xffffffff, p, jj);
        const __nv_bfloat16* vr = v + (sq.kv_begin + kb + jj) * kvd + g * hd;
#pragma unroll
        for (int r = 0; r < kMaxPer; ++r) {
          const int64_t d = lane + 32 * r;
          if (d < hd) acc[r] += pj * __bfloat162float(vr[d]);
        }
      }
      m = mnew;
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < hd) out[(t * nh + h) * hd + d] = __float2bfloat16(acc[r] * inv);
    }
    if (lse != nullptr && lane == 0) lse[t * nh + h] = m + logf(l);
    __syncwarp();
  }
}

// delta (T, nh) = rowwise <dout, out>.
__global__ void attention_delta_kernel(float* delta, const __nv_bfloat16* dout,
                                       const __nv_bfloat16* out, int64_t rows, int64_t hd) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float s = 0.f;
  for (int64_t d = lane; d < hd; d += 32)
    s += __bfloat162float(dout[row * hd + d]) * __bfloat162float(out[row * hd + d]);
  s = WarpSum(s);
  if (lane == 0) delta[row] = s;
}

// dq: warp per (query, head); dS_ij = P_ij (dP_ij - delta_i), dq_i = scale * sum_j dS_ij k_j.
__global__ void attention_dq_kernel(float* dq, const __nv_bfloat16* dout, const float* lse,
                                    const float* delta, const float* q, const __nv_bfloat16* k,
                                    const __nv_bfloat16* v, const AttnSeq* seqs, int64_t nh,
                                    int64_t nkv, int64_t hd, float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t h = blockIdx.y, g = h / (nh / nkv), kvd = nkv * hd;
  float* qs = smem + warp * 2 * hd;
  float* ds_ = qs + hd;
  for (int64_t i = int64_t(blockIdx.z) * warps + warp; i < sq.q_len;
       i += int64_t(gridDim.z) * warps) {
    const int64_t t = sq.q_begin + i;
    for (int64_t d = lane; d < hd; d += 32) {
      qs[d] = q[(t * nh + h) * hd + d];
      ds_[d] = __bfloat162float(dout[(t * nh + h) * hd + d]);
    }
    __syncwarp();
    const float L = lse[t * nh + h], D = delta[t * nh + h];
    const int64_t nkeys = sq.kv_len - sq.q_len + i + 1;
    float acc[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) acc[r] = 0.f;
    for (int64_t kb = 0; kb < nkeys; kb += 32) {
      const int64_t j = kb + lane;
      float dsj = 0.f;
      if (j < nkeys) {
        const int64_t off = (sq.kv_begin + j) * kvd + g * hd;
        const float p = expf(DotSmemBf16(qs, k + off, hd) * scale - L);
        dsj = p * (DotSmemBf16(ds_, v + off, hd) - D);
      }
      const int64_t n = (nkeys - kb) < 32 ? (nkeys - kb) : 32;
      for (int jj = 0; jj < n; ++jj) {
        const float c = __shfl_sync(0xffffffff, dsj, jj);
        const __nv_bfloat16* kr = k + (sq.kv_begin + kb + jj) * kvd + g * hd;
#pragma unroll
        for (int r = 0; r < kMaxPer; ++r) {
          const int64_t d = lane + 32 * r;
          if (d < hd) acc[r] += c * __bfloat162float(kr[d]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < hd) dq[(t * nh + h) * hd + d] = acc[r] * scale;
    }
    __syncwarp();
  }
}

// dk/dv: warp per (key, kv head), over the query heads of its group and the queries at or after
// the key: dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i dS_ij q_i.
__global__ void attention_dkv_kernel(float* dk, float* dv, const __nv_bfloat16* dout,
                                     const float* lse, const float* delta, const float* q,
                                     const __nv_bfloat16* k, const __nv_bfloat16* v,
                                     const AttnSeq* seqs, int64_t nh, int64_t nkv, int64_t hd,
                                     float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t g = blockIdx.y, group = nh / nkv, kvd = nkv * hd;
  float* ks = smem + warp * 2 * hd;
  float* vs = ks + hd;
  for (int64_t j = int64_t(blockIdx.z) * warps + warp; j < sq.q_len;
       j += int64_t(gridDim.z) * warps) {
    const int64_t tj = sq.q_begin + j;
    for (int64_t d = lane; d < hd; d += 32) {
      ks[d] = __bfloat162float(k[tj * kvd + g * hd + d]);
      vs[d] = __bfloat162float(v[tj * kvd + g * hd + d]);
    }
    __syncwarp();
    float ak[kMaxPer], av[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) ak[r] = av[r] = 0.f;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t ib = j; ib < sq.q_len; ib += 32) {
        const int64_t i = ib + lane;
        float p = 0.f, dsv = 0.f;
        if (i < sq.q_len) {
          const int64_t ti = sq.q_begin + i;
          const float* qr = q + (ti * nh + h) * hd;
          const __nv_bfloat16* dor = dout + (ti * nh + h) * hd;
          float s = 0.f, dp = 0.f;
          for (int64_t d = 0; d < hd; ++d) {
            s += qr[d] * ks[d];
            dp += __bfloat162float(dor[d]) * vs[d];
          }
          p = expf(s * scale - lse[ti * nh + h]);
          dsv = p * (dp - delta[ti * nh + h]);
        }
        const int64_t n = (sq.q_len - ib) < 32 ? (sq.q_len - ib) : 32;
        for (int ii = 0; ii < n; ++ii) {
          const float pi = __shfl_sync(0xffffffff, p, ii);
          const float di = __shfl_sync(0xffffffff, dsv, ii);
          const int64_t ti = sq.q_begin + ib + ii;
          const float* qr = q + (ti * nh + h) * hd;
          const __nv_bfloat16* dor = dout + (ti * nh + h) * hd;
#pragma unroll
          for (int r = 0; r < kMaxPer; ++r) {
            const int64_t d = lane + 32 * r;
            if (d < hd) {
              av[r] += pi * __bfloat162float(dor[d]);
              ak[r] += di * qr[d];
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < hd) {
        dk[tj * kvd + g * hd + d] = ak[r] * scale;
        dv[tj * kvd + g * hd + d] = av[r];
      }
    }
    __syncwarp();
  }
}

absl::Status CheckDims(int64_t nh, int64_t nkv, int64_t hd) {
  if (hd <= 0 || hd > 32 * kMaxPer || hd % 2 != 0 || nkv <= 0 || nh % nkv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention: unsupported shape nh=", nh, " nkv=", nkv, " hd=", hd,
        " (need even head_dim <= ", 32 * kMaxPer, " and nkv dividing nh)"));
  }
  return absl::OkStatus();
}

// Uploads the sequence table (skipped when it equals the last one uploaded: every layer of a
// forward passes the same table); returns the grid for (seqs, heads, query groups). Like all
// kernels/cuda scratch, this assumes one host thread drives the device.
absl::Status Upload(absl::Span<const AttnSeq> seqs, int warps, AttnSeq** dev, unsigned* gz) {
  static std::vector<AttnSeq> last;
  static void* last_ptr = nullptr;
  void* p = nullptr;
  RETURN_IF_ERROR(GetScratch(kScratchSeqs, sizeof(AttnSeq) * seqs.size(), &p));
  if (p != last_ptr || last.size() != seqs.size() ||
      std::memcmp(last.data(), seqs.data(), sizeof(AttnSeq) * seqs.size()) != 0) {
    RETURN_IF_ERROR(CopyToDevice(p, seqs.data(), sizeof(AttnSeq) * seqs.size()));
    last.assign(seqs.begin(), seqs.end());
    last_ptr = p;
  }
  *dev = static_cast<AttnSeq*>(p);
  int64_t max_q = 1;
  for (const AttnSeq& q : seqs) max_q = std::max(max_q, q.q_len);
  *gz = static_cast<unsigned>(std::min<int64_t>((max_q + warps - 1) / warps, 65535));
  return absl::OkStatus();
}

}  // namespace

absl::Status AttentionForward(bf16_bits* out, float* lse, const float* q, const bf16_bits* k,
                              const bf16_bits* v, absl::Span<const AttnSeq> seqs, int64_t nh,
                              int64_t nkv, int64_t hd, float scale) {
  if (seqs.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDims(nh, nkv, hd));
  int64_t max_q = 0;
  for (const AttnSeq& sq : seqs) max_q = std::max(max_q, sq.q_len);
  const int warps = max_q >= 16 ? 4 : 1;  // decode: one query per sequence, one warp per block
  AttnSeq* dev = nullptr;
  unsigned gz = 1;
  RETURN_IF_ERROR(Upload(seqs, warps, &dev, &gz));
  attention_forward_kernel<<<dim3(static_cast<unsigned>(seqs.size()), static_cast<unsigned>(nh),
                                  gz),
                             warps * 32, warps * hd * sizeof(float)>>>(
      reinterpret_cast<__nv_bfloat16*>(out), lse, q,
      reinterpret_cast<const __nv_bfloat16*>(k), reinterpret_cast<const __nv_bfloat16*>(v), dev,
      nh, nkv, hd, scale);
  return LaunchStatus("attention_forward_kernel");
}

absl::Status AttentionBackward(float* dq, float* dk, float* dv, float* delta,
                               const bf16_bits* dout, const bf16_bits* out, const float* lse,
                               const float* q, const bf16_bits* k, const bf16_bits* v,
                               absl::Span<const AttnSeq> seqs, int64_t T, int64_t nh, int64_t nkv,
                               int64_t hd, float scale) {
  if (seqs.empty() || T == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDims(nh, nkv, hd));
  for (const AttnSeq& sq : seqs) {
    if (sq.q_len != sq.kv_len || sq.q_begin != sq.kv_begin) {
      return absl::InvalidArgumentError("AttentionBackward: training only (q_len == kv_len)");
    }
  }
  // With GRPO_CUDA_TIMING=1 each of the three kernels is timed on its own (synchronized).
  const bool timing = OpTimingEnabled();
  auto t_last = std::chrono::steady_clock::now();
  auto mark = [&](const char* name) -> absl::Status {
    if (!timing) return absl::OkStatus();
    RETURN_IF_ERROR(Synchronize());
    const auto now = std::chrono::steady_clock::now();
    AddOpTime(name, std::chrono::duration<double>(now - t_last).count());
    t_last = now;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(mark("attention_bwd.(before)"));
  const auto* dob = reinterpret_cast<const __nv_bfloat16*>(dout);
  const auto* kb = reinterpret_cast<const __nv_bfloat16*>(k);
  const auto* vb = reinterpret_cast<const __nv_bfloat16*>(v);
  attention_delta_kernel<<<CeilDiv(T * nh, 8), 256>>>(
      delta, dob, reinterpret_cast<const __nv_bfloat16*>(out), T * nh, hd);
  RETURN_IF_ERROR(LaunchStatus("attention_delta_kernel"));
  RETURN_IF_ERROR(mark("attention_bwd.delta"));
  constexpr int kWarps = 4;
  AttnSeq* dev = nullptr;
  unsigned gz = 1;
  RETURN_IF_ERROR(Upload(seqs, kWarps, &dev, &gz));
  const unsigned B = static_cast<unsigned>(seqs.size());
  attention_dq_kernel<<<dim3(B, static_cast<unsigned>(nh), gz), kWarps * 32,
                        kWarps * 2 * hd * sizeof(float)>>>(dq, dob, lse, delta, q, kb, vb, dev,
                                                           nh, nkv, hd, scale);
  RETURN_IF_ERROR(LaunchStatus("attention_dq_kernel"));
  RETURN_IF_ERROR(mark("attention_bwd.dq"));
  attention_dkv_kernel<<<dim3(B, static_cast<unsigned>(nkv), gz), kWarps * 32,
                         kWarps * 2 * hd * sizeof(float)>>>(dk, dv, dob, lse, delta, q, kb, vb,
                                                            dev, nh, nkv, hd, scale);
  RETURN_IF_ERROR(LaunchStatus("attention_dkv_kernel"));
  return mark("attention_bwd.dkv");
}

}  // namespace grpo::cuda
