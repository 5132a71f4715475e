// IsolatedReward: a RewardFunction that scores with an untrusted C-ABI plugin
// (reward/plugin_abi.h) inside a pool of worker processes, each item under a hard deadline.
// Registered as the "plugin" reward function.
//
// Isolation model:
//  - Workers are separate processes: posix_spawn() (vfork+exec) of the grpo_reward_worker
//    executable (reward/worker_main.cc), which dlopen()s the plugin. Exec'ing, not a bare fork(),
//    because the host is multi-threaded (OpenMP, gRPC, other batches: a forked child could
//    inherit a held malloc or loader lock) and may have a huge address space (fork copies page
//    tables); the plugin's constructors and code never run in the host.
//  - Each item has a deadline (deadline_ms, from the moment it is sent to a worker). Past it the
//    worker gets SIGKILL, is reaped and replaced at once (start-up is outside the item's
//    deadline; startup_ms bounds it); the item gets failure_score, error "timeout after N ms",
//    and the timeout counter increments. A worker that dies mid-item
//    (segfault, exit, abort) gives "worker crashed (signal 11)" / "worker exited (code 3)" and
//    the crash counter increments. A response that is not valid JSON, lacks a numeric "score",
//    or a plugin error return gives an error and increments the error counter.
//  - A batch is spread over num_workers workers, one host thread per worker for the duration of
//    Score(), so a hanging item delays only its own worker's queue by at most its deadline.
//    Concurrent Score() calls are serialized (one pool).
//  - The destructor closes, kills and reaps every worker: no zombies. A worker whose host dies
//    sees EOF on its socket and exits; one hung inside the plugin dies by its own alarm()
//    (deadline + 2 s). PR_SET_PDEATHSIG is not used: it fires when the forking *thread* exits.
//
// Failed items carry a component "isolation/timeout", "isolation/crash" or "isolation/error"
// equal to 1, so a batch's failures are visible per item; counters() gives the running totals.
//
// Built-in reward functions run in-process without this wrapper: they are written to be bounded
// (linear-time parsing, no I/O), so no generic in-process deadline wrapper is provided.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "reward/reward.h"

namespace grpo {

struct RewardCounters {
  int64_t calls = 0;     // items scored (successfully or not)
  int64_t timeouts = 0;  // items past their deadline (worker killed)
  int64_t crashes = 0;   // workers that died mid-item or spoke garbage on the wire
  int64_t errors = 0;    // plugin error returns, invalid responses, workers that failed to start
};

struct IsolatedRewardOptions {
  std::string plugin_path;                           // the plugin .so
  int deadline_ms = 1000;                            // per item, from dispatch to response
  int num_workers = 2;                               // worker processes in the pool
  double failure_score = 0.0;                        // score of an item that failed
  nlohmann::json params = nlohmann::json::object();  // passed to the plugin in every request
  // The worker executable; empty: $GRPO_REWARD_WORKER, then grpo_reward_worker next to the
  // running binary, then the one built with this tree.
  std::string worker_path;
  int startup_ms = 5000;  // how long a new worker may take to load the plugin

  absl::Status Validate() const;
  // From the "plugin" factory's params (see reward/plugin_abi.h); unknown keys are errors.
  static absl::StatusOr<IsolatedRewardOptions> FromJson(const nlohmann::json& params);
};

class IsolatedReward : public RewardFunction {
 public:
  // Starts the workers; a plugin that cannot be loaded (missing file, missing symbol, ABI
  // version mismatch) is an error here, not at scoring time.
  static absl::StatusOr<std::unique_ptr<IsolatedReward>> Create(IsolatedRewardOptions options);
  ~IsolatedReward() override;
  IsolatedReward(const IsolatedReward&) = delete;
  IsolatedReward& operator=(const IsolatedReward&) = delete;

  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override;

  RewardCounters counters() const;
  // Process ids of the live workers (tests check killing, replacing and reaping).
  std::vector<int> WorkerPidsForTest() const;

 private:
  struct Worker;
  explicit IsolatedReward(IsolatedRewardOptions options, std::string worker_path);
  void ScoreOne(Worker& worker, const RewardInput& input, RewardOutput& out) const;
  absl::Status StartWorker(Worker& worker) const;

  const IsolatedRewardOptions options_;
  const std::string worker_path_;
  const std::string name_ = "plugin";
  mutable std::mutex score_mu_;  // one Score() at a time owns the pool
  mutable std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::atomic<int64_t> calls_{0}, timeouts_{0}, crashes_{0}, errors_{0};
};

// Registers the "plugin" factory (called from RegisterBuiltinRewards).
absl::Status RegisterPluginReward(RewardRegistry* registry);

}  // namespace grpo
