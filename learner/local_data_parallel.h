// Data-parallel ranks as threads of this process over a LocalGroup (comm/local_communicator.h):
// what `grpo learner` runs when data_parallel.ranks > 1. Rank 0 is the caller's model
// and optimizer (the trainer's policy: it alone publishes weights, writes metrics and
// checkpoints); ranks 1..R-1 are replicas made from them at creation, kept identical by the
// all-reduced gradients (learner/data_parallel.h).
//
// On the CPU this is a correctness path, not a speed-up: the GEMMs already use every core, so R
// ranks share the same cores. It is how the data-parallel logic runs and is tested without GPUs.
// With a GPU (set_device_model) each rank's forward and backward run on a GPU of its own (rank r
// on GPU r modulo the GPUs present): one process driving the machine's GPUs. When every rank has
// a GPU to itself and NCCL is usable, the ranks also form an NCCL communicator and all-reduce
// their gradients on the devices, in buckets, after the backward; otherwise (fewer GPUs than
// ranks, no NCCL, or NCCL failing to connect: a warning) the gradients are reduced in host
// memory. Not built: one process per GPU (several machines), and overlapping the device
// reduction with the backward.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/local_communicator.h"
#include "learner/data_parallel.h"

namespace grpo {

class LocalDataParallel {
 public:
  // rank0 and optimizer0 outlive this object; the replicas copy their current parameters and
  // optimizer state (so create it after loading a checkpoint). config.ranks >= 1; with 1 rank
  // there is no communicator and Run() is the plain single-learner step.
  static absl::StatusOr<std::unique_ptr<LocalDataParallel>> Create(
      Model<float>* rank0, AdamW* optimizer0, const DataParallelConfig& config);

  int world_size() const { return static_cast<int>(steps_.size()); }

  // One optimizer step: rank r trains on shard(r) on its own thread (rank 0 on the caller's).
  // Returns rank 0's result (global figures), or an error: the lowest rank's that is not
  // ABORTED (the cause; the others echo it), else rank 0's. After an error the communicator is
  // aborted and every later Run() fails.
  using ShardFn = std::function<absl::Span<const TrainSequence>(int rank)>;
  absl::StatusOr<MiniBatchResult> Run(const ShardFn& shard, const MiniBatchOptions& options);

  // Rank 0's forward and backward run on `device` (DataParallelStep::set_device_model, on GPU 0
  // when a GPU); when that is a GPU, every other rank gets a DeviceModel of its own over its
  // replica, on GPU r modulo the GPUs present (so on one GPU the ranks share it, each thread with
  // its own scratch). Gradients are all-reduced over NCCL on the devices when each rank has its
  // own GPU (see above), else fetched to the host and all-reduced there. null: all ranks on the
  // CPU.
  absl::Status set_device_model(DeviceModel* device);
  // Where the gradients are summed: "none" (one rank), "host" or "nccl".
  std::string gradient_transport() const;

  // Rank 0's cumulative communication figures.
  DataParallelStats stats() const { return steps_[0]->stats(); }
  // Parameters of rank r (tests compare replicas).
  const Model<float>& model(int rank) const;

 private:
  LocalDataParallel() = default;

  // NCCL between the GPU ranks (each on GPU r); ok or why not.
  absl::Status ConnectDeviceComms();

  Model<float>* rank0_ = nullptr;
  absl::Duration timeout_;
  std::shared_ptr<comm::LocalGroup> group_;
  std::vector<std::unique_ptr<comm::Communicator>> comms_;  // (R), empty with one rank
  // (R) NCCL communicators of GPU ranks, else empty; destroyed after the steps that use them.
  std::vector<std::unique_ptr<comm::Communicator>> device_comms_;
  std::vector<std::unique_ptr<Model<float>>> models_;       // ranks 1..R-1
  std::vector<std::unique_ptr<AdamW>> optimizers_;          // ranks 1..R-1
  std::vector<std::unique_ptr<DataParallelStep>> steps_;    // (R)
  std::vector<std::unique_ptr<DeviceModel>> devices_;       // ranks 1..R-1 on a GPU, else empty
};

}  // namespace grpo
