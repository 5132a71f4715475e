// The reward service's bounded work queue: gRPC handlers hand Score requests to it and return at
// once; a few worker threads run them through the RewardScorer. When `max_queued` requests are
// already waiting, Submit answers RESOURCE_EXHAUSTED immediately, so an overloaded server (a
// reward model scoring slower than clients send) sheds load with a status the client can back
// off on, instead of stalling every caller behind an unbounded backlog.
//
// Plain logic with no gRPC types beyond the proto messages: tests drive it directly, and
// RewardServiceImpl (reward/reward_service.h) is a thin callback service over it.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "proto/reward.pb.h"

namespace grpo {

class RewardScorer;

struct ScoreQueueOptions {
  // Requests waiting for a worker (not counting those running). 0: no waiting room, a request is
  // accepted only when a worker is idle.
  int max_queued = 64;
  // Requests scored at the same time. A reward model serializes its forwards anyway; more
  // workers help rule-based and remote rewards.
  int num_workers = 2;

  absl::Status Validate() const;
};

class ScoreQueue {
 public:
  // Called once per accepted request, on a worker thread, after *response is filled (or with the
  // error that stopped it).
  using Done = std::function<void(absl::Status)>;
  // Checked when a worker picks the request up: true skips scoring (CANCELLED).
  using Cancelled = std::function<bool()>;

  // `scorer` must outlive the queue. Starts the workers. Options must be valid (CHECKed).
  ScoreQueue(const RewardScorer* scorer, ScoreQueueOptions options);
  // Stops accepting, answers waiting requests UNAVAILABLE, lets running ones finish, joins.
  ~ScoreQueue();
  ScoreQueue(const ScoreQueue&) = delete;
  ScoreQueue& operator=(const ScoreQueue&) = delete;

  // Accepts the request (request and response must stay valid until `done` runs) and returns
  // OK, or returns RESOURCE_EXHAUSTED (queue full) / UNAVAILABLE (shutting down) at once without
  // ever calling `done`.
  absl::Status Submit(const ScoreRequest* request, ScoreResponse* response, Done done,
                      Cancelled cancelled = nullptr);

  int num_waiting() const;
  int num_running() const;
  int64_t num_rejected() const;  // RESOURCE_EXHAUSTED answers so far

 private:
  struct Job {
    const ScoreRequest* request;
    ScoreResponse* response;
    Done done;
    Cancelled cancelled;
  };
  void WorkerLoop();

  const RewardScorer* const scorer_;
  const ScoreQueueOptions options_;
  mutable absl::Mutex mu_;
  std::deque<Job> waiting_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace grpo
