// SampleFromLogits and SampleUniform (rollout/sampling.h).
#include "rollout/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/cpu/ops.h"

namespace grpo {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The first index of the largest logit (std::max_element's answer) and, in *max, RowMax's value,
// in one pass: each lane keeps its running maximum by RowMax's very selection (x > lane) and the
// index where it first reached it; the lanes merge as in RowMax, then the lowest index among the
// lanes holding the maximum wins. No lane ever rises above -inf (all NaN or -inf): the first
// element equal to the maximum, else std::max_element, as before this pass existed.
int32_t ArgMax(const float* x, int64_t V, float* max) {
  constexpr int kLanes = 16;
  float lanes[kLanes];
  int32_t first[kLanes];
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i at = _mm512_set1_epi32(-1);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(kLanes);
  for (; i + kLanes <= V; i += kLanes) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 up = _mm512_cmp_ps_mask(v, acc, _CMP_GT_OQ);
    acc = _mm512_mask_mov_ps(acc, up, v);
    at = _mm512_mask_mov_epi32(at, up, idx);
    idx = _mm512_add_epi32(idx, step);
  }
  _mm512_storeu_ps(lanes, acc);
  _mm512_storeu_si512(first, at);
#else
  for (int l = 0; l < kLanes; ++l) {
    lanes[l] = -std::numeric_limits<float>::infinity();
    first[l] = -1;
  }
  for (; i + kLanes <= V; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      if (x[i + l] > lanes[l]) {
        lanes[l] = x[i + l];
        first[l] = static_cast<int32_t>(i + l);
      }
    }
  }
#endif
  for (; i < V; ++i) {
    if (x[i] > lanes[0]) {
      lanes[0] = x[i];
      first[0] = static_cast<int32_t>(i);
    }
  }
  float m = lanes[0];
  for (int l = 1; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  *max = m;
  int32_t best = -1;
  for (int l = 0; l < kLanes; ++l) {
    if (first[l] >= 0 && lanes[l] == m && (best < 0 || first[l] < best)) best = first[l];
  }
  if (best >= 0) return best;
  for (int64_t v = 0; v < V; ++v) {
    if (x[v] == m) return static_cast<int32_t>(v);
  }
  return static_cast<int32_t>(std::max_element(x, x + V) - x);
}

}  // namespace

double SampleUniform(uint64_t seed, uint64_t prompt_id, int64_t sample_index, int64_t step) {
  uint64_t h = SplitMix64(seed);
  h = SplitMix64(h ^ prompt_id);
  h = SplitMix64(h ^ static_cast<uint64_t>(sample_index));
  h = SplitMix64(h ^ static_cast<uint64_t>(step));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

SampledToken SampleFromLogits(const float* logits, int64_t V, float temperature, int32_t top_k,
                              float top_p, double u,
                              std::vector<std::pair<float, int32_t>>* scratch) {
  SampledToken out;
  if (temperature <= 0.0f) {
    float row_max;
    out.token = ArgMax(logits, V, &row_max);
    out.logprob = cpu::RowLogprob(logits, V, 1.0f, row_max, out.token);
    return out;
  }
  if ((top_k <= 0 || top_k >= V) && top_p >= 1.0f) {
    // Inverse CDF over the weights LogprobForward itself sums (kernels/cpu/ops.h SoftmaxWeights:
    // one pass of the kernels' vectorized exp): chunk sums first, in double, then the elements of
    // the chunk that crosses u * total. The arithmetic is fixed, so a draw depends only on the
    // logits and u, and the reported logprob is bitwise the learner's.
    thread_local std::vector<float> w, chunk_sum;
    w.resize(V);
    const int64_t num_chunks = cpu::SoftmaxWeightChunks(V);
    chunk_sum.resize(num_chunks);
    double total = 0;
    const float m = cpu::SoftmaxWeights(logits, V, temperature, w.data(), chunk_sum.data(), &total);
    const int64_t chunk = cpu::kSoftmaxSumChunk;
    const double target = u * total;
    double acc = 0;
    out.token = static_cast<int32_t>(V - 1);
    for (int64_t c = 0; c < num_chunks; ++c) {
      if (acc + chunk_sum[c] <= target && c + 1 < num_chunks) {
        acc += chunk_sum[c];
        continue;
      }
      // The crossing is in this chunk (or, by rounding, nowhere: then its last element).
      const int64_t v0 = c * chunk, v1 = std::min(V, v0 + chunk);
      out.token = static_cast<int32_t>(v1 - 1);
      for (int64_t v = v0; v < v1; ++v) {
        acc += w[v];
        if (acc > target) {
          out.token = static_cast<int32_t>(v);
          break;
        }
      }
      break;
    }
    out.logprob = cpu::LogprobFromWeights(logits, temperature, m, total, out.token);
    return out;
  }
  const double tau = temperature;
  const float mx = *std::max_element(logits, logits + V);
  // Truncated: candidates by logit descending, lower id first on ties.
  std::vector<std::pair<float, int32_t>>& c = *scratch;
  c.resize(V);
  for (int64_t v = 0; v < V; ++v) c[v] = {logits[v], static_cast<int32_t>(v)};
  auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int64_t n = V;
  if (top_k > 0 && top_k < V) {
    std::nth_element(c.begin(), c.begin() + top_k, c.end(), before);
    n = top_k;
  }
  std::sort(c.begin(), c.begin() + n, before);
  std::vector<double> w(n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += (w[i] = std::exp(double(c[i].first - mx) / tau));
  int64_t kept = n;
  if (top_p < 1.0f) {
    double cum = 0;
    for (int64_t i = 0; i < n; ++i) {
      cum += w[i];
      if (cum >= double(top_p) * total) {
        kept = i + 1;
        break;
      }
    }
  }
  double kept_total = 0;
  for (int64_t i = 0; i < kept; ++i) kept_total += w[i];
  const double target = u * kept_total;
  double acc = 0;
  int64_t pick = kept - 1;
  for (int64_t i = 0; i < kept; ++i) {
    acc += w[i];
    if (acc > target) {
      pick = i;
      break;
    }
  }
  out.token = c[pick].second;
  out.logprob = static_cast<float>(std::log(w[pick]) - std::log(kept_total));
  return out;
}

}  // namespace grpo
