// The reward service (proto/reward.proto) and its client-side reward function.
//  - RewardScorer: plain logic. Holds a RewardSet and scores proto RewardItems: converts them to
//    RewardInput (bad JSON or invalid UTF-8 in an item becomes that item's error, never a crash
//    or a failed call), rejects a batch over max_batch_size, and reports the running counters of
//    the set's isolated (plugin) rewards. Tests call it without a server.
//  - RewardServiceImpl: the thin gRPC service over a RewardScorer; converts Status in one place.
//    A callback service: handlers never block. Score hands the request to a bounded ScoreQueue
//    (reward/score_queue.h) whose workers score it; a full queue answers RESOURCE_EXHAUSTED at
//    once. RewardSet::Score is safe to call concurrently (plugin rewards serialize their worker
//    pool internally, a reward model its forwards), and every item's work is bounded: built-in
//    rewards are linear-time, plugin items have deadlines, reward-model items a length cap.
//  - StartRewardServer: builds and starts a server for a service on host:port (0 = any free).
//  - RemoteReward: a RewardFunction that calls a RewardService at an address with a per-call
//    deadline; registered as "remote" with params
//      {"address": "127.0.0.1:PORT", "deadline_ms": 5000, "failure_score": 0}.
//    An RPC failure gives every item the error "remote reward ADDRESS: <grpc status>" and the
//    failure score; an item with invalid UTF-8 text is not sent and gets its own error.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "proto/reward.grpc.pb.h"
#include "proto/reward.pb.h"
#include "reward/reward.h"
#include "reward/reward_set.h"
#include "reward/score_queue.h"

namespace grpo {

class RewardScorer {
 public:
  static constexpr int kDefaultMaxBatchSize = 4096;

  explicit RewardScorer(RewardSet set, int max_batch_size = kDefaultMaxBatchSize);
  // Builds the set from a reward config JSON (RewardSetConfig::FromJson).
  static absl::StatusOr<std::unique_ptr<RewardScorer>> FromConfigJson(
      const nlohmann::json& config, int max_batch_size = kDefaultMaxBatchSize);

  // One result per item, in order. INVALID_ARGUMENT for a batch over max_batch_size.
  absl::Status Score(const ScoreRequest& request, ScoreResponse* response) const;
  void Health(HealthResponse* response) const;

  const RewardSet& set() const { return set_; }

  // RewardItem -> RewardInput, or why the item is malformed (names the field).
  static absl::StatusOr<RewardInput> ToRewardInput(const RewardItem& item);

 private:
  const RewardSet set_;
  const int max_batch_size_;
};

class RewardServiceImpl final : public RewardService::CallbackService {
 public:
  explicit RewardServiceImpl(const RewardScorer* scorer, ScoreQueueOptions queue = {})
      : scorer_(scorer), queue_(scorer, queue) {}

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const ScoreRequest* request,
                                  ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* ctx, const HealthRequest* request,
                                   HealthResponse* response) override;

  const ScoreQueue& queue() const { return queue_; }

 private:
  const RewardScorer* scorer_;  // not owned
  ScoreQueue queue_;
};

// Builds and starts a gRPC server (insecure credentials) for `service` on host:port; port 0 picks
// a free port. *selected_port gets the bound port. The service must outlive the server.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartRewardServer(grpc::Service* service,
                                                                const std::string& host, int port,
                                                                int* selected_port);

struct RemoteRewardOptions {
  std::string address;         // host:port of a RewardService
  int deadline_ms = 5000;      // per call (one call per Score() batch)
  double failure_score = 0.0;  // score of an item that failed

  // From the "remote" factory's params; unknown keys are errors.
  static absl::StatusOr<RemoteRewardOptions> FromJson(const nlohmann::json& params);
};

class RemoteReward : public RewardFunction {
 public:
  explicit RemoteReward(RemoteRewardOptions options);

  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override;

 private:
  const RemoteRewardOptions options_;
  const std::string name_ = "remote";
  std::unique_ptr<RewardService::Stub> stub_;  // thread-safe
};

// Registers the "remote" factory (called from RegisterBuiltinRewards).
absl::Status RegisterRemoteReward(RewardRegistry* registry);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view s);

}  // namespace grpo
