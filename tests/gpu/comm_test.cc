// GPU tests of the device communicators and sharing (comm/nccl_communicator.h, comm/cuda_ipc.h)
// and of the weight-sync protocol over NCCL (rollout/weight_sync.h): a 1-rank NCCL communicator,
// CUDA IPC export/import in one process (the no-copy path) and its device-to-device copy, and,
// where the machine has several GPUs, an NCCL group of one rank per GPU (threads of this process)
// running collectives, the bucketed weight broadcast, and a deadline with a missing rank.
// Cross-process IPC (cudaIpcOpenMemHandle in another process) is not covered here.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <thread>

#include "comm/cuda_ipc.h"
#include "comm/nccl_communicator.h"
#include "rollout/weight_sync.h"
#include "tests/gpu/gpu_test_util.h"

namespace grpo {
namespace {

using testing::Download;
using testing::Upload;

TEST_CASE("nccl: a 1-rank communicator all-reduces, broadcasts and barriers", "[gpu][comm]") {
  if (!comm::NcclAvailable()) {
    WARN("SKIPPED: this build has no NCCL");
    return;
  }
  auto id = comm::NewNcclUniqueId();
  REQUIRE(id.ok());
  auto c = comm::NcclCommunicator::Create(*id, 0, 1, 0, absl::Seconds(60));
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  CHECK((*c)->backend() == "nccl");
  CHECK((*c)->memory() == comm::MemorySpace::kDevice);
  std::vector<float> v(1001);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f * i - 3;
  auto d = Upload(v);
  REQUIRE((*c)->AllReduceSum(d.as<float>(), 1001, absl::Seconds(30)).ok());
  CHECK(Download<float>(d, 1001) == v);  // the sum over one rank is itself
  REQUIRE((*c)->Broadcast(d.data(), 1001 * 4, 0, absl::Seconds(30)).ok());
  CHECK(Download<float>(d, 1001) == v);
  REQUIRE((*c)->Barrier(absl::Seconds(30)).ok());
  CHECK((*c)->Broadcast(d.data(), 4, 1, absl::Seconds(1)).code() ==
        absl::StatusCode::kInvalidArgument);
  (*c)->Abort();
  CHECK((*c)->aborted());
  CHECK((*c)->Barrier(absl::Seconds(1)).code() == absl::StatusCode::kAborted);
}

TEST_CASE("nccl: bad ranks and devices are refused", "[gpu][comm]") {
  if (!comm::NcclAvailable()) return;
  auto id = comm::NewNcclUniqueId();
  REQUIRE(id.ok());
  CHECK(comm::NcclCommunicator::Create(*id, 2, 2, 0, absl::Seconds(5)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(comm::NcclCommunicator::Create(*id, 0, 1, 999, absl::Seconds(5)).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("cuda ipc: export and import in one process share without a copy", "[gpu][comm]") {
  std::vector<float> v(4096);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.25f;
  auto src = Upload(v);
  auto handle = comm::ExportDeviceBuffer(src.data(), v.size() * 4);
  INFO(handle.status().ToString());
  REQUIRE(handle.ok());
  auto shared = comm::IpcBuffer::Import(*handle);
  REQUIRE(shared.ok());
  CHECK(shared->same_process());
  CHECK(shared->data() == src.data());  // the owner's memory itself
  CHECK(shared->size() == v.size() * 4);
  auto dst = testing::Zeros<float>(v.size());
  REQUIRE(comm::CopyDeviceToDevice(dst.data(), shared->data(), v.size() * 4).ok());
  CHECK(Download<float>(dst, v.size()) == v);
  // Not a handle; not device memory.
  CHECK(comm::IpcBuffer::Import("short").status().code() == absl::StatusCode::kInvalidArgument);
  std::string forged = *handle;
  forged[0] ^= 1;
  CHECK(comm::IpcBuffer::Import(forged).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(comm::ExportDeviceBuffer(v.data(), 16).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

// One rank per GPU, each on its own thread.
template <typename Fn>
void OnGpus(int n, Fn fn) {
  auto id = comm::NewNcclUniqueId();
  REQUIRE(id.ok());
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r, *id); });
  for (auto& t : threads) t.join();
}

TEST_CASE("nccl: one rank per GPU: collectives and the bucketed weight broadcast",
          "[gpu][comm][multi]") {
  const int n = cuda::DeviceCount();
  if (n < 2 || !comm::NcclAvailable()) {
    WARN("SKIPPED: needs 2+ GPUs and NCCL (this machine has " << n << ")");
    return;
  }
  std::vector<float> params(100003);
  for (size_t i = 0; i < params.size(); ++i) params[i] = std::sin(0.1f * i) * 3;
  const PackedWeights packed = PackedWeights::Pack(params, 42, 5, WeightDtype::kBf16, 64 << 10, 60);
  std::vector<absl::Status> st(n);
  std::vector<std::vector<float>> got(n);
  std::vector<float> sums(n);
  OnGpus(n, [&](int r, const comm::NcclUniqueId& id) {
    auto c = comm::NcclCommunicator::Create(id, r, n, r, absl::Seconds(60));
    if (!c.ok()) {
      st[r] = c.status();
      return;
    }
    // All-reduce of rank + 1: every rank gets n(n+1)/2.
    cudaSetDevice(r);
    auto d = cuda::DeviceBuffer::Allocate(sizeof(float));
    const float mine = static_cast<float>(r + 1);
    st[r] = d->CopyFromHost(&mine, 4);
    if (st[r].ok()) st[r] = (*c)->AllReduceSum(d->as<float>(), 1, absl::Seconds(60));
    if (st[r].ok()) st[r] = d->CopyToHost(&sums[r], 4);
    if (!st[r].ok()) return;
    if (r == 0) {
      st[r] = BroadcastWeights(c->get(), packed);
    } else {
      auto p = ReceiveWeights(c->get(), 0, packed.manifest(), {100003, 42, 4});
      st[r] = p.status();
      if (p.ok()) got[r] = std::move(*p);
    }
  });
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r << ": " << st[r].ToString());
    REQUIRE(st[r].ok());
    CHECK(sums[r] == n * (n + 1) / 2.0f);
    if (r == 0) continue;
    REQUIRE(got[r].size() == params.size());
    size_t bad = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      if (got[r][i] != Bf16ToFloat(FloatToBf16(params[i]))) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("nccl: a rank that never comes makes the others time out and abort, not hang",
          "[gpu][comm][multi]") {
  const int n = cuda::DeviceCount();
  if (n < 2 || !comm::NcclAvailable()) {
    WARN("SKIPPED: needs 2+ GPUs and NCCL");
    return;
  }
  std::vector<absl::Status> first(2), later(2);
  OnGpus(2, [&](int r, const comm::NcclUniqueId& id) {
    auto c = comm::NcclCommunicator::Create(id, r, 2, r, absl::Seconds(60));
    if (!c.ok()) {
      first[r] = c.status();
      return;
    }
    if (r == 1) return;  // rank 1 leaves without taking part (its communicator is destroyed)
    cudaSetDevice(0);
    auto d = cuda::DeviceBuffer::Allocate(1024);
    // An all-reduce needs the peer's data (a small broadcast might complete from buffers).
    first[r] = (*c)->AllReduceSum(d->as<float>(), 256, absl::Seconds(2));
    later[r] = (*c)->Barrier(absl::Seconds(2));
  });
  CHECK_FALSE(first[0].ok());
  CHECK(later[0].code() == absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace grpo
