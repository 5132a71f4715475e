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
constexpr int kChunk = 32;  // keys (or queries) staged in shared memory at a time

// Shared-memory row stride of staged bf16 rows: hd + 2 elements, an odd number of 4-byte words
// when hd % 4 == 0, so lane-per-row reads hit distinct banks.
__host__ __device__ inline int64_t Hdp(int64_t hd) { return hd + 2; }

// <a (fp32, shared), b (bf16 pairs, shared)> over hd (even).
__device__ __forceinline__ float DotF32Bf16(const float* a, const __nv_bfloat16* b, int64_t hd) {
  const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(b);
  float s = 0.f;
  for (int64_t d = 0; d < hd / 2; ++d) {
    const float2 f = __bfloat1622float2(b2[d]);
    s += a[2 * d] * f.x + a[2 * d + 1] * f.y;
  }
  return s;
}

// The k/v row of key position j of sequence sq (AttnSeq: a shared prefix, then its own rows).
__device__ __forceinline__ int64_t KeyRow(const AttnSeq& sq, int64_t j) {
  return j < sq.kv_shared ? sq.shared_begin + j : sq.kv_begin + (j - sq.kv_shared);
}

// The block cooperatively copies the rows of key positions [j0, j0 + kChunk) of sequence sq from
// a (rows, stride) bf16 matrix, at column offset col, into shared rows of Hdp(hd) elements;
// positions at or past j_end read as zero.
__device__ __forceinline__ void StageKeys(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                          const AttnSeq& sq, int64_t j0, int64_t j_end,
                                          int64_t stride, int64_t col, int64_t hd) {
  const int64_t half = hd / 2, hdp = Hdp(hd);
  for (int64_t idx = threadIdx.x; idx < kChunk * half; idx += blockDim.x) {
    const int64_t r = idx / half, c = idx % half;
    __nv_bfloat162 v = __float2bfloat162_rn(0.f);
    if (j0 + r < j_end) {
      v = reinterpret_cast<const __nv_bfloat162*>(src + KeyRow(sq, j0 + r) * stride + col)[c];
    }
    reinterpret_cast<__nv_bfloat162*>(dst + r * hdp)[c] = v;
  }
}

// The block cooperatively copies rows [r0, r0 + kChunk) of a (rows, stride) bf16 matrix, at
// column offset col, into shared rows of Hdp(hd) elements; rows at or past r_end read as zero.
__device__ __forceinline__ void StageBf16(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t r0,
                                          int64_t r_end, int64_t stride, int64_t col, int64_t hd) {
  const int64_t half = hd / 2, hdp = Hdp(hd);
  for (int64_t idx = threadIdx.x; idx < kChunk * half; idx += blockDim.x) {
    const int64_t r = idx / half, c = idx % half;
    __nv_bfloat162 v = __float2bfloat162_rn(0.f);
    if (r0 + r < r_end) {
      v = reinterpret_cast<const __nv_bfloat162*>(src + (r0 + r) * stride + col)[c];
    }
    reinterpret_cast<__nv_bfloat162*>(dst + r * hdp)[c] = v;
  }
}

