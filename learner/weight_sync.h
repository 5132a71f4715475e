// The learner's weight publisher: after each update, the new parameters reach every live rollout
// worker under the next version, by the transport the "weight_sync" config section chooses
// (learner/weight_sync_config.h):
//   - point to point (grpc): RolloutWorker::PushWeights, one worker at a time;
//   - collective: one PackedWeights (rollout/weight_sync.h: buckets, manifest, CRC32C) broadcast
//     to a group, for in-process workers over a LocalGroup (their engines receive on threads of
//     this process) and for remote workers over NCCL, with the group formed and each update
//     announced over gRPC (RolloutService JoinWeightGroup / BeginWeightUpdate / EndWeightUpdate).
// A worker that the collective path could not update (refused the manifest, failed a checksum,
// a dead or aborted group) gets a point-to-point push in the same Publish; only a worker that
// fails that too is marked dead. A broken group is rebuilt at the next Publish.
//
// The safety net for everything else — a worker that joined late, a worker restarted under an
// old version — is EnsureCurrentWeights, called before work is dispatched: a worker whose newest
// version is not the learner's current one is brought up to date before it gets any work.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "comm/local_communicator.h"
#include "learner/rollout_workers.h"
#include "learner/weight_sync_config.h"
#include "model/params.h"
#include "rollout/weight_receiver.h"
#include "rollout/weight_sync.h"

namespace grpo {

struct WeightPublisherOptions {
  WeightSyncConfig config;
  // rollout.deterministic: auto dtype stays fp32 so rollout logprobs equal the learner's.
  bool deterministic = false;
  // Deadline of each RPC and of each collective, seconds (rollout.timeout_s).
  double timeout_s = 600;
  // How remote workers form a group. Production: "nccl" with the NCCL factory (the learner is
  // rank 0, remote member j is rank j+1). Tests: "local" and a factory over one LocalGroup
  // shared with in-process RolloutServices.
  std::string remote_backend = "nccl";
  CommunicatorFactory remote_factory;  // empty = NcclCommunicatorFactory()
  int cuda_device = 0;                 // the learner's GPU for its rank (workers use their 0)
  // transport "ipc": the learner's GPU copy of the weights being published (DeviceModel::
  // DeviceWeights), which in-process engines on cuda copy device to device. Required for "ipc".
  std::function<absl::StatusOr<const CudaModel*>()> device_weights;
};

class WeightPublisher {
 public:
  // FAILED_PRECONDITION for "ipc" without options.device_weights (a learner on the CPU), naming
  // weight_sync.transport.
  static absl::StatusOr<std::unique_ptr<WeightPublisher>> Create(WeightPublisherOptions options);
  ~WeightPublisher();

  // Publishes `params` (layout.total floats) as `version` to every worker marked alive; marks
  // dead (and logs) a worker that no path could update. Adds to *metrics:
  //   weight_sync/seconds, weight_sync/bytes (payload bytes delivered, all workers),
  //   weight_sync/gb_per_s (bytes / seconds / 1e9), weight_sync/collective_workers,
  //   weight_sync/p2p_workers, weight_sync/bucket_count, and with "ipc" weight_sync/ipc_workers
  //   (in-process engines on cuda updated device to device; the rest go point to point).
  // UNAVAILABLE when no worker is left alive.
  absl::Status Publish(absl::Span<RolloutWorker* const> workers, std::vector<bool>* alive,
                       const ParamLayout& layout, absl::Span<const float> params, uint64_t version,
                       std::map<std::string, double>* metrics);

  // "grpc", "collective(local)", "collective(nccl)", "collective(local+nccl)": for the log.
  std::string description() const;

 private:
  struct LocalGroupState;
  struct RemoteGroupState;
  explicit WeightPublisher(WeightPublisherOptions options);

  // The collective paths; each appends the indices of workers it could not update to *fallback.
  void PublishLocal(absl::Span<RolloutWorker* const> workers, const std::vector<size_t>& members,
                    const PackedWeights& packed, std::vector<size_t>* fallback);
  void PublishRemote(absl::Span<RolloutWorker* const> workers, const std::vector<size_t>& members,
                     const PackedWeights& packed, std::vector<size_t>* fallback);
  absl::Status BuildRemoteGroup(absl::Span<RolloutWorker* const> workers,
                                const std::vector<size_t>& members);
  WeightDtype DtypeFor(bool remote) const;

  WeightPublisherOptions options_;
  bool collective_ = false;
  bool ipc_ = false;
  std::unique_ptr<LocalGroupState> local_;
  std::unique_ptr<RemoteGroupState> remote_;
  bool remote_disabled_ = false;  // NCCL unavailable here: remote workers stay point to point
  // ipc: remote workers (by name) that cannot take device weights by handle: point to point.
  absl::flat_hash_set<std::string> ipc_refused_;
};

// Brings every live worker whose NewestVersion() differs from `version` up to date with a
// point-to-point push of `params` as `version` (a worker ahead of the learner cannot be brought
// back and is dropped, as is one that does not answer or refuses). Returns how many were pushed.
// Call before dispatching work: a worker that joined late never generates on old weights.
absl::StatusOr<int> EnsureCurrentWeights(absl::Span<RolloutWorker* const> workers,
                                         std::vector<bool>* alive, const ParamLayout& layout,
                                         absl::Span<const float> params, uint64_t version);

}  // namespace grpo
