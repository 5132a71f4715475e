// Big long-lived buffers (the weights, their packed copies, the KV cache) on transparent huge
// pages. Decode streams all of them from memory on every step (batch-64 decode of the bench MoE:
// ~210 MB a step); on 4 KiB pages that is ~50,000 pages a step, each a TLB miss and a restart of
// the hardware prefetcher. With Linux's default THP mode ("madvise") a buffer gets 2 MiB pages
// only if it asks before its pages are first touched, which a std::vector's zero fill does at
// once: hence an allocator.
//
// Measured (bench MoE, batch-64 decode, 2 threads, the model's step alone, one binary run
// alternately with the kernel's THP switch at "always" and at "madvise", 8 runs each): medians
// 21.30 against 22.79 ms in one series, 22.02 against 22.41 ms in another.
//
// Where the kernel has THP off ("never", or no THP at all) the advice is refused and the buffer
// is an ordinary one: same contents, same results.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace grpo {

// Allocations of at least kHugePageMinBytes are 2 MiB-aligned, rounded up to whole 2 MiB pages
// and advised MADV_HUGEPAGE; smaller ones (where a huge page would mostly be waste) are plain.
inline constexpr size_t kHugePageBytes = size_t{2} << 20;
inline constexpr size_t kHugePageMinBytes = size_t{4} << 20;

template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT: rebinding is implicit

  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugePageMinBytes) return static_cast<T*>(::operator new(bytes));
    const size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    void* p = std::aligned_alloc(kHugePageBytes, rounded);
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure leaves 4 KiB pages
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n * sizeof(T) < kHugePageMinBytes) {
      ::operator delete(p);
    } else {
      std::free(p);
    }
  }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};

template <typename T>
using HugePageVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace grpo