// One block = `warps` consecutive queries of one (sequence, head); each 32-key chunk of K and V
// is staged in shared memory once for all of them (coalesced), then each warp runs the online
// softmax for its query: lane j scores key j of the chunk, lanes then own output dims.
// Shared memory: warps*hd floats (q) + 2 * kChunk * Hdp(hd) bf16 (K, V).
__global__ void attention_forward_kernel(__nv_bfloat16* out, float* lse, const float* q,
                                         const __nv_bfloat16* k, const __nv_bfloat16* v,
                                         const AttnSeq* seqs, int64_t nh, int64_t nkv, int64_t hd,
                                         float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t h = blockIdx.y, g = h / (nh / nkv), kvd = nkv * hd, hdp = Hdp(hd);
  float* qs = smem + warp * hd;
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + warps * hd);
  __nv_bfloat16* vs = ks + kChunk * hdp;
  for (int64_t base = int64_t(blockIdx.z) * warps; base < sq.q_len;
       base += int64_t(gridDim.z) * warps) {
    const int64_t i = base + warp;
    const bool active = i < sq.q_len;
    const int64_t t = sq.q_begin + i;
    const int64_t last = min(base + warps, sq.q_len) - 1;  // block-uniform
    const int64_t nmax = sq.kv_len - sq.q_len + last + 1;
    const int64_t nkeys = active ? sq.kv_len - sq.q_len + i + 1 : 0;
    if (active) {
      for (int64_t d = lane; d < hd; d += 32) qs[d] = q[(t * nh + h) * hd + d];
    }
    float m = -INFINITY, l = 0.f, acc[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) acc[r] = 0.f;
    for (int64_t kb = 0; kb < nmax; kb += kChunk) {
      __syncthreads();  // the previous chunk is consumed (and qs written)
      StageKeys(ks, k, sq, kb, nmax, kvd, g * hd, hd);
      StageKeys(vs, v, sq, kb, nmax, kvd, g * hd, hd);
      __syncthreads();
      if (kb >= nkeys) continue;  // warp-uniform
      const int64_t j = kb + lane;
      const float s = j < nkeys ? DotF32Bf16(qs, ks + lane * hdp, hd) * scale : -INFINITY;
      const float mnew = fmaxf(m, WarpMax(s));
      const float p = j < nkeys ? expf(s - mnew) : 0.f;
      const float corr = expf(m - mnew);
      l = l * corr + WarpSum(p);
#pragma unroll
      for (int r = 0; r < kMaxPer; ++r) acc[r] *= corr;
      const int64_t n = (nkeys - kb) < kChunk ? (nkeys - kb) : kChunk;
      for (int jj = 0; jj < n; ++jj) {
        const float pj = __shfl_sync(0xffffffff, p, jj);
        const __nv_bfloat16* vr = vs + jj * hdp;
#pragma unroll
        for (int r = 0; r < kMaxPer; ++r) {
          const int64_t d = lane + 32 * r;
          if (d < hd) acc[r] += pj * __bfloat162float(vr[d]);
        }
      }
      m = mnew;
    }
    if (active) {
      const float inv = 1.f / l;
#pragma unroll
      for (int r = 0; r < kMaxPer; ++r) {
        const int64_t d = lane + 32 * r;
        if (d < hd) out[(t * nh + h) * hd + d] = __float2bfloat16(acc[r] * inv);
      }
      if (lse != nullptr && lane == 0) lse[t * nh + h] = m + logf(l);
    }
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

// dq: like the forward (K/V chunks staged per block); dS_ij = P_ij (dP_ij - delta_i),
// dq_i = scale * sum_j dS_ij k_j. Shared memory: warps*2*hd floats + 2 * kChunk * Hdp(hd) bf16.
__global__ void attention_dq_kernel(float* dq, const __nv_bfloat16* dout, const float* lse,
                                    const float* delta, const float* q, const __nv_bfloat16* k,
                                    const __nv_bfloat16* v, const AttnSeq* seqs, int64_t nh,
                                    int64_t nkv, int64_t hd, float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t h = blockIdx.y, g = h / (nh / nkv), kvd = nkv * hd, hdp = Hdp(hd);
  float* qs = smem + warp * 2 * hd;
  float* dos = qs + hd;
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + warps * 2 * hd);
  __nv_bfloat16* vs = ks + kChunk * hdp;
  for (int64_t base = int64_t(blockIdx.z) * warps; base < sq.q_len;
       base += int64_t(gridDim.z) * warps) {
    const int64_t i = base + warp;
    const bool active = i < sq.q_len;
    const int64_t t = sq.q_begin + i;
    const int64_t last = min(base + warps, sq.q_len) - 1;
    const int64_t nmax = sq.kv_len - sq.q_len + last + 1;
    const int64_t nkeys = active ? sq.kv_len - sq.q_len + i + 1 : 0;
    float L = 0.f, D = 0.f;
    if (active) {
      for (int64_t d = lane; d < hd; d += 32) {
        qs[d] = q[(t * nh + h) * hd + d];
        dos[d] = __bfloat162float(dout[(t * nh + h) * hd + d]);
      }
      L = lse[t * nh + h];
      D = delta[t * nh + h];
    }
    float acc[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) acc[r] = 0.f;
    for (int64_t kb = 0; kb < nmax; kb += kChunk) {
      __syncthreads();
      StageBf16(ks, k, sq.kv_begin + kb, sq.kv_begin + nmax, kvd, g * hd, hd);
      StageBf16(vs, v, sq.kv_begin + kb, sq.kv_begin + nmax, kvd, g * hd, hd);
      __syncthreads();
      if (kb >= nkeys) continue;
      const int64_t j = kb + lane;
      float dsj = 0.f;
      if (j < nkeys) {
        const float p = expf(DotF32Bf16(qs, ks + lane * hdp, hd) * scale - L);
        dsj = p * (DotF32Bf16(dos, vs + lane * hdp, hd) - D);
      }
      const int64_t n = (nkeys - kb) < kChunk ? (nkeys - kb) : kChunk;
      for (int jj = 0; jj < n; ++jj) {
        const float c = __shfl_sync(0xffffffff, dsj, jj);
        const __nv_bfloat16* kr = ks + jj * hdp;
#pragma unroll
        for (int r = 0; r < kMaxPer; ++r) {
          const int64_t d = lane + 32 * r;
          if (d < hd) acc[r] += c * __bfloat162float(kr[d]);
        }
      }
    }
    if (active) {
#pragma unroll
      for (int r = 0; r < kMaxPer; ++r) {
        const int64_t d = lane + 32 * r;
        if (d < hd) dq[(t * nh + h) * hd + d] = acc[r] * scale;
      }
    }
  }
}

