// kernels/cpu/thread_runs.h: StealingRuns hands out every item exactly once, a thread's own run
// front to back, and lets a thread that finished its run take another's remaining items.
#include <catch2/catch.hpp>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "kernels/cpu/thread_runs.h"

namespace grpo::cpu {
namespace {

struct Taken {
  std::vector<std::atomic<int>> times;  // per item: how often it was handed out
  std::vector<std::atomic<int>> by;     // per item: the thread that got it
  explicit Taken(int64_t n) : times(n), by(n) {}
};

// Runs `threads` threads over n items split evenly; thread `slow` waits `delay_ms` before its
// first item. Each thread checks that its own items come front to back and that next_own names
// the one after.
void Run(int threads, int64_t n, int slow, int delay_ms, Taken* taken, std::atomic<int>* bad) {
  StealingRuns runs(threads);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const std::pair<int64_t, int64_t> own = {n * tid / nt, n * (tid + 1) / nt};
    runs.Publish(own);
#pragma omp barrier
    if (tid == slow) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    int64_t expect_own = own.first, next = -1;
    for (int64_t i; (i = runs.Next(&next)) >= 0;) {
      taken->times[i].fetch_add(1);
      taken->by[i].store(tid);
      if (i >= own.first && i < own.second) {
        if (i != expect_own) bad->fetch_add(1);  // own items in order, none skipped
        expect_own = i + 1;
        if (next != (i + 1 < own.second ? i + 1 : -1) && next != -1) bad->fetch_add(1);
      } else if (next != -1) {
        bad->fetch_add(1);  // a taken item has no own successor to prefetch
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
}

TEST_CASE("StealingRuns: every item once, and a slow thread's items taken by the others") {
  for (const int threads : {2, 3, 4}) {
    const int64_t n = 200;
    Taken taken(n);
    std::atomic<int> bad{0};
    Run(threads, n, /*slow=*/0, /*delay_ms=*/50, &taken, &bad);
    INFO(threads << " threads");
    CHECK(bad.load() == 0);
    int64_t once = 0, stolen = 0;
    for (int64_t i = 0; i < n; ++i) {
      once += taken.times[i].load() == 1;
      // Thread 0's run is [0, n / threads): it slept through most of it.
      if (i < n / threads) stolen += taken.by[i].load() != 0;
    }
    CHECK(once == n);
    CHECK(stolen > 0);
  }
}

TEST_CASE("StealingRuns: outside a parallel region one thread gets every item in order") {
  StealingRuns runs;
  runs.Publish({0, 5});
  int64_t next = 0;
  for (int64_t want = 0; want < 5; ++want) {
    CHECK(runs.Next(&next) == want);
    CHECK(next == (want + 1 < 5 ? want + 1 : -1));
  }
  CHECK(runs.Next(&next) == -1);
}

}  // namespace
}  // namespace grpo::cpu
