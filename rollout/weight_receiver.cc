// WeightGroupMember (rollout/weight_receiver.h).
#include "rollout/weight_receiver.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/cuda_ipc.h"
#include "comm/nccl_communicator.h"
#include "common/log.h"
#include "common/status.h"

namespace grpo {

CommunicatorFactory NcclCommunicatorFactory() {
  return [](const rollout::JoinWeightGroupRequest& r)
             -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
    comm::NcclUniqueId id;
    if (r.unique_id().size() != id.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("JoinWeightGroup: unique_id has ",
                                                     r.unique_id().size(), " bytes, expected ",
                                                     id.bytes.size()));
    }
    std::copy(r.unique_id().begin(), r.unique_id().end(), id.bytes.begin());
    return comm::NcclCommunicator::Create(id, r.rank(), r.world_size(), r.cuda_device(),
                                          absl::Seconds(r.timeout_s()));
  };
}

WeightGroupMember::WeightGroupMember(Engine* engine, CommunicatorFactory factory)
    : engine_(engine), factory_(std::move(factory)) {}

WeightGroupMember::~WeightGroupMember() {
  absl::MutexLock control(&control_mu_);
  StopThread();
}

void WeightGroupMember::StopThread() {
  {
    absl::MutexLock lock(&mu_);
    if (live_comm_ != nullptr) live_comm_->Abort();
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status WeightGroupMember::Join(const rollout::JoinWeightGroupRequest& r) {
  if (r.world_size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat("JoinWeightGroup: world_size ", r.world_size(),
                                                   " must be >= 2 (the learner and a worker)"));
  }
  if (r.rank() < 0 || r.rank() >= r.world_size() || r.root() < 0 || r.root() >= r.world_size() ||
      r.rank() == r.root()) {
    return absl::InvalidArgumentError(
        absl::StrCat("JoinWeightGroup: rank ", r.rank(), " and root ", r.root(),
                     " must be distinct ranks of [0, world_size ", r.world_size(), ")"));
  }
  if (!(r.timeout_s() > 0 && r.timeout_s() <= 86400)) {
    return absl::InvalidArgumentError(
        absl::StrCat("JoinWeightGroup: timeout_s ", r.timeout_s(), " is not in (0, 86400]"));
  }
  absl::MutexLock control(&control_mu_);
  StopThread();  // the old group, if any, is aborted: its peers see ABORTED, never a hang
  absl::MutexLock lock(&mu_);
  live_comm_ = nullptr;
  comm_.reset();
  state_ = State::kJoining;
  join_status_ = absl::OkStatus();
  root_ = r.root();
  cuda_device_ = r.cuda_device();
  join_timeout_ = absl::Seconds(r.timeout_s());
  thread_ = std::thread(&WeightGroupMember::JoinThreadBody, this, r);
  return absl::OkStatus();
}

void WeightGroupMember::JoinThreadBody(rollout::JoinWeightGroupRequest request) {
  auto made = factory_(request);
  absl::MutexLock lock(&mu_);
  if (!made.ok()) {
    GRPO_LOG(WARNING, "joining the weight-sync group failed: %s", made.status().ToString());
    join_status_ = WithContext(made.status(), "JoinWeightGroup");
    state_ = State::kFailed;
    return;
  }
  comm_ = std::move(*made);
  live_comm_ = comm_.get();
  state_ = State::kJoined;
  GRPO_LOG(INFO, "joined the weight-sync group (%s, rank %d of %d)", comm_->backend(),
           comm_->rank(), comm_->world_size());
}

absl::StatusOr<rollout::BeginWeightUpdateResponse> WeightGroupMember::Begin(
    const rollout::WeightManifest& proto) {
  ASSIGN_OR_RETURN(WeightManifest manifest, ManifestFromProto(proto));
  absl::MutexLock control(&control_mu_);
  int root = 0;
  {
    absl::MutexLock lock(&mu_);
    // A join or the previous receive may still be running: wait for it (bounded).
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return state_ != State::kJoining && state_ != State::kReceiving;
    };
    const absl::Duration wait = std::max(join_timeout_, absl::Seconds(manifest.timeout_s));
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), wait)) {
      return absl::FailedPreconditionError(
          "BeginWeightUpdate: the previous join or receive is still running");
    }
    if (state_ == State::kNone) {
      return absl::FailedPreconditionError(
          "BeginWeightUpdate: this worker is in no weight-sync group (JoinWeightGroup first)");
    }
    if (state_ == State::kFailed) return join_status_;
    if (comm_ == nullptr || comm_->aborted()) {
      state_ = State::kFailed;
      join_status_ = absl::FailedPreconditionError(
          "BeginWeightUpdate: the weight-sync group was aborted; the learner must rebuild it");
      return join_status_;
    }
    root = root_;
  }
  if (thread_.joinable()) thread_.join();  // finished (idle above)
  rollout::BeginWeightUpdateResponse response;
  const WeightTarget target{engine_->num_params(), engine_->layout_fingerprint(),
                            engine_->newest_version()};
  const absl::Status fits = CheckManifestForModel(manifest, target);
  response.set_accepted(fits.ok());
  if (!fits.ok()) response.set_error(std::string(fits.message()));
  absl::MutexLock lock(&mu_);
  state_ = State::kReceiving;
  receive_version_ = manifest.version;
  receive_done_ = false;
  receive_status_ = absl::OkStatus();
  receive_bytes_ = 0;
  thread_ = std::thread(&WeightGroupMember::ReceiveBody, this, std::move(manifest), root);
  return response;
}

