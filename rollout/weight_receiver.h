// A rollout worker's membership in a weight-sync group (rollout/weight_sync.h): the logic behind
// the RolloutService's JoinWeightGroup / BeginWeightUpdate / EndWeightUpdate RPCs
// (proto/rollout.proto), callable without a server. The RPC handlers never wait on a collective:
// joining and receiving run on this object's own thread, and End waits (bounded) for the outcome.
//
//   WeightGroupMember member(engine, CommunicatorFactory());   // NCCL; tests pass a LocalGroup
//   member.Join(join_request);                 // returns at once; the group forms in background
//   member.Begin(manifest_proto)               // starts receiving; says whether it accepts it
//   ... the learner broadcasts the buckets ...
//   member.End(version)                        // OK once verified and staged in the engine
//
// A receive that fails (checksum, order, stale, a dead group) leaves the engine's weights as they
// were. A group whose collective timed out is aborted; every later Begin is FAILED_PRECONDITION
// until the learner sends a new Join.
#pragma once

#include <functional>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "comm/communicator.h"
#include "proto/rollout.pb.h"
#include "rollout/engine.h"
#include "rollout/weight_sync.h"

namespace grpo {

// Makes this worker's communicator for a join request (blocking until the group formed or it
// failed). The default, NcclCommunicatorFactory(), makes an NCCL communicator on the request's
// CUDA device; it is UNAVAILABLE in builds or on machines without CUDA and NCCL.
using CommunicatorFactory = std::function<absl::StatusOr<std::unique_ptr<comm::Communicator>>(
    const rollout::JoinWeightGroupRequest&)>;
CommunicatorFactory NcclCommunicatorFactory();

class WeightGroupMember {
 public:
  WeightGroupMember(Engine* engine, CommunicatorFactory factory);
  ~WeightGroupMember();  // aborts the group and waits for its thread

  // Checks the request (INVALID_ARGUMENT naming the field), drops any old group (aborting it) and
  // starts forming the new one in the background.
  absl::Status Join(const rollout::JoinWeightGroupRequest& request);
  // Waits for the join to finish (at most the join's timeout), then starts receiving the update.
  // FAILED_PRECONDITION: no group, the join failed, or the group was aborted; INVALID_ARGUMENT: a
  // malformed manifest (ManifestFromProto). Otherwise OK with accepted = false and the reason when
  // the update does not fit this worker (it still takes part in the broadcasts).
  absl::StatusOr<rollout::BeginWeightUpdateResponse> Begin(const rollout::WeightManifest& manifest);
  // Waits up to `max_wait` for the receive of `version` to finish; its outcome (OK = staged).
  // FAILED_PRECONDITION when no receive of that version was begun.
  absl::StatusOr<rollout::UpdateWeightsResponse> End(uint64_t version, absl::Duration max_wait);

 private:
  void JoinThreadBody(rollout::JoinWeightGroupRequest request);
  void ReceiveBody(WeightManifest manifest, int root);
  void StopThread() ABSL_LOCKS_EXCLUDED(mu_);

  Engine* engine_;
  CommunicatorFactory factory_;
  // Serializes Join and Begin (gRPC may run them on different threads), which own thread_.
  absl::Mutex control_mu_;
  std::thread thread_;  // the join or the receive in progress (one at a time)

  mutable absl::Mutex mu_;
  enum class State { kNone, kJoining, kJoined, kReceiving, kFailed };
  State state_ ABSL_GUARDED_BY(mu_) = State::kNone;
  absl::Status join_status_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<comm::Communicator> comm_ ABSL_GUARDED_BY(mu_);
  comm::Communicator* live_comm_ ABSL_GUARDED_BY(mu_) = nullptr;  // for Abort from other threads
  int root_ ABSL_GUARDED_BY(mu_) = 0;
  int cuda_device_ ABSL_GUARDED_BY(mu_) = 0;  // the group's device (device communicators)
  absl::Duration join_timeout_ ABSL_GUARDED_BY(mu_);
  // The last receive: its version and outcome once done.
  uint64_t receive_version_ ABSL_GUARDED_BY(mu_) = 0;
  bool receive_done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status receive_status_ ABSL_GUARDED_BY(mu_);
  int64_t receive_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grpo
