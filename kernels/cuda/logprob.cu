// The vocabulary head's row ops: logprob + entropy (forward, backward into bf16 dlogits) and
// token sampling (argmax, temperature, top-k, top-p). One block per row; logits are read from a
// (rows, V) fp32 chunk that the caller sizes, so no fp32 copy of all logits need exist.
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grpo::cuda {
namespace {

constexpr int kThreads = 512;

__global__ void logprob_forward_kernel(float* lp, float* ent, float* lse, const float* logits,
                                       const int32_t* target, int64_t V, float tau) {
  __shared__ float scratch[33];
  const int64_t t = blockIdx.x;
  const float* lg = logits + t * V;
  const float rtau = 1.f / tau;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, lg[v]);
  m = BlockMax(m, scratch) / tau;  // division is monotone: max(z) = max(logits) / tau
  float s = 0.f, sz = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float d = lg[v] * rtau - m;
    const float e = expf(d);
    s += e;
    sz += e * d;
  }
  s = BlockSum(s, scratch);
  sz = BlockSum(sz, scratch);
  if (threadIdx.x == 0) {
    const float log_s = logf(s);
    if (lse != nullptr) lse[t] = m + log_s;
    if (ent != nullptr) ent[t] = log_s - sz / s;
    if (lp != nullptr) {
      const int32_t tg = target != nullptr ? target[t] : -1;
      lp[t] = tg < 0 ? 0.f : (lg[tg] * rtau - m) - log_s;
    }
  }
}

__global__ void logprob_backward_kernel(__nv_bfloat16* dlogits, const float* logits,
                                        const float* dlp, const float* dent, const float* lse,
                                        const int32_t* target, int64_t V, float tau) {
  __shared__ float scratch[33];
  const int64_t t = blockIdx.x;
  const float* lg = logits + t * V;
  __nv_bfloat16* dl = dlogits + t * V;
  const float l = lse[t], rtau = 1.f / tau;
  const int32_t tg = target != nullptr ? target[t] : -1;
  const float a = (dlp != nullptr && tg >= 0) ? dlp[t] : 0.f;
  const float b = dent != nullptr ? dent[t] : 0.f;
  float ent = 0.f;
  if (b != 0.f) {
    float acc = 0.f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float lz = lg[v] * rtau - l;
      acc += expf(lz) * lz;
    }
    ent = -BlockSum(acc, scratch);
  }
  // d/dz_v: logprob -> (onehot - p) a; entropy -> -p (log p + ent) b; then / tau.
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float lz = lg[v] * rtau - l;
    const float p = expf(lz);
    float g = -a * p - b * p * (lz + ent);
    if (v == tg) g += a;
    dl[v] = __float2bfloat16(g * rtau);
  }
}

__device__ __forceinline__ float Weight(const float* lg, int64_t v, float m, float inv_temp) {
  return expf((lg[v] - m) * inv_temp);
}