// dk/dv: one block = `warps` consecutive keys of one (sequence, kv head); chunks of 32 queries
// (q rows fp32, dout rows bf16, their lse and delta) are staged once per block, for each query
// head of the group; lane i handles query i of the chunk: dv_j = sum_i P_ij dout_i,
// dk_j = scale * sum_i dS_ij q_i. Shared memory: warps*2*hd floats (k_j, v_j) + kChunk*(hd+1)
// floats (q) + kChunk * Hdp(hd) bf16 (dout) + 2*kChunk floats (lse, delta).
__global__ void attention_dkv_kernel(float* dk, float* dv, const __nv_bfloat16* dout,
                                     const float* lse, const float* delta, const float* q,
                                     const __nv_bfloat16* k, const __nv_bfloat16* v,
                                     const AttnSeq* seqs, int64_t nh, int64_t nkv, int64_t hd,
                                     float scale) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const AttnSeq sq = seqs[blockIdx.x];
  const int64_t g = blockIdx.y, group = nh / nkv, kvd = nkv * hd, hdp = Hdp(hd), qst = hd + 1;
  float* ks = smem + warp * 2 * hd;
  float* vsm = ks + hd;
  float* qsh = smem + warps * 2 * hd;                                       // (kChunk, hd + 1)
  float* lse_s = qsh + kChunk * qst;                                        // (kChunk)
  float* delta_s = lse_s + kChunk;                                          // (kChunk)
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(delta_s + kChunk);  // (kChunk, hdp)
  for (int64_t base = int64_t(blockIdx.z) * warps; base < sq.q_len;
       base += int64_t(gridDim.z) * warps) {
    const int64_t j = base + warp;
    const bool active = j < sq.q_len;
    const int64_t tj = sq.q_begin + j;
    if (active) {
      for (int64_t d = lane; d < hd; d += 32) {
        ks[d] = __bfloat162float(k[tj * kvd + g * hd + d]);
        vsm[d] = __bfloat162float(v[tj * kvd + g * hd + d]);
      }
    }
    float ak[kMaxPer], av[kMaxPer];
#pragma unroll
    for (int r = 0; r < kMaxPer; ++r) ak[r] = av[r] = 0.f;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t ib = base; ib < sq.q_len; ib += kChunk) {  // queries >= the block's first key
        __syncthreads();
        const int64_t nq = (sq.q_len - ib) < kChunk ? (sq.q_len - ib) : kChunk;
        for (int64_t idx = threadIdx.x; idx < kChunk * hd; idx += blockDim.x) {
          const int64_t r = idx / hd, c = idx % hd;
          qsh[r * qst + c] = r < nq ? q[((sq.q_begin + ib + r) * nh + h) * hd + c] : 0.f;
        }
        for (int64_t r = threadIdx.x; r < kChunk; r += blockDim.x) {
          lse_s[r] = r < nq ? lse[(sq.q_begin + ib + r) * nh + h] : 0.f;
          delta_s[r] = r < nq ? delta[(sq.q_begin + ib + r) * nh + h] : 0.f;
        }
        StageBf16(dos, dout, sq.q_begin + ib, sq.q_begin + sq.q_len, nh * hd, h * hd, hd);
        __syncthreads();
        if (!active || ib + kChunk <= j) continue;  // warp-uniform: no query of the chunk sees j
        const int64_t i = ib + lane;
        float p = 0.f, dsv = 0.f;
        if (i < sq.q_len && i >= j) {
          const float s = [&] {
            float a = 0.f;
            for (int64_t d = 0; d < hd; ++d) a += qsh[lane * qst + d] * ks[d];
            return a;
          }();
          p = expf(s * scale - lse_s[lane]);
          dsv = p * (DotF32Bf16(vsm, dos + lane * hdp, hd) - delta_s[lane]);
        }
        for (int ii = 0; ii < nq; ++ii) {
          const float pi = __shfl_sync(0xffffffff, p, ii);
          const float di = __shfl_sync(0xffffffff, dsv, ii);
          const __nv_bfloat16* dor = dos + ii * hdp;
          const float* qr = qsh + ii * qst;
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
    if (active) {
#pragma unroll
      for (int r = 0; r < kMaxPer; ++r) {
        const int64_t d = lane + 32 * r;
        if (d < hd) {
          dk[tj * kvd + g * hd + d] = ak[r] * scale;
          dv[tj * kvd + g * hd + d] = av[r];
        }
      }
    }
    __syncthreads();  // ks/vsm of this round are read until here
  }
}

