// The NCCL backend of comm::Communicator (comm/communicator.h): ranks are processes, one GPU
// each, buffers are device memory. Bootstrapped with a unique id that rank 0's process makes
// (NewNcclUniqueId) and hands to every other rank out of band (the learner does it over gRPC:
// RolloutService.JoinWeightGroup).
//
// Deadlines without hangs: the communicator is created non-blocking (ncclConfig_t.blocking = 0)
// and every call is enqueued on the communicator's own stream, then polled (cudaStreamQuery +
// ncclCommGetAsyncError) until it completes or `timeout` passes; then ncclCommAbort, the call
// returns DEADLINE_EXCEEDED and every later call ABORTED, as the contract says. Abort() from
// another thread makes a polling call return ABORTED at its next poll.
//
// No CUDA or NCCL types here. Builds without CUDA, or without libnccl, compile this header and a
// stub whose Create and NewNcclUniqueId return UNAVAILABLE.
#pragma once

#include <array>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace grpo::comm {

// ncclUniqueId as opaque bytes (NCCL_UNIQUE_ID_BYTES = 128).
struct NcclUniqueId {
  std::array<char, 128> bytes{};
};

// A fresh id for a new communicator (rank 0's process makes it). UNAVAILABLE without NCCL.
absl::StatusOr<NcclUniqueId> NewNcclUniqueId();

// True when this build has NCCL (the communicator can be created where a GPU exists).
bool NcclAvailable();
// True when this build has NCCL and this machine a CUDA device: a join can succeed here. Checked
// before joining so that a worker or learner without a GPU says so at once instead of leaving
// its peers waiting for the join's deadline.
bool NcclUsable();

// How a communicator's collectives are ordered against the legacy default stream, where the
// kernels (kernels/cuda) queue their work.
enum class NcclStreamOrder {
  // A blocking stream: a collective waits for work queued before it on the default stream, and
  // default-stream work queued after it waits for the collective. Safe without events (the
  // weight broadcast's staging copies), but it serializes with compute.
  kAfterDefaultStream,
  // A non-blocking stream: collectives run beside default-stream work; the caller orders them
  // (the data-parallel gradient all-reduce waits on each block's cuda::StreamMark), so they
  // overlap the rest of the backward.
  kIndependent,
};

class NcclCommunicator {
 public:
  // Joins the communicator `id` as `rank` of `world_size` on CUDA device `cuda_device`. Every
  // rank must call it (concurrently, each in its process or thread) with the same id and world
  // size; it returns once all have joined, or DEADLINE_EXCEEDED after `timeout` (the half-made
  // communicator is aborted). INVALID_ARGUMENT for a bad rank, world size or device;
  // UNAVAILABLE without CUDA/NCCL.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(
      const NcclUniqueId& id, int rank, int world_size, int cuda_device, absl::Duration timeout,
      NcclStreamOrder order = NcclStreamOrder::kAfterDefaultStream);
};

}  // namespace grpo::comm
