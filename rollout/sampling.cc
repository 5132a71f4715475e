// SampleFromLogits and SampleUniform (rollout/sampling.h).
#include "rollout/sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace grpo {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The first index of the largest logit (std::max_element's answer), vectorized: the max, then a
// scan for its first occurrence 16 elements at a time. All NaN: std::max_element.
int32_t ArgMax(const float* x, int64_t V) {
  const float m = cpu::RowMax(x, V);
  int64_t v0 = 0;
  for (; v0 + 16 <= V; v0 += 16) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int l = 0; l < 16; ++l) hit |= x[v0 + l] == m;
    if (hit) break;
  }
  for (int64_t v = v0; v < V; ++v) {
    if (x[v] == m) return static_cast<int32_t>(v);
  }
  return static_cast<int32_t>(std::max_element(x, x + V) - x);
}

float KernelLogprob(const float* logits, int64_t V, float tau, int32_t token) {
  float lp = 0;
  cpu::LogprobForward<float>(&lp, nullptr, nullptr, logits, &token, 1, V, tau);
  return lp;
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
    out.token = ArgMax(logits, V);
    out.logprob = KernelLogprob(logits, V, 1.0f, out.token);
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
