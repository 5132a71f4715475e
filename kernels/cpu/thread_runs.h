// Static work splits for the calling thread of an OpenMP parallel region: one contiguous run of
// items per thread, so a thread can prefetch its own next item (decode's kernels stream their
// operands from memory). Outside a region the one thread gets everything.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace grpo::cpu {

// [begin, end) of n equal items for this thread.
inline std::pair<int64_t, int64_t> EvenRun(int64_t n) {
  const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
  return {n * tid / nt, n * (tid + 1) / nt};
}

// [begin, end) of items of near-equal total cost for this thread; cost_before[i] is the cost of
// items 0 .. i-1 (cost_before.size() = items + 1, non-decreasing).
inline std::pair<int64_t, int64_t> CostRun(const std::vector<int64_t>& cost_before) {
  const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
  const int64_t n = static_cast<int64_t>(cost_before.size()) - 1;
  const auto first = [&](int64_t i) {
    return std::lower_bound(cost_before.begin(), cost_before.end(),
                            cost_before.back() * i / nt) -
           cost_before.begin();
  };
  return {first(tid), tid + 1 == nt ? n : first(tid + 1)};
}

}  // namespace grpo::cpu
