// Work splits for the calling thread of an OpenMP parallel region: one contiguous run of items per
// thread, so a thread can prefetch its own next item (decode's kernels stream their operands from
// memory). Outside a region the one thread gets everything.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/status.h"

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

// Contiguous runs (CostRun's) that a thread, once its own is empty, helps finish: it takes items
// one at a time from the back of the run with the most items left. The runs keep each thread's next
// item its own to prefetch; the taking keeps a thread slowed by the host, or a cost estimate that
// is off, from holding the team at the region's barrier. Which thread runs an item never changes
// what the item computes. Fewer than 2^31 items.
//
// Use, inside one parallel region: every thread calls Publish with its run, then a barrier, then
// Next until it returns -1.
class StealingRuns {
 public:
  // max_threads: the team size of the region (at most).
  explicit StealingRuns(int max_threads = omp_get_max_threads())
      : runs_(static_cast<size_t>(max_threads)) {}

  void Publish(std::pair<int64_t, int64_t> run) {
    GRPO_CHECK_MSG(omp_get_num_threads() <= static_cast<int>(runs_.size()),
                   "StealingRuns: a team larger than it was made for");
    runs_[omp_get_thread_num()].v.store(Pack(run.first, run.second), std::memory_order_relaxed);
  }

  // The calling thread's next item, or -1 when every run is empty. *next_own: the item after it in
  // the thread's own run (to prefetch), or -1 when there is none or the item is another's.
  int64_t Next(int64_t* next_own) {
    *next_own = -1;
    std::atomic<uint64_t>& mine = runs_[omp_get_thread_num()].v;
    for (uint64_t v = mine.load(std::memory_order_relaxed); Front(v) < Back(v);) {
      if (mine.compare_exchange_weak(v, Pack(Front(v) + 1, Back(v)), std::memory_order_relaxed)) {
        if (Front(v) + 1 < Back(v)) *next_own = Front(v) + 1;
        return Front(v);
      }
    }
    for (const int nt = omp_get_num_threads();;) {
      int victim = -1;
      int64_t most = 0;
      for (int t = 0; t < nt; ++t) {
        const uint64_t v = runs_[t].v.load(std::memory_order_relaxed);
        if (Back(v) - Front(v) > most) most = Back(v) - Front(v), victim = t;
      }
      if (victim < 0) return -1;
      std::atomic<uint64_t>& theirs = runs_[victim].v;
      for (uint64_t v = theirs.load(std::memory_order_relaxed); Front(v) < Back(v);) {
        if (theirs.compare_exchange_weak(v, Pack(Front(v), Back(v) - 1),
                                         std::memory_order_relaxed)) {
          return Back(v) - 1;
        }
      }
    }
  }

 private:
  // A run [front, back) in one word, so that its owner taking the front and another thread taking
  // the back never both get its last item.
  static uint64_t Pack(int64_t front, int64_t back) {
    return static_cast<uint64_t>(front) << 32 | static_cast<uint32_t>(back);
  }
  static int64_t Front(uint64_t v) { return static_cast<int64_t>(v >> 32); }
  static int64_t Back(uint64_t v) { return static_cast<int64_t>(v & 0xFFFFFFFFu); }

  struct alignas(64) Run {
    std::atomic<uint64_t> v{0};
  };
  std::vector<Run> runs_;
};

}  // namespace grpo::cpu
