// A small, portable random source for data pipelines: SplitMix64 with an unbiased bounded draw.
// std::uniform_int_distribution's output differs between standard libraries; these numbers do not,
// so a seed names the same dataset order and the same generated tasks everywhere.
#pragma once

#include <cstdint>

namespace grpo {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  // Two-part key (e.g. seed and epoch) mixed so nearby keys give unrelated streams.
  SplitMix64(uint64_t seed, uint64_t stream) : state_(Mix(seed) ^ Mix(stream + 0x632be59bd9b4e019ULL)) {}

  uint64_t Next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return Mix(state_);
  }
  // Uniform in [0, n); n > 0. Rejection sampling, so no modulo bias.
  uint64_t Below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = Next();
    } while (x >= limit);
    return x % n;
  }
  // Uniform in [lo, hi]; lo <= hi.
  int64_t Uniform(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo) + 1));
  }

 private:
  static uint64_t Mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

}  // namespace grpo
