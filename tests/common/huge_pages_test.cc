// Tests for common/huge_pages.h.
#include <catch2/catch.hpp>
#include <sys/prctl.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "common/huge_pages.h"

namespace grpo {
namespace {

// The kernel's THP mode ("always", "madvise", "never"), or "" where it has no THP.
std::string ThpMode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(f, line)) return "";
  const size_t a = line.find('['), b = line.find(']');
  return a == std::string::npos || b == std::string::npos ? "" : line.substr(a + 1, b - a - 1);
}

// THPeligible of the mapping that holds `p` in /proc/self/smaps: 1, 0, or -1 if not found.
int ThpEligible(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(f, line);) {
    unsigned long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(':') > line.find(' ')) {
      inside = at >= lo && at < hi;
      continue;
    }
    if (inside && line.rfind("THPeligible:", 0) == 0) return std::stoi(line.substr(12));
  }
  return -1;
}

TEST_CASE("HugePageVector: big buffers on 2 MiB boundaries, advised for huge pages") {
  const size_t n = 3 << 20;  // 12 MiB of floats
  HugePageVector<float> v(n, 1.5f);
  REQUIRE(reinterpret_cast<uintptr_t>(v.data()) % kHugePageBytes == 0);
  CHECK(v[0] == 1.5f);
  CHECK(v[n - 1] == 1.5f);
  v[n / 2] = 7.0f;
  v.resize(2 * n, 0.0f);  // reallocates: the contents move
  CHECK(reinterpret_cast<uintptr_t>(v.data()) % kHugePageBytes == 0);
  CHECK(v[n / 2] == 7.0f);
  CHECK(v[2 * n - 1] == 0.0f);

  // The advice is what madvise mode needs; the mapping says whether the kernel took it.
  const std::string mode = ThpMode();
  const int eligible = ThpEligible(v.data());
  if (mode != "madvise" && mode != "always") {
    WARN("transparent huge pages are '" << mode << "' here: the MADV_HUGEPAGE check is skipped");
  } else if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1) {
    WARN("this process has THP disabled (PR_SET_THP_DISABLE): the MADV_HUGEPAGE check is skipped");
  } else if (eligible < 0) {
    WARN("this kernel's smaps has no THPeligible line: the MADV_HUGEPAGE check is skipped");
  } else {
    CHECK(eligible == 1);
  }
  HugePageVector<float>().swap(v);
  CHECK(v.capacity() == 0);
}

TEST_CASE("HugePageVector: small buffers are plain allocations") {
  HugePageVector<int32_t> v(1000);
  for (int32_t i = 0; i < 1000; ++i) v[i] = i;
  v.push_back(1000);
  int64_t sum = 0;
  for (int32_t x : v) sum += x;
  CHECK(sum == 1000 * 1001 / 2);
}

}  // namespace
}  // namespace grpo
