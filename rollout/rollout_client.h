// The learner's client for a RolloutService (proto/rollout.proto) at one address. Thread-safe:
// one RolloutClient may run several calls at once from different threads.
//
//   ASSIGN_OR_RETURN(auto client, RolloutClient::Connect("127.0.0.1:50061"));
//   SamplingParams sp;  sp.group_size = 8;  sp.max_new_tokens = 256;  sp.seed = step;
//   RETURN_IF_ERROR(client->Generate(prompts, sp, absl::Now() + absl::Minutes(5),
//       [&](GroupResult&& g) { groups.push_back(std::move(g)); return absl::OkStatus(); }));
//   RETURN_IF_ERROR(client->PushWeights(version, model.layout(),
//       absl::MakeConstSpan(model.params(), model.num_params()), absl::Now() + absl::Minutes(1)));
//
// Errors keep the server's canonical code: UNAVAILABLE (worker down or shutting down) and
// DEADLINE_EXCEEDED mean "re-issue the work elsewhere"; INVALID_ARGUMENT means the request is wrong
// and will fail everywhere. Messages start with "rollout ADDRESS:".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/params.h"
#include "proto/rollout.pb.h"
#include "rollout/rollout_types.h"

namespace grpo {

class RolloutClient {
 public:
  // Called once per finished group, on the calling thread of Generate, in completion order.
  // Returning an error cancels the call (the server stops the request's sequences) and Generate
  // returns that error.
  using GroupCallback = std::function<absl::Status(GroupResult&&)>;

  // Creates the channel; does not wait for the server (the first call does, until its deadline).
  // INVALID_ARGUMENT for an empty address.
  static absl::StatusOr<std::unique_ptr<RolloutClient>> Connect(const std::string& address);
  ~RolloutClient();

  // Blocks until every group has been delivered to on_group (OK), or the call fails. Groups
  // delivered before a failure are valid; the caller re-issues only the missing prompts. A call
  // that ends OK with fewer groups than prompts (a misbehaving server) is an INTERNAL error.
  absl::Status Generate(absl::Span<const RolloutPrompt> prompts, const SamplingParams& sampling,
                        absl::Time deadline, const GroupCallback& on_group);

  static constexpr int64_t kDefaultChunkBytes = int64_t{4} << 20;
  // Streams params (layout.total floats, ParamLayout order) as version `version` in chunks of
  // chunk_bytes (rounded down to whole floats, at most kMaxWeightChunkBytes). When every value
  // is exactly a bf16 value (a bf16 checkpoint, optimizer.weight_dtype "bf16") they go as bf16,
  // half the bytes, and the worker widens them back to the same floats; otherwise as f32. OK
  // means the worker verified and staged them: every Generate started afterwards runs on this
  // version or newer. `payload_bytes`, when given, receives the payload's size as sent.
  absl::Status PushWeights(uint64_t version, const ParamLayout& layout,
                           absl::Span<const float> params, absl::Time deadline,
                           int64_t chunk_bytes = kDefaultChunkBytes,
                           int64_t* payload_bytes = nullptr);

  absl::StatusOr<RolloutStatus> GetStatus(absl::Time deadline);

  // The collective weight-sync control plane (proto/rollout.proto; rollout/weight_sync.h): join
  // a group, announce an update's manifest, wait for the worker's verdict on it.
  absl::StatusOr<rollout::JoinWeightGroupResponse> JoinWeightGroup(
      const rollout::JoinWeightGroupRequest& request, absl::Time deadline);
  absl::StatusOr<rollout::BeginWeightUpdateResponse> BeginWeightUpdate(
      const rollout::WeightManifest& manifest, absl::Time deadline);
  absl::StatusOr<rollout::UpdateWeightsResponse> EndWeightUpdate(uint64_t version,
                                                                 absl::Time deadline);
  // weight_sync.transport "ipc" to a server on this machine's GPU (UpdateWeightsIpc): returns
  // once the server serves the weights the handles name.
  absl::StatusOr<rollout::UpdateWeightsResponse> UpdateWeightsIpc(
      const rollout::IpcWeightUpdate& request, absl::Time deadline);

  const std::string& address() const { return address_; }

 private:
  struct Impl;
  RolloutClient(std::string address, std::unique_ptr<Impl> impl);
  const std::string address_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo
