// The learner's side of generation: what it asks rollout workers for, the interface a worker
// implements (in-process here; a gRPC RolloutService client adapts to it), an in-process worker
// over Model<float>, and the balanced dispatcher that re-issues a failed worker's groups to the
// workers still alive.
//
// Determinism: a group's completions depend only on its request (prompt, seed) and the worker's
// weights, never on which worker ran it, what it was batched with, or when it arrived: the
// in-process worker decodes one group at a time with per-sample SplitMix64 streams keyed by
// (group seed, sample index), and the dispatcher returns groups ordered by group_idx.
//
// Not here: the rollout engine proper (continuous batching, the RolloutService; rollout/).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model.h"

namespace grpo {

struct SamplingParams {
  double temperature = 1.0;
  int64_t max_new_tokens = 64;
  std::vector<int32_t> stop_tokens;  // a completion ends after emitting one (kept in it)
  bool record_routing = false;       // return expert ids for R3
};

struct GroupRequest {
  int64_t group_idx = 0;  // caller's index; results come back sorted by it
  std::vector<int32_t> prompt;
  int64_t num_samples = 1;  // G
  uint64_t seed = 0;        // sample i draws from SplitMix64(seed, i)
};

struct Completion {
  std::vector<int32_t> tokens;   // generated tokens only (C)
  std::vector<float> logprobs;   // (C) log mu(token) at the sampling temperature
  bool truncated = false;        // hit max_new_tokens without a stop token
  // (num_moe_layers, P + C, K) expert ids of every prompt and completion token, when requested.
  std::vector<int32_t> routing;
  int64_t weight_version = 0;
};

struct GroupResult {
  int64_t group_idx = 0;
  std::vector<Completion> completions;  // num_samples of them
};

class RolloutWorker {
 public:
  virtual ~RolloutWorker() = default;
  virtual std::string name() const = 0;
  // One result per request, any order. An error means the worker is unusable (the dispatcher
  // stops sending it work for the rest of the run).
  virtual absl::StatusOr<std::vector<GroupResult>> Generate(absl::Span<const GroupRequest> requests,
                                                            const SamplingParams& params) = 0;
  // Replaces the worker's weights (same layout as the learner's model) and its version.
  virtual absl::Status PushWeights(absl::Span<const float> params, int64_t version) = 0;
};

// Generates with its own copy of the model on the CPU.
class LocalRolloutWorker : public RolloutWorker {
 public:
  static absl::StatusOr<std::unique_ptr<LocalRolloutWorker>> Create(const ModelConfig& config,
                                                                    std::string name);
  std::string name() const override { return name_; }
  absl::StatusOr<std::vector<GroupResult>> Generate(absl::Span<const GroupRequest> requests,
                                                    const SamplingParams& params) override;
  absl::Status PushWeights(absl::Span<const float> params, int64_t version) override;

  // One group: G samples of one prompt decoded together.
  absl::StatusOr<GroupResult> GenerateGroup(const GroupRequest& request, const SamplingParams& params);

 private:
  LocalRolloutWorker(std::unique_ptr<Model<float>> model, std::string name)
      : model_(std::move(model)), name_(std::move(name)) {}
  std::unique_ptr<Model<float>> model_;
  std::string name_;
  int64_t version_ = 0;
};

struct DispatchStats {
  int64_t reissued_groups = 0;  // groups re-sent after their worker failed
  std::vector<std::string> failures;  // "worker: error", one per worker lost in this call
};

// Splits the requests evenly (contiguous, in order) over the workers marked alive, runs them in
// parallel, and re-issues the groups of any worker that fails to the remaining ones until every
// group has a result; a failed worker is marked dead in *alive. Results sorted by group_idx.
// Error only when no worker is left alive (naming the failures).
absl::StatusOr<std::vector<GroupResult>> DispatchGroups(absl::Span<RolloutWorker* const> workers,
                                                        std::vector<bool>* alive,
                                                        absl::Span<const GroupRequest> requests,
                                                        const SamplingParams& params,
                                                        DispatchStats* stats);

}  // namespace grpo