size_t ForwardSmem(int warps, int64_t hd) {
  return warps * hd * sizeof(float) + 2 * kChunk * Hdp(hd) * sizeof(__nv_bfloat16);
}
size_t DqSmem(int warps, int64_t hd) {
  return warps * 2 * hd * sizeof(float) + 2 * kChunk * Hdp(hd) * sizeof(__nv_bfloat16);
}
size_t DkvSmem(int warps, int64_t hd) {
  return (warps * 2 * hd + kChunk * (hd + 1) + 2 * kChunk) * sizeof(float) +
         kChunk * Hdp(hd) * sizeof(__nv_bfloat16);
}

// Kernels asking for more than the default 48 KB of dynamic shared memory must say so first.
template <typename Kernel>
absl::Status AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return absl::OkStatus();
  return CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)),
                    "cudaFuncSetAttribute(max dynamic shared memory)");
}

absl::Status CheckDims(int64_t nh, int64_t nkv, int64_t hd) {
  if (hd <= 0 || hd > 32 * kMaxPer || hd % 2 != 0 || nkv <= 0 || nh % nkv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: unsupported shape nh=", nh, " nkv=", nkv, " hd=", hd,
                     " (need even head_dim <= ", 32 * kMaxPer, " and nkv dividing nh)"));
  }
  return absl::OkStatus();
}

// Uploads the sequence table (skipped when it equals the last one uploaded: every layer of a
// forward passes the same table); returns the grid for (seqs, heads, query groups). Per host
// thread, like the scratch it fills (common.cuh GetScratch).
absl::Status Upload(absl::Span<const AttnSeq> seqs, int warps, AttnSeq** dev, unsigned* gz) {
  thread_local std::vector<AttnSeq> last;
  thread_local void* last_ptr = nullptr;
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
  for (const AttnSeq& sq : seqs) {
    max_q = std::max(max_q, sq.q_len);
    if (sq.kv_shared < 0 || sq.kv_shared > sq.kv_len - sq.q_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionForward: a shared prefix of ", sq.kv_shared,
                       " keys in a sequence of ", sq.kv_len, " keys and ", sq.q_len, " queries"));
    }
  }
  AttnSeq* dev = nullptr;
  unsigned gz = 1;  // unused: AttentionForwardDevice sizes the grid
  RETURN_IF_ERROR(Upload(seqs, 1, &dev, &gz));
  return AttentionForwardDevice(out, lse, q, k, v, dev, static_cast<int64_t>(seqs.size()),
                                std::max<int64_t>(max_q, 1), nh, nkv, hd, scale);
}

