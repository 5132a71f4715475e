// Tests for reward/score_queue.h and the reward service's overload behaviour: a full queue answers
// RESOURCE_EXHAUSTED at once (directly and over gRPC), accepted requests all complete, and
// shutdown answers waiting requests UNAVAILABLE. A test reward blocks on a gate the test opens,
// so "full" is a state the test builds, not a race it hopes to win.
#include "reward/score_queue.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "reward/reward_service.h"

namespace grpo {
namespace {

// Counts entries and holds every Score() call until opened.
struct Gate {
  absl::Mutex mu;
  int entered ABSL_GUARDED_BY(mu) = 0;
  bool open ABSL_GUARDED_BY(mu) = false;

  void Open() {
    absl::MutexLock lock(&mu);
    open = true;
  }
  void AwaitEntered(int n) {
    absl::MutexLock lock(&mu);
    target = n;
    mu.Await(absl::Condition(this, &Gate::Reached));
  }
  bool Reached() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return entered >= target; }
  int target ABSL_GUARDED_BY(mu) = 0;
};

class GatedReward : public RewardFunction {
 public:
  explicit GatedReward(Gate* gate) : gate_(gate) {}
  const std::string& name() const override { return name_; }
  std::vector<RewardOutput> Score(absl::Span<const RewardInput> batch) const override {
    absl::MutexLock lock(&gate_->mu);
    ++gate_->entered;
    gate_->mu.Await(absl::Condition(&gate_->open));
    std::vector<RewardOutput> out(batch.size());
    for (auto& o : out) o.score = 1.0;
    return out;
  }

 private:
  Gate* gate_;
  std::string name_ = "gated";
};

std::unique_ptr<RewardScorer> GatedScorer(Gate* gate) {
  RewardRegistry registry;
  REQUIRE(registry
              .Register(
                  "gated",
                  [gate](const nlohmann::json&) -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
                    return std::make_unique<GatedReward>(gate);
                  })
              .ok());
  auto config = RewardSetConfig::FromJson({{"rewards", {{{"name", "gated"}}}}});
  REQUIRE(config.ok());
  auto set = RewardSet::Create(*config, registry);
  REQUIRE(set.ok());
  return std::make_unique<RewardScorer>(std::move(*set));
}

ScoreRequest OneItem() {
  ScoreRequest r;
  r.add_items()->set_completion("x");
  return r;
}

struct Call {
  ScoreRequest request = OneItem();
  ScoreResponse response;
  absl::Notification done;
  absl::Status status;
  ScoreQueue::Done Callback() {
    return [this](absl::Status s) {
      status = s;
      done.Notify();
    };
  }
};

TEST_CASE("score queue: a full queue answers RESOURCE_EXHAUSTED at once", "[score_queue]") {
  Gate gate;
  auto scorer = GatedScorer(&gate);
  ScoreQueue queue(scorer.get(), {/*max_queued=*/1, /*num_workers=*/1});
  Call a, b, c;
  REQUIRE(queue.Submit(&a.request, &a.response, a.Callback()).ok());
  gate.AwaitEntered(1);                                               // a holds the only worker
  REQUIRE(queue.Submit(&b.request, &b.response, b.Callback()).ok());  // b waits
  CHECK(queue.num_waiting() == 1);
  CHECK(queue.num_running() == 1);
  const absl::Status full = queue.Submit(&c.request, &c.response, c.Callback());
  CHECK(full.code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(full.message()).find("queue size 1") != std::string::npos);
  CHECK(queue.num_rejected() == 1);
  gate.Open();
  a.done.WaitForNotification();
  b.done.WaitForNotification();
  CHECK(a.status.ok());
  CHECK(b.status.ok());
  REQUIRE(b.response.results_size() == 1);
  CHECK(b.response.results(0).score() == 1.0);
  CHECK_FALSE(c.done.HasBeenNotified());  // a rejected request never calls back
  // Drained: accepted again.
  Call d;
  REQUIRE(queue.Submit(&d.request, &d.response, d.Callback()).ok());
  d.done.WaitForNotification();
  CHECK(d.status.ok());
}

TEST_CASE("score queue: shutdown answers waiting requests UNAVAILABLE", "[score_queue]") {
  Gate gate;
  auto scorer = GatedScorer(&gate);
  auto queue = std::make_unique<ScoreQueue>(scorer.get(), ScoreQueueOptions{4, 1});
  Call a, b;
  REQUIRE(queue->Submit(&a.request, &a.response, a.Callback()).ok());
  gate.AwaitEntered(1);
  REQUIRE(queue->Submit(&b.request, &b.response, b.Callback()).ok());
  std::thread stopper([&] { queue.reset(); });
  b.done.WaitForNotification();  // answered by the destructor while a still runs
  CHECK(b.status.code() == absl::StatusCode::kUnavailable);
  gate.Open();
  stopper.join();
  CHECK(a.status.ok());
}

TEST_CASE("score queue: bad options", "[score_queue]") {
  CHECK_FALSE((ScoreQueueOptions{-1, 1}).Validate().ok());
  CHECK_FALSE((ScoreQueueOptions{1, 0}).Validate().ok());
  CHECK((ScoreQueueOptions{0, 1}).Validate().ok());
}

TEST_CASE("reward service: overload over gRPC is RESOURCE_EXHAUSTED, not a stall",
          "[score_queue][service]") {
  Gate gate;
  auto scorer = GatedScorer(&gate);
  RewardServiceImpl service(scorer.get(), {/*max_queued=*/0, /*num_workers=*/1});
  int port = 0;
  auto server = StartRewardServer(&service, "127.0.0.1", 0, &port);
  REQUIRE(server.ok());
  auto stub = RewardService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto call = [&](ScoreResponse* response) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub->Score(&ctx, OneItem(), response);
  };
  grpc::Status first_status;
  ScoreResponse first;
  std::thread busy([&] { first_status = call(&first); });
  gate.AwaitEntered(1);
  ScoreResponse second;
  const grpc::Status overloaded = call(&second);
  CHECK(overloaded.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(overloaded.error_message().find("overloaded") != std::string::npos);
  gate.Open();
  busy.join();
  CHECK(first_status.ok());
  CHECK(first.results_size() == 1);
  CHECK(call(&second).ok());
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace grpo