// One block per row. Kept tokens: weight e_v = exp((l_v - max) / temp) >= threshold, where the
// threshold is the k-th largest weight (top-k) and/or the largest value whose kept mass reaches
// top_p of the total (top-p), both found by bisection over the float bit patterns (exact, since
// non-negative floats order like their bits). Then the first v whose running kept mass exceeds
// u * kept total, in vocabulary order.
__global__ void sample_kernel(int32_t* out, const float* logits, const float* u, int64_t V,
                              float temperature, int64_t top_k, float top_p) {
  __shared__ float scratch[33];
  using Scan = cub::BlockScan<float, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int32_t found;
  const int64_t b = blockIdx.x;
  const float* lg = logits + b * V;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, lg[v]);
  m = BlockMax(m, scratch);
  if (temperature <= 0.f) {
    int32_t best = 0x7fffffff;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
      if (lg[v] == m && v < best) best = static_cast<int32_t>(v);
    const float r = -BlockMax(-static_cast<float>(best), scratch);
    if (threadIdx.x == 0) out[b] = static_cast<int32_t>(r);
    return;
  }
  const float inv_temp = 1.f / temperature;
  float total = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) total += Weight(lg, v, m, inv_temp);
  total = BlockSum(total, scratch);
  uint32_t thr_bits = 0;  // keep e >= threshold; 0.0f keeps all
  if (top_k > 0 && top_k < V) {
    uint32_t lo = 0, hi = __float_as_uint(1.0f);  // count(e >= lo) >= k always holds
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      const float tm = __uint_as_float(mid);
      float c = 0.f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) c += Weight(lg, v, m, inv_temp) >= tm;
      c = BlockSum(c, scratch);
      if (c >= static_cast<float>(top_k))
        lo = mid;
      else
        hi = mid - 1;
    }
    thr_bits = lo;
  }
  float kept = total;
  if (thr_bits != 0) {
    const float tm = __uint_as_float(thr_bits);
    float s = 0.f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float e = Weight(lg, v, m, inv_temp);
      s += e >= tm ? e : 0.f;
    }
    kept = BlockSum(s, scratch);
  }
  if (top_p < 1.f) {
    const float need = top_p * kept;
    uint32_t lo = thr_bits, hi = __float_as_uint(1.0f);  // mass(e >= lo) >= need holds at lo
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      const float tm = __uint_as_float(mid);
      float s = 0.f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float e = Weight(lg, v, m, inv_temp);
        s += e >= tm ? e : 0.f;
      }
      s = BlockSum(s, scratch);
      if (s >= need)
        lo = mid;
      else
        hi = mid - 1;
    }
    if (lo != thr_bits) {
      thr_bits = lo;
      const float tm = __uint_as_float(thr_bits);
      float s = 0.f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float e = Weight(lg, v, m, inv_temp);
        s += e >= tm ? e : 0.f;
      }
      kept = BlockSum(s, scratch);
    }
  }
  const float tm = __uint_as_float(thr_bits);
  // Inverse CDF: each thread owns a contiguous range of the vocabulary.
  const int64_t chunk = (V + blockDim.x - 1) / blockDim.x;
  const int64_t v0 = threadIdx.x * chunk, v1 = min(V, v0 + chunk);
  float mine = 0.f;
  for (int64_t v = v0; v < v1; ++v) {
    const float e = Weight(lg, v, m, inv_temp);
    mine += e >= tm ? e : 0.f;
  }
  float before;
  Scan(scan_tmp).ExclusiveSum(mine, before);
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  const float target = u[b] * kept;
  if (before <= target && target < before + mine) {
    float acc = before;
    int32_t pick = -1, last = -1;
    for (int64_t v = v0; v < v1; ++v) {
      const float e = Weight(lg, v, m, inv_temp);
      if (e < tm) continue;
      last = static_cast<int32_t>(v);
      acc += e;
      if (acc > target) {
        pick = last;
        break;
      }
    }
    atomicMax(&found, pick >= 0 ? pick : last);  // at most one thread's range holds the target
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t r = found;
    if (r < 0) {  // rounding left the target past the end: take the last kept token
      for (int64_t v = V - 1; v >= 0; --v)
        if (Weight(lg, v, m, inv_temp) >= tm) {
          r = static_cast<int32_t>(v);
          break;
        }
    }
    out[b] = r;
  }
}

}  // namespace

absl::Status LogprobForward(float* lp, float* ent, float* lse, const float* logits,
                            const int32_t* target, int64_t T, int64_t V, float tau) {
  if (T == 0) return absl::OkStatus();
  logprob_forward_kernel<<<static_cast<unsigned>(T), kThreads, 0, Stream()>>>(lp, ent, lse, logits,
                                                                              target, V, tau);
  return LaunchStatus("logprob_forward_kernel");
}

absl::Status LogprobBackward(bf16_bits* dlogits, const float* logits, const float* dlp,
                             const float* dent, const float* lse, const int32_t* target, int64_t T,
                             int64_t V, float tau) {
  if (T == 0) return absl::OkStatus();
  logprob_backward_kernel<<<static_cast<unsigned>(T), kThreads, 0, Stream()>>>(
      reinterpret_cast<__nv_bfloat16*>(dlogits), logits, dlp, dent, lse, target, V, tau);
  return LaunchStatus("logprob_backward_kernel");
}

absl::Status SampleTokens(int32_t* out, const float* logits, const float* u, int64_t B, int64_t V,
                          float temperature, int64_t top_k, float top_p) {
  if (B == 0) return absl::OkStatus();
  if (!(top_p > 0.f && top_p <= 1.f) || top_k < 0) {
    return absl::InvalidArgumentError("SampleTokens: need top_p in (0, 1] and top_k >= 0");
  }
  sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, Stream()>>>(out, logits, u, V, temperature,
                                                                     top_k, top_p);
  return LaunchStatus("sample_kernel");
}

}  // namespace grpo::cuda
