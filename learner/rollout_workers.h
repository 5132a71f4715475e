// The learner's side of generation: the interface a rollout worker offers the learner, its two
// implementations — an in-process rollout Engine (rollout/engine.h) and a remote RolloutService
// through RolloutClient (rollout/rollout_client.h) — and the balanced dispatcher that re-issues
// a failed worker's missing groups to the workers still alive. Request and result types are the
// rollout module's (rollout/rollout_types.h).
//
// Determinism: a group's completions depend only on its prompt, the sampling parameters (seed),
// its prompt_id and the weights, never on which worker ran it or what it was batched with (the
// engine's contract); the dispatcher returns groups sorted by prompt_id. So re-issuing a dead
// worker's groups elsewhere gives the same completions.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_types.h"

namespace grpo {

class RolloutWorker {
 public:
  virtual ~RolloutWorker() = default;
  virtual std::string name() const = 0;
  // Appends each finished group to *out (any order). On error *out still holds the groups
  // delivered before the failure (valid; the dispatcher re-issues only the rest).
  virtual absl::Status Generate(absl::Span<const RolloutPrompt> prompts,
                                const SamplingParams& sampling, std::vector<GroupResult>* out) = 0;
  // Replaces the worker's weights (ParamLayout order) as `version`, which must be newer than
  // NewestVersion(). Every Generate after an OK push runs on these weights.
  virtual absl::Status PushWeights(const ParamLayout& layout, absl::Span<const float> params,
                                   uint64_t version) = 0;
  // weight_sync.transport "ipc": the worker takes `src`'s weights device to device as `version`
  // and returns once it serves them, so `src` may change afterwards. FAILED_PRECONDITION (or
  // UNIMPLEMENTED, here) where the worker cannot: use PushWeights.
  virtual absl::Status PushDeviceWeights(const CudaModel& src, uint64_t version,
                                         absl::Time deadline) {
    return absl::UnimplementedError("this rollout worker takes its weights from the host");
  }
  // The bytes the last successful PushWeights moved (the weight_sync/bytes metric).
  virtual int64_t last_push_bytes() const = 0;
  // The newest version the worker serves or has staged.
  virtual absl::StatusOr<uint64_t> NewestVersion() = 0;
};

// An Engine in this process, over its own copy of the model.
class LocalRolloutWorker : public RolloutWorker {
 public:
  // `model` holds the initial weights (served as version 0); the engine's KV pool gets
  // `kv_budget_bytes` (sized at start-up) on `device`.
  static absl::StatusOr<std::unique_ptr<LocalRolloutWorker>> Create(const Model<float>& model,
                                                                    std::string name,
                                                                    int64_t kv_budget_bytes,
                                                                    Device device = Device::kCpu);
  std::string name() const override { return name_; }
  absl::Status Generate(absl::Span<const RolloutPrompt> prompts, const SamplingParams& sampling,
                        std::vector<GroupResult>* out) override;
  absl::Status PushWeights(const ParamLayout& layout, absl::Span<const float> params,
                           uint64_t version) override;
  // weight_sync.transport "ipc": the engine (on cuda) copies `src`'s weights device to device
  // (CudaModel::CopyWeightsFrom); returns once it serves them, so `src` may change afterwards.
  // FAILED_PRECONDITION for an engine on the CPU.
  absl::Status PushDeviceWeights(const CudaModel& src, uint64_t version,
                                 absl::Time deadline) override;
  // A staged fp32 copy.
  int64_t last_push_bytes() const override { return engine_->num_params() * 4; }
  absl::StatusOr<uint64_t> NewestVersion() override { return engine_->newest_version(); }
  // The engine, for the collective weight sync (learner/weight_sync.h).
  Engine* engine() const { return engine_.get(); }

 private:
  LocalRolloutWorker(std::unique_ptr<Engine> engine, std::string name)
      : engine_(std::move(engine)), name_(std::move(name)) {}
  std::unique_ptr<Engine> engine_;
  std::string name_;
};

// A RolloutService at an address.
class RemoteRolloutWorker : public RolloutWorker {
 public:
  static absl::StatusOr<std::unique_ptr<RemoteRolloutWorker>> Connect(const std::string& address,
                                                                      absl::Duration timeout);
  std::string name() const override { return client_->address(); }
  absl::Status Generate(absl::Span<const RolloutPrompt> prompts, const SamplingParams& sampling,
                        std::vector<GroupResult>* out) override;
  absl::Status PushWeights(const ParamLayout& layout, absl::Span<const float> params,
                           uint64_t version) override;
  // weight_sync.transport "ipc" to a server on this machine with its engine on a GPU:
  // `src`'s device weights by CUDA IPC handle (RolloutService UpdateWeightsIpc); returns once the
  // server serves them, so `src` may change afterwards. FAILED_PRECONDITION when the server cannot
  // take them this way (engine on the CPU, another machine): push over PushWeights instead.
  absl::Status PushDeviceWeights(const CudaModel& src, uint64_t version,
                                 absl::Time deadline) override;
  // The UpdateWeights payload: bf16 when every weight is a bf16 value (RolloutClient).
  int64_t last_push_bytes() const override { return last_push_bytes_; }
  absl::StatusOr<uint64_t> NewestVersion() override;
  // The client and the per-call timeout, for the collective weight sync (learner/weight_sync.h).
  RolloutClient* client() const { return client_.get(); }
  absl::Duration timeout() const { return timeout_; }

 private:
  RemoteRolloutWorker(std::unique_ptr<RolloutClient> client, absl::Duration timeout)
      : client_(std::move(client)), timeout_(timeout) {}
  std::unique_ptr<RolloutClient> client_;
  absl::Duration timeout_;
  int64_t last_push_bytes_ = 0;
};

struct DispatchStats {
  int64_t reissued_groups = 0;        // groups re-sent after their worker failed
  std::vector<std::string> failures;  // "worker: error", one per worker lost in this call
};

// Splits the prompts evenly (contiguous, in order) over the workers marked alive, runs them in
// parallel, and re-issues the groups a failed worker did not deliver to the remaining ones until
// every group has a result; a failed worker is marked dead in *alive. An INVALID_ARGUMENT error
// (the request itself is wrong, it would fail everywhere) is returned at once. Results are sorted
// by prompt_id. Error when no worker is left alive (naming the failures).
absl::StatusOr<std::vector<GroupResult>> DispatchGroups(absl::Span<RolloutWorker* const> workers,
                                                        std::vector<bool>* alive,
                                                        absl::Span<const RolloutPrompt> prompts,
                                                        const SamplingParams& sampling,
                                                        DispatchStats* stats);

}  // namespace grpo