void WeightGroupMember::ReceiveBody(WeightManifest manifest, int root) {
  comm::Communicator* comm;
  int device;
  {
    absl::MutexLock lock(&mu_);
    comm = comm_.get();
    device = cuda_device_;
  }
  // Staging buffers of a device communicator live on its device; this thread is new.
  if (comm->memory() == comm::MemorySpace::kDevice) (void)comm::UseCudaDevice(device);
  const WeightTarget target{engine_->num_params(), engine_->layout_fingerprint(),
                            engine_->newest_version()};
  ReceiveStats stats;
  auto params = ReceiveWeights(comm, root, manifest, target, &stats, engine_->TakeSpareParams());
  absl::Status s = params.status();
  if (s.ok()) s = engine_->StageWeights(manifest.version, std::move(*params));
  if (!s.ok()) {
    GRPO_LOG(WARNING, "weight update v%d over the group refused; old weights keep serving: %s",
             static_cast<int>(manifest.version), s.ToString());
  }
  absl::MutexLock lock(&mu_);
  receive_status_ = s;
  receive_bytes_ = stats.bytes;
  receive_done_ = true;
  state_ = comm->aborted() ? State::kFailed : State::kJoined;
  if (state_ == State::kFailed) {
    join_status_ = absl::FailedPreconditionError(absl::StrCat(
        "the weight-sync group was aborted (", s.message(), "); the learner must rebuild it"));
  }
}

absl::StatusOr<rollout::UpdateWeightsResponse> WeightGroupMember::End(uint64_t version,
                                                                      absl::Duration max_wait) {
  absl::MutexLock lock(&mu_);
  if (receive_version_ != version || version == 0) {
    return absl::FailedPreconditionError(absl::StrCat("EndWeightUpdate: no receive of version ",
                                                      version, " was begun (the last was ",
                                                      receive_version_, ")"));
  }
  auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return receive_done_; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), max_wait)) {
    return absl::DeadlineExceededError(
        absl::StrCat("EndWeightUpdate: the receive of version ", version, " is still running"));
  }
  RETURN_IF_ERROR(receive_status_);
  rollout::UpdateWeightsResponse response;
  response.set_version(version);
  response.set_bytes_received(static_cast<uint64_t>(receive_bytes_));
  return response;
}

}  // namespace grpo
