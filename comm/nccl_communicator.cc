// NcclCommunicator (comm/nccl_communicator.h). Built with the NCCL code when the build has CUDA
// and libnccl (GRPO_HAVE_NCCL); otherwise a stub that says so.
//
// Across processes "every rank sees ABORTED" is weaker than in LocalGroup: the rank whose
// deadline passed aborts its NCCL communicator; its peers' pending collectives then fail with an
// NCCL error (a remote abort is seen as a broken connection) or reach their own deadlines, and
// abort in turn. Either way no rank waits longer than its own deadline.
#include "comm/nccl_communicator.h"

#include "absl/strings/str_format.h"

#ifdef GRPO_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#endif

namespace grpo::comm {

#ifndef GRPO_HAVE_NCCL

bool NcclAvailable() { return false; }
bool NcclUsable() { return false; }

absl::StatusOr<NcclUniqueId> NewNcclUniqueId() {
  return absl::UnavailableError("this build has no NCCL (needs CUDA and libnccl at build time)");
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(const NcclUniqueId&, int,
                                                                       int, int, absl::Duration,
                                                                       NcclStreamOrder) {
  return absl::UnavailableError(
      "NCCL communicator: this build has no NCCL (needs CUDA and libnccl at build time); use the "
      "gRPC weight transport");
}

#else

namespace {

static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId::bytes), "ncclUniqueId size changed");

std::string NcclError(const char* what, ncclResult_t r) {
  return absl::StrFormat("%s: %s", what, ncclGetErrorString(r));
}
std::string CudaError(const char* what, cudaError_t e) {
  return absl::StrFormat("%s: %s", what, cudaGetErrorString(e));
}

// Short sleeps between polls: a collective of a few MB completes in tens of microseconds, a
// weight bucket in milliseconds; 20 us keeps the overhead small without spinning a core hot.
void PollPause() { std::this_thread::sleep_for(std::chrono::microseconds(20)); }

class Nccl : public Communicator {
 public:
  Nccl(ncclComm_t comm, cudaStream_t stream, int rank, int world, int device)
      : comm_(comm), stream_(stream), rank_(rank), world_(world), device_(device) {}
  ~Nccl() override {
    cudaSetDevice(device_);
    if (!aborted_.load() && !abort_requested_.load()) {
      // Finalize flushes outstanding work (non-blocking: poll it, bounded), then destroy.
      ncclResult_t st = ncclCommFinalize(comm_);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (st == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
        PollPause();
        if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) break;
      }
      if (st == ncclSuccess) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    } else if (!comm_freed_) {
      ncclCommAbort(comm_);
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "nccl"; }
  MemorySpace memory() const override { return MemorySpace::kDevice; }

  absl::Status AllReduceSum(float* data, int64_t count, absl::Duration timeout) override {
    if (count < 0) return absl::InvalidArgumentError("AllReduceSum: negative count");
    return Run("AllReduceSum", timeout, [&] {
      return ncclAllReduce(data, data, static_cast<size_t>(count), ncclFloat32, ncclSum, comm_,
                           stream_);
    });
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root, absl::Duration timeout) override {
    if (bytes < 0) return absl::InvalidArgumentError("Broadcast: negative size");
    if (root < 0 || root >= world_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("Broadcast: root %d is not a rank of a group of %d", root, world_));
    }
    return Run("Broadcast", timeout, [&] {
      return ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_, stream_);
    });
  }
  absl::Status Barrier(absl::Duration timeout) override {
    // NCCL has no barrier: a one-element all-reduce returns on a rank only once every rank has
    // contributed.
    if (scratch_ == nullptr) {
      cudaSetDevice(device_);
      const cudaError_t e = cudaMalloc(&scratch_, sizeof(float));
      if (e != cudaSuccess) return absl::InternalError(CudaError("Barrier: cudaMalloc", e));
    }
    return AllReduceSum(static_cast<float*>(scratch_), 1, timeout);
  }

  void Abort() override { abort_requested_.store(true); }
  bool aborted() const override { return aborted_.load() || abort_requested_.load(); }

 private:
  // Enqueues `op` on the stream and polls until it completes, fails, or the deadline passes.
  template <typename Op>
  absl::Status Run(const char* name, absl::Duration timeout, Op op) {
    if (aborted()) return Aborted();
    cudaSetDevice(device_);
    const absl::Time deadline = absl::Now() + timeout;
    ncclResult_t r = op();
    if (r != ncclSuccess && r != ncclInProgress) return Fail(NcclError(name, r), false);
    // Non-blocking communicators may still be enqueueing: wait for that first.
    ncclResult_t st = r;
    while (st == ncclInProgress) {
      if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) break;
      if (st == ncclInProgress && !Waiting(deadline)) return TimedOut(name, timeout);
    }
    if (st != ncclSuccess) return Fail(NcclError(name, st), false);
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) return Fail(CudaError(name, q), false);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        return Fail(NcclError(name, async), false);
      }
      if (!Waiting(deadline)) return TimedOut(name, timeout);
    }
  }

  // False once the deadline passed or Abort() was called.
  bool Waiting(absl::Time deadline) {
    if (abort_requested_.load() || absl::Now() >= deadline) return false;
    PollPause();
    return true;
  }

  absl::Status TimedOut(const char* name, absl::Duration timeout) {
    if (abort_requested_.load()) {
      return Fail("aborted by Abort() while in " + std::string(name), true);
    }
    (void)Fail(
        absl::StrFormat("%s waited %s for the other ranks", name, absl::FormatDuration(timeout)),
        false);
    return absl::DeadlineExceededError(
        absl::StrFormat("nccl rank %d: %s waited %s for the other ranks; a peer is dead or stuck "
                        "(communicator aborted)",
                        rank_, name, absl::FormatDuration(timeout)));
  }

  // Aborts the NCCL communicator (its pending work is dropped) and remembers why.
  absl::Status Fail(const std::string& why, bool aborted_code) {
    if (!aborted_.exchange(true)) {
      why_ = why;
      ncclCommAbort(comm_);
      comm_freed_ = true;
    }
    return aborted_code ? Aborted()
                        : absl::InternalError(absl::StrFormat("nccl rank %d: %s "
                                                              "(communicator aborted)",
                                                              rank_, why));
  }
  absl::Status Aborted() const {
    return absl::AbortedError(
        absl::StrFormat("nccl communicator aborted (%s); build a new one",
                        why_.empty() ? std::string("Abort() was called") : why_));
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  const int rank_, world_, device_;
  void* scratch_ = nullptr;
  std::atomic<bool> abort_requested_{false};
  std::atomic<bool> aborted_{false};
  bool comm_freed_ = false;
  std::string why_;  // written once, by the thread that aborts
};

}  // namespace

