// WeightPublisher and EnsureCurrentWeights (learner/weight_sync.h).
#include "learner/weight_sync.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/cuda_ipc.h"
#include "comm/nccl_communicator.h"
#include "common/log.h"
#include "common/status.h"
#include "rollout/weights.h"

namespace grpo {

struct WeightPublisher::LocalGroupState {
  std::vector<size_t> members;  // worker indices; member j is rank j + 1
  std::shared_ptr<comm::LocalGroup> group;
  std::vector<std::unique_ptr<comm::Communicator>> comms;  // [0] = the learner
};

struct WeightPublisher::RemoteGroupState {
  std::vector<size_t> members;               // worker indices; member j is rank j + 1
  std::unique_ptr<comm::Communicator> comm;  // the learner's rank 0
};

namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A server that cannot take device weights by handle at all, as opposed to one update failing:
// its engine is on the CPU or it is on another machine (FAILED_PRECONDITION), it predates
// UpdateWeightsIpc (UNIMPLEMENTED), or CUDA refused the handles (UNAVAILABLE).
bool IpcRefusal(const absl::Status& s) {
  return s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kUnimplemented || s.code() == absl::StatusCode::kUnavailable;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightPublisher>> WeightPublisher::Create(
    WeightPublisherOptions options) {
  RETURN_IF_ERROR(options.config.Validate());
  if (options.config.transport == "ipc" && !options.device_weights) {
    return absl::FailedPreconditionError(
        "'weight_sync.transport' is \"ipc\", which copies the learner's GPU weights device to "
        "device: it needs 'device' cuda; use \"auto\", \"grpc\" or \"collective\" otherwise");
  }
  if (!options.remote_factory) options.remote_factory = NcclCommunicatorFactory();
  return std::unique_ptr<WeightPublisher>(new WeightPublisher(std::move(options)));
}

WeightPublisher::WeightPublisher(WeightPublisherOptions options) : options_(std::move(options)) {
  collective_ = options_.config.transport == "collective";
  ipc_ = options_.config.transport == "ipc";
}

WeightPublisher::~WeightPublisher() {
  if (remote_ != nullptr && remote_->comm != nullptr) remote_->comm->Abort();
}

std::string WeightPublisher::description() const {
  if (ipc_) {
    return "ipc (device to device into engines on this machine's GPU), grpc for the rest";
  }
  if (!collective_) return "grpc";
  return remote_disabled_ ? "collective(local), grpc for remote workers"
                          : absl::StrCat("collective(local, ", options_.remote_backend, ")");
}

WeightDtype WeightPublisher::DtypeFor(bool remote) const {
  if (options_.config.dtype == "fp32") return WeightDtype::kF32;
  if (options_.config.dtype == "bf16") return WeightDtype::kBf16;
  return remote && !options_.deterministic ? WeightDtype::kBf16 : WeightDtype::kF32;
}

void WeightPublisher::PublishLocal(absl::Span<RolloutWorker* const> workers,
                                   const std::vector<size_t>& members, const PackedWeights& packed,
                                   std::vector<size_t>* fallback) {
  if (local_ == nullptr || local_->members != members || local_->comms[0]->aborted()) {
    local_ = std::make_unique<LocalGroupState>();
    local_->members = members;
    local_->group = comm::LocalGroup::Create(static_cast<int>(members.size()) + 1);
    for (size_t r = 0; r <= members.size(); ++r) {
      local_->comms.push_back(local_->group->Rank(static_cast<int>(r)));
    }
  }
  const WeightManifest& manifest = packed.manifest();
  // Receivers get the manifest as a remote worker would: through its proto and its checks.
  rollout::WeightManifest proto;
  ManifestToProto(manifest, &proto);
  std::vector<absl::Status> status(members.size());
  std::vector<std::thread> threads;
  for (size_t j = 0; j < members.size(); ++j) {
    threads.emplace_back([&, j] {
      Engine* engine = static_cast<LocalRolloutWorker*>(workers[members[j]])->engine();
      comm::Communicator* c = local_->comms[j + 1].get();
      auto m = ManifestFromProto(proto);
      if (!m.ok()) {
        status[j] = m.status();
        c->Abort();  // the root must not wait for a rank that cannot follow the broadcasts
        return;
      }
      const WeightTarget target{engine->num_params(), engine->layout_fingerprint(),
                                engine->newest_version()};
      auto params = ReceiveWeights(c, /*root=*/0, *m, target);
      status[j] =
          params.ok() ? engine->StageWeights(m->version, std::move(*params)) : params.status();
    });
  }
  const absl::Status sent = BroadcastWeights(local_->comms[0].get(), packed);
  for (auto& t : threads) t.join();
  if (!sent.ok()) {
    GRPO_LOG(WARNING,
             "weight broadcast v%d to in-process workers failed (%s); pushing point to "
             "point",
             static_cast<int>(manifest.version), sent.ToString());
    local_.reset();
    fallback->insert(fallback->end(), members.begin(), members.end());
    return;
  }
  for (size_t j = 0; j < members.size(); ++j) {
    if (status[j].ok()) continue;
    GRPO_LOG(WARNING, "%s refused weight update v%d over the group (%s); pushing point to point",
             workers[members[j]]->name(), static_cast<int>(manifest.version), status[j].ToString());
    fallback->push_back(members[j]);
  }
}

absl::Status WeightPublisher::BuildRemoteGroup(absl::Span<RolloutWorker* const> workers,
                                               const std::vector<size_t>& members) {
  rollout::JoinWeightGroupRequest request;
  request.set_backend(options_.remote_backend);
  if (options_.remote_backend == "nccl") {
    if (!comm::NcclUsable()) {
      return absl::UnavailableError("the learner has no NCCL or no CUDA device");
    }
    ASSIGN_OR_RETURN(comm::NcclUniqueId id, comm::NewNcclUniqueId());
    request.set_unique_id(std::string(id.bytes.data(), id.bytes.size()));
  }
  request.set_world_size(static_cast<int>(members.size()) + 1);
  request.set_root(0);
  request.set_timeout_s(options_.timeout_s);
  // Workers use their first visible GPU (CUDA_VISIBLE_DEVICES picks it per process).
  request.set_cuda_device(0);
  // Joins return at once; the group forms when the learner joins below.
  for (size_t j = 0; j < members.size(); ++j) {
    auto* w = static_cast<RemoteRolloutWorker*>(workers[members[j]]);
    request.set_rank(static_cast<int>(j) + 1);
    auto r = w->client()->JoinWeightGroup(request, absl::Now() + w->timeout());
    if (!r.ok()) return WithContext(r.status(), "JoinWeightGroup");
  }
  request.set_rank(0);
  request.set_cuda_device(options_.cuda_device);
  ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator> c, options_.remote_factory(request));
  remote_ = std::make_unique<RemoteGroupState>();
  remote_->members = members;
  remote_->comm = std::move(c);
  GRPO_LOG(INFO, "weight-sync group formed: %s, the learner and %d remote workers",
           remote_->comm->backend(), static_cast<int>(members.size()));
  return absl::OkStatus();
}

void WeightPublisher::PublishRemote(absl::Span<RolloutWorker* const> workers,
                                    const std::vector<size_t>& members, const PackedWeights& packed,
                                    std::vector<size_t>* fallback) {
  const uint64_t version = packed.manifest().version;
  auto give_up = [&](const absl::Status& why) {
    GRPO_LOG(WARNING, "weight update v%d over the %s group failed (%s); pushing point to point",
             static_cast<int>(version), options_.remote_backend, why.ToString());
    if (remote_ != nullptr) remote_->comm->Abort();
    remote_.reset();
    fallback->insert(fallback->end(), members.begin(), members.end());
  };
  if (remote_ == nullptr || remote_->members != members || remote_->comm->aborted()) {
    remote_.reset();
    const absl::Status built = BuildRemoteGroup(workers, members);
    if (!built.ok()) {
      if (built.code() == absl::StatusCode::kUnavailable ||
          built.code() == absl::StatusCode::kInvalidArgument) {
        // No NCCL or GPU here or there: it will not come back by retrying.
        GRPO_LOG(WARNING,
                 "collective weight sync for remote workers is unavailable (%s); they "
                 "get the gRPC stream from now on",
                 built.ToString());
        remote_disabled_ = true;
      }
      give_up(built);
      return;
    }
  }
  rollout::WeightManifest proto;
  ManifestToProto(packed.manifest(), &proto);
  std::vector<bool> accepted(members.size(), false);
  for (size_t j = 0; j < members.size(); ++j) {
    auto* w = static_cast<RemoteRolloutWorker*>(workers[members[j]]);
    auto r = w->client()->BeginWeightUpdate(proto, absl::Now() + w->timeout());
    if (!r.ok()) {
      // That worker will not follow the broadcasts: sending would stall the others.
      give_up(r.status());
      return;
    }
    accepted[j] = r->accepted();
    if (!r->accepted()) {
      GRPO_LOG(WARNING, "%s refused weight update v%d: %s", w->name(), static_cast<int>(version),
               r->error());
    }
  }
  if (remote_->comm->memory() == comm::MemorySpace::kDevice) {
    (void)comm::UseCudaDevice(options_.cuda_device);  // where the staging buffer must live
  }
  const absl::Status sent = BroadcastWeights(remote_->comm.get(), packed);
  if (!sent.ok()) {
    give_up(sent);
    return;
  }
  for (size_t j = 0; j < members.size(); ++j) {
    auto* w = static_cast<RemoteRolloutWorker*>(workers[members[j]]);
    absl::Status s = accepted[j] ? absl::OkStatus() : absl::FailedPreconditionError("refused");
    if (s.ok()) s = w->client()->EndWeightUpdate(version, absl::Now() + w->timeout()).status();
    if (!s.ok()) {
      if (accepted[j]) {
        GRPO_LOG(WARNING,
                 "%s: weight update v%d over the group failed (%s); pushing point to "
                 "point",
                 w->name(), static_cast<int>(version), s.ToString());
      }
      fallback->push_back(members[j]);
    }
  }
}

absl::Status WeightPublisher::Publish(absl::Span<RolloutWorker* const> workers,
                                      std::vector<bool>* alive, const ParamLayout& layout,
                                      absl::Span<const float> params, uint64_t version,
                                      std::map<std::string, double>* metrics) {
  const auto t0 = std::chrono::steady_clock::now();
  alive->resize(workers.size(), true);
  std::vector<size_t> local_members, remote_members, p2p, ipc;
  for (size_t w = 0; w < workers.size(); ++w) {
    if (!(*alive)[w]) continue;
    auto* local = dynamic_cast<LocalRolloutWorker*>(workers[w]);
    auto* remote = dynamic_cast<RemoteRolloutWorker*>(workers[w]);
    if (ipc_ && local != nullptr && local->engine()->device() == Device::kCuda) {
      ipc.push_back(w);
    } else if (ipc_ && remote != nullptr && !ipc_refused_.contains(remote->name())) {
      ipc.push_back(w);
    } else if (collective_ && local != nullptr) {
      local_members.push_back(w);
    } else if (collective_ && !remote_disabled_ && remote != nullptr) {
      remote_members.push_back(w);
    } else {
      p2p.push_back(w);
    }
  }
  const uint64_t fingerprint = LayoutFingerprint(layout);
  const int64_t bucket_bytes = options_.config.bucket_bytes();
  double bytes = 0;
  int64_t num_buckets = 0, collective_ok = 0;
  auto run_collective = [&](const std::vector<size_t>& members, bool remote) {
    if (members.empty()) return;
    const PackedWeights packed = PackedWeights::Pack(params, fingerprint, version, DtypeFor(remote),
                                                     bucket_bytes, options_.timeout_s);
    std::vector<size_t> failed;
    if (remote) {
      PublishRemote(workers, members, packed, &failed);
    } else {
      PublishLocal(workers, members, packed, &failed);
    }
    const int64_t n_ok = static_cast<int64_t>(members.size() - failed.size());
    collective_ok += n_ok;
    bytes += static_cast<double>(n_ok * packed.manifest().total_bytes());
    num_buckets += static_cast<int64_t>(packed.manifest().buckets.size());
    p2p.insert(p2p.end(), failed.begin(), failed.end());
  };
  run_collective(local_members, false);
  run_collective(remote_members, true);
  int64_t ipc_ok = 0;
  if (!ipc.empty()) {
    // The learner's GPU copy, device to device into each engine (in this process, or a server's
    // on this machine through CUDA IPC handles); a failure goes point to point.
    absl::StatusOr<const CudaModel*> src = options_.device_weights();
    const absl::Time deadline = absl::Now() + absl::Seconds(options_.timeout_s);
    for (size_t w : ipc) {
      const absl::Status s =
          src.ok() ? workers[w]->PushDeviceWeights(**src, version, deadline) : src.status();
      auto* remote = dynamic_cast<RemoteRolloutWorker*>(workers[w]);
      if (s.ok()) {
        ++ipc_ok;
        bytes += static_cast<double>((*src)->WeightDeviceBytes());
      } else if (remote != nullptr && src.ok() && IpcRefusal(s)) {
        // This server cannot take handles (engine on the CPU, another machine, no CUDA, an older
        // server): it stays point to point from now on, said once.
        GRPO_LOG(INFO, "weight_sync ipc: %s takes its weights over grpc (%s)", remote->name(),
                 s.ToString());
        ipc_refused_.insert(remote->name());
        p2p.push_back(w);
      } else {
        GRPO_LOG(WARNING,
                 "device-to-device weight update of %s failed (%s); pushing point to "
                 "point",
                 workers[w]->name(), s.ToString());
        p2p.push_back(w);
      }
    }
  }
  int64_t p2p_ok = 0;
  for (size_t w : p2p) {
    const absl::Status s = workers[w]->PushWeights(layout, params, version);
    if (!s.ok()) {
      GRPO_LOG(WARNING, "weight push to %s failed, dropping it: %s", workers[w]->name(),
               s.ToString());
      (*alive)[w] = false;
      continue;
    }
    ++p2p_ok;
    bytes += static_cast<double>(workers[w]->last_push_bytes());
  }
  if (std::find(alive->begin(), alive->end(), true) == alive->end()) {
    return absl::UnavailableError("no rollout worker is left alive");
  }
  const double seconds = SecondsSince(t0);
  (*metrics)["weight_sync/seconds"] = seconds;
  (*metrics)["weight_sync/bytes"] = bytes;
  (*metrics)["weight_sync/gb_per_s"] = seconds > 0 ? bytes / seconds / 1e9 : 0;
  (*metrics)["weight_sync/collective_workers"] = static_cast<double>(collective_ok);
  (*metrics)["weight_sync/p2p_workers"] = static_cast<double>(p2p_ok);
  (*metrics)["weight_sync/bucket_count"] = static_cast<double>(num_buckets);
  if (ipc_) (*metrics)["weight_sync/ipc_workers"] = static_cast<double>(ipc_ok);
  return absl::OkStatus();
}

absl::StatusOr<int> EnsureCurrentWeights(absl::Span<RolloutWorker* const> workers,
                                         std::vector<bool>* alive, const ParamLayout& layout,
                                         absl::Span<const float> params, uint64_t version) {
  alive->resize(workers.size(), true);
  int pushed = 0;
  for (size_t w = 0; w < workers.size(); ++w) {
    if (!(*alive)[w]) continue;
    auto v = workers[w]->NewestVersion();
    if (!v.ok()) {
      GRPO_LOG(WARNING, "rollout worker lost (%s does not answer: %s); dropping it",
               workers[w]->name(), v.status().ToString());
      (*alive)[w] = false;
      continue;
    }
    if (*v == version) continue;
    if (*v > version) {
      GRPO_LOG(WARNING,
               "rollout worker %s serves weight version %d, newer than the learner's %d "
               "(another learner?); dropping it",
               workers[w]->name(), static_cast<int>(*v), static_cast<int>(version));
      (*alive)[w] = false;
      continue;
    }
    const absl::Status s = workers[w]->PushWeights(layout, params, version);
    if (!s.ok()) {
      GRPO_LOG(WARNING, "bringing %s from weight version %d to %d failed, dropping it: %s",
               workers[w]->name(), static_cast<int>(*v), static_cast<int>(version), s.ToString());
      (*alive)[w] = false;
      continue;
    }
    GRPO_LOG(INFO, "rollout worker %s was at weight version %d; brought to %d before any work",
             workers[w]->name(), static_cast<int>(*v), static_cast<int>(version));
    ++pushed;
  }
  if (std::find(alive->begin(), alive->end(), true) == alive->end()) {
    return absl::UnavailableError("no rollout worker is left alive");
  }
  return pushed;
}

}  // namespace grpo
