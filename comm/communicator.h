// Collectives between the ranks of one job: the learner's data-parallel gradient all-reduce and
// the weight broadcast from the learner to rollout workers both go through this interface, so the
// logic above it (bucketing, versions, checksums, loss normalizers) is the same on every backend
// and is tested on the CPU.
//
// Backends:
//   - LocalGroup (comm/local_communicator.h): ranks are threads of one process, buffers are host
//     memory. For tests and for several workers sharing one CPU process.
//   - NCCL (comm/nccl_communicator.h, CUDA builds): ranks are processes, one GPU each, buffers are
//     device memory; bootstrapped with a unique id handed out over gRPC.
//
// Contract shared by every backend:
//   - Every rank calls the same collectives in the same order with the same sizes (and root).
//   - Each call blocks until this rank's part is complete or `timeout` has passed. A call that
//     times out returns DEADLINE_EXCEEDED and aborts the communicator: from then on every call on
//     every rank of it returns ABORTED (a rank blocked in a collective is released with ABORTED),
//     and the job must build a new communicator. A dead peer therefore never hangs the others.
//   - Results are bitwise identical on every rank (a fixed reduction order; NCCL guarantees the
//     same for a fixed communicator and algorithm).
//   - memory() says where buffers must live; a host pointer given to a device communicator is a
//     programming error, not a runtime one.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace grpo::comm {

enum class MemorySpace { kHost, kDevice };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "local" or "nccl": for logs and metrics.
  virtual std::string backend() const = 0;
  virtual MemorySpace memory() const = 0;

  // data[0 .. count) = the element-wise sum over ranks of every rank's data, in place.
  virtual absl::Status AllReduceSum(float* data, int64_t count, absl::Duration timeout) = 0;
  // data[0 .. bytes) on every rank = root's data.
  virtual absl::Status Broadcast(void* data, int64_t bytes, int root, absl::Duration timeout) = 0;
  // Returns once every rank has entered it.
  virtual absl::Status Barrier(absl::Duration timeout) = 0;

  // Ends the communicator from this side: calls in flight on any rank return ABORTED, as does
  // every later call. Idempotent; safe from another thread.
  virtual void Abort() = 0;
  virtual bool aborted() const = 0;
};

}  // namespace grpo::comm