bool NcclAvailable() { return true; }

bool NcclUsable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

absl::StatusOr<NcclUniqueId> NewNcclUniqueId() {
  ncclUniqueId raw;
  const ncclResult_t r = ncclGetUniqueId(&raw);
  if (r != ncclSuccess) return absl::UnavailableError(NcclError("ncclGetUniqueId", r));
  NcclUniqueId id;
  std::memcpy(id.bytes.data(), &raw, sizeof(raw));
  return id;
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(const NcclUniqueId& id,
                                                                       int rank, int world_size,
                                                                       int cuda_device,
                                                                       absl::Duration timeout,
                                                                       NcclStreamOrder order) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NCCL communicator: rank %d is not in [0, world_size %d)", rank, world_size));
  }
  int num_devices = 0;
  if (cudaGetDeviceCount(&num_devices) != cudaSuccess || num_devices == 0) {
    cudaGetLastError();
    return absl::UnavailableError("NCCL communicator: no CUDA device on this machine");
  }
  if (cuda_device < 0 || cuda_device >= num_devices) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NCCL communicator: cuda device %d is not in [0, %d)", cuda_device, num_devices));
  }
  cudaError_t e = cudaSetDevice(cuda_device);
  if (e != cudaSuccess) return absl::UnavailableError(CudaError("cudaSetDevice", e));
  cudaStream_t stream;
  // kAfterDefaultStream: a blocking stream, which waits for work queued earlier on the legacy
  // default stream (the staging copies of rollout/weight_sync.cc), so a broadcast never reads a
  // half-copied bucket. kIndependent: the caller orders the collectives with events.
  e = order == NcclStreamOrder::kIndependent
          ? cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)
          : cudaStreamCreate(&stream);
  if (e != cudaSuccess) return absl::UnavailableError(CudaError("cudaStreamCreate", e));
  ncclUniqueId raw;
  std::memcpy(&raw, id.bytes.data(), sizeof(raw));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world_size, raw, rank, &config);
  const absl::Time deadline = absl::Now() + timeout;
  ncclResult_t st = r;
  while (comm != nullptr && st == ncclInProgress) {
    if (ncclCommGetAsyncError(comm, &st) != ncclSuccess) break;
    if (st != ncclInProgress) break;
    if (absl::Now() >= deadline) {
      ncclCommAbort(comm);
      cudaStreamDestroy(stream);
      return absl::DeadlineExceededError(absl::StrFormat(
          "NCCL communicator: rank %d of %d: the other ranks did not join within %s", rank,
          world_size, absl::FormatDuration(timeout)));
    }
    PollPause();
  }
  if (comm == nullptr || st != ncclSuccess) {
    if (comm != nullptr) ncclCommAbort(comm);
    cudaStreamDestroy(stream);
    return absl::UnavailableError(NcclError("ncclCommInitRankConfig", comm == nullptr ? r : st));
  }
  return std::unique_ptr<Communicator>(new Nccl(comm, stream, rank, world_size, cuda_device));
}

#endif  // GRPO_HAVE_NCCL

}  // namespace grpo::comm