absl::Status AttentionForwardDevice(bf16_bits* out, float* lse, const float* q, const bf16_bits* k,
                                    const bf16_bits* v, const AttnSeq* seqs, int64_t num_seqs,
                                    int64_t max_q_len, int64_t nh, int64_t nkv, int64_t hd,
                                    float scale) {
  if (num_seqs == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDims(nh, nkv, hd));
  if (num_seqs < 0 || max_q_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionForwardDevice: ", num_seqs,
                                                   " sequences, longest query run ", max_q_len));
  }
  const int warps = max_q_len >= 16 ? 4 : 1;  // decode: one query per sequence, one warp a block
  const unsigned gz =
      static_cast<unsigned>(std::min<int64_t>((max_q_len + warps - 1) / warps, 65535));
  RETURN_IF_ERROR(AllowSmem(attention_forward_kernel, ForwardSmem(warps, hd)));
  attention_forward_kernel<<<dim3(static_cast<unsigned>(num_seqs), static_cast<unsigned>(nh), gz),
                             warps * 32, ForwardSmem(warps, hd), Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(out), lse, q, reinterpret_cast<const __nv_bfloat16*>(k),
      reinterpret_cast<const __nv_bfloat16*>(v), seqs, nh, nkv, hd, scale);
  return LaunchStatus("attention_forward_kernel");
}

absl::Status AttentionBackward(float* dq, float* dk, float* dv, float* delta, const bf16_bits* dout,
                               const bf16_bits* out, const float* lse, const float* q,
                               const bf16_bits* k, const bf16_bits* v,
                               absl::Span<const AttnSeq> seqs, int64_t T, int64_t nh, int64_t nkv,
                               int64_t hd, float scale) {
  if (seqs.empty() || T == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckDims(nh, nkv, hd));
  for (const AttnSeq& sq : seqs) {
    if (sq.q_len != sq.kv_len || sq.q_begin != sq.kv_begin || sq.kv_shared != 0) {
      return absl::InvalidArgumentError(
          "AttentionBackward: training only (q_len == kv_len, no shared prefix)");
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
  attention_delta_kernel<<<CeilDiv(T * nh, 8), 256, 0, Stream()>>>(
      delta, dob, reinterpret_cast<const __nv_bfloat16*>(out), T * nh, hd);
  RETURN_IF_ERROR(LaunchStatus("attention_delta_kernel"));
  RETURN_IF_ERROR(mark("attention_bwd.delta"));
  constexpr int kWarps = 4;
  AttnSeq* dev = nullptr;
  unsigned gz = 1;
  RETURN_IF_ERROR(Upload(seqs, kWarps, &dev, &gz));
  const unsigned B = static_cast<unsigned>(seqs.size());
  RETURN_IF_ERROR(AllowSmem(attention_dq_kernel, DqSmem(kWarps, hd)));
  RETURN_IF_ERROR(AllowSmem(attention_dkv_kernel, DkvSmem(kWarps, hd)));
  attention_dq_kernel<<<dim3(B, static_cast<unsigned>(nh), gz), kWarps * 32, DqSmem(kWarps, hd),
                        Stream()>>>(dq, dob, lse, delta, q, kb, vb, dev, nh, nkv, hd, scale);
  RETURN_IF_ERROR(LaunchStatus("attention_dq_kernel"));
  RETURN_IF_ERROR(mark("attention_bwd.dq"));
  attention_dkv_kernel<<<dim3(B, static_cast<unsigned>(nkv), gz), kWarps * 32, DkvSmem(kWarps, hd),
                         Stream()>>>(dk, dv, dob, lse, delta, q, kb, vb, dev, nh, nkv, hd, scale);
  RETURN_IF_ERROR(LaunchStatus("attention_dkv_kernel"));
  return mark("attention_bwd.dkv");
}

}  // namespace grpo::cuda
