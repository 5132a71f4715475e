// ScoreQueue: bounded admission and worker threads for the reward service (reward/score_queue.h).
#include "reward/score_queue.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "reward/reward_service.h"

namespace grpo {

absl::Status ScoreQueueOptions::Validate() const {
  if (max_queued < 0) return absl::InvalidArgumentError("queue size must be >= 0");
  if (num_workers < 1 || num_workers > 256) {
    return absl::InvalidArgumentError("number of workers must be in [1, 256]");
  }
  return absl::OkStatus();
}

ScoreQueue::ScoreQueue(const RewardScorer* scorer, ScoreQueueOptions options)
    : scorer_(scorer), options_(options) {
  GRPO_CHECK(scorer_ != nullptr);
  GRPO_CHECK(options_.Validate().ok());
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ScoreQueue::~ScoreQueue() {
  std::deque<Job> dropped;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    dropped.swap(waiting_);
  }
  for (Job& job : dropped) job.done(absl::UnavailableError("reward service is shutting down"));
  for (std::thread& t : workers_) t.join();
}

absl::Status ScoreQueue::Submit(const ScoreRequest* request, ScoreResponse* response, Done done,
                                Cancelled cancelled) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("reward service is shutting down");
  // Room: an idle worker, or a free place in the waiting line. Counted from running_ and the
  // line's length alone, so the answer does not depend on how fast workers wake up.
  const int waiting = static_cast<int>(waiting_.size());
  if (waiting + 1 > options_.max_queued + options_.num_workers - running_) {
    ++rejected_;
    return absl::ResourceExhaustedError(absl::StrCat(
        "reward service overloaded: ", running_, " requests scoring and ", waiting_.size(),
        " waiting (queue size ", options_.max_queued, "); retry later"));
  }
  waiting_.push_back({request, response, std::move(done), std::move(cancelled)});
  return absl::OkStatus();
}

void ScoreQueue::WorkerLoop() {
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ScoreQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) {
            return q->stopping_ || !q->waiting_.empty();
          },
          this));
      if (waiting_.empty()) return;  // stopping, nothing left
      job = std::move(waiting_.front());
      waiting_.pop_front();
      ++running_;
    }
    absl::Status status = job.cancelled && job.cancelled()
                              ? absl::CancelledError("request cancelled while queued")
                              : scorer_->Score(*job.request, job.response);
    {
      absl::MutexLock lock(&mu_);
      --running_;
    }
    job.done(std::move(status));
  }
}

int ScoreQueue::num_waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

int ScoreQueue::num_running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

int64_t ScoreQueue::num_rejected() const {
  absl::MutexLock lock(&mu_);
  return rejected_;
}

}  // namespace grpo
