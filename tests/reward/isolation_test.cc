// Tests for IsolatedReward (reward/isolation.h): plugins scored in killable worker processes.
// Uses the in-tree example plugin and test plugins that hang, crash or lie
// (tests/reward/plugins/). Deadlines are small (200 ms); elapsed times are checked loosely.
#include "reward/isolation.h"

#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

#include "reward/reward.h"

namespace grpo {
namespace {

using Clock = std::chrono::steady_clock;

IsolatedRewardOptions Options(const char* path, int num_workers = 2, int deadline_ms = 200) {
  IsolatedRewardOptions o;
  o.plugin_path = path;
  o.num_workers = num_workers;
  o.deadline_ms = deadline_ms;
  o.failure_score = -1.0;
  return o;
}

std::unique_ptr<IsolatedReward> Make(IsolatedRewardOptions options) {
  auto fn = IsolatedReward::Create(std::move(options));
  INFO(fn.status().ToString());
  REQUIRE(fn.ok());
  return std::move(*fn);
}

RewardInput Item(std::string completion, nlohmann::json truth = nullptr) {
  RewardInput in;
  in.prompt = "Q?";
  in.completion = std::move(completion);
  in.ground_truth = std::move(truth);
  in.data_source = "test";
  return in;
}

// True when `pid` is no child of ours any more: it was reaped (no zombie left behind).
bool Reaped(int pid) {
  int status;
  return waitpid(pid, &status, WNOHANG) == -1 && errno == ECHILD;
}

long ElapsedMs(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

TEST_CASE("example plugin scores a batch across the worker pool", "[isolation]") {
  auto fn = Make(Options(GRPO_EXAMPLE_PLUGIN, /*num_workers=*/4));
  std::vector<RewardInput> batch;
  for (int i = 0; i < 50; ++i) {
    // Even items contain their ground truth (with escapes and non-ASCII on the way), odd don't.
    std::string truth = "ans\"wer-é-" + std::to_string(i);
    batch.push_back(Item(i % 2 == 0 ? "so the result is " + truth + "." : "no idea", truth));
  }
  batch.push_back(Item("x = 42", 42));  // numeric ground truth
  batch.push_back(Item("x = 43", 42));
  batch.push_back(Item("anything"));  // no ground truth: a per-item error
  auto out = fn->Score(batch);
  REQUIRE(out.size() == batch.size());
  for (int i = 0; i < 50; ++i) {
    INFO("item " << i << " error: " << out[i].error);
    CHECK(out[i].error.empty());
    CHECK(out[i].score == (i % 2 == 0 ? 1.0 : 0.0));
    CHECK(out[i].components.at("contains") == (i % 2 == 0 ? 1.0 : 0.0));
  }
  CHECK(out[50].score == 1.0);
  CHECK(out[51].score == 0.0);
  CHECK(out[52].score == -1.0);
  CHECK(out[52].error.find("ground_truth") != std::string::npos);
  CHECK(out[52].components.at("isolation/error") == 1.0);
  RewardCounters c = fn->counters();
  CHECK(c.calls == 53);
  CHECK(c.errors == 1);
  CHECK(c.timeouts == 0);
  CHECK(c.crashes == 0);
  CHECK(fn->WorkerPidsForTest().size() == 4);
}

TEST_CASE("plugin factory in the registry passes params through", "[isolation]") {
  nlohmann::json params = {{"path", GRPO_EXAMPLE_PLUGIN},
                           {"deadline_ms", 500},
                           {"num_workers", 1},
                           {"params", {{"score_if_found", 2.5}}}};
  auto fn = RewardRegistry::Global().Create("plugin", params);
  INFO(fn.status().ToString());
  REQUIRE(fn.ok());
  CHECK((*fn)->name() == "plugin");
  std::vector<RewardInput> batch = {Item("it is 7", "7"), Item("it is 8", "7")};
  auto out = (*fn)->Score(batch);
  CHECK(out[0].score == 2.5);
  CHECK(out[0].info == "ground truth found");
  CHECK(out[1].score == 0.0);

  auto bad =
      RewardRegistry::Global().Create("plugin", {{"path", GRPO_EXAMPLE_PLUGIN}, {"deadlin_ms", 5}});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("unknown field \"deadlin_ms\"") != std::string::npos);
  auto no_path = RewardRegistry::Global().Create("plugin", {{"deadline_ms", 5}});
  REQUIRE_FALSE(no_path.ok());
  CHECK(no_path.status().message().find("\"path\"") != std::string::npos);
}

TEST_CASE("a hanging item meets its deadline and its worker is replaced", "[isolation]") {
  auto fn = Make(Options(GRPO_FAULTY_PLUGIN, /*num_workers=*/2, /*deadline_ms=*/200));
  std::vector<int> before = fn->WorkerPidsForTest();
  REQUIRE(before.size() == 2);
  std::vector<RewardInput> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(Item(i == 3 || i == 7 ? "hang" : "ok"));
  auto start = Clock::now();
  auto out = fn->Score(batch);
  long elapsed = ElapsedMs(start);
  INFO("elapsed " << elapsed << " ms");
  CHECK(elapsed >= 200);
  CHECK(elapsed < 1000);  // two hangs, two workers: about one deadline, not two in a row
  for (int i = 0; i < 10; ++i) {
    INFO("item " << i);
    if (i == 3 || i == 7) {
      CHECK(out[i].error == "timeout after 200 ms");
      CHECK(out[i].score == -1.0);
      CHECK(out[i].components.at("isolation/timeout") == 1.0);
    } else {
      CHECK(out[i].error.empty());
      CHECK(out[i].score == 1.0);
    }
  }
  RewardCounters c = fn->counters();
  CHECK(c.calls == 10);
  CHECK(c.timeouts == 2);
  CHECK(c.crashes == 0);
  CHECK(c.errors == 0);
  // The hung workers were killed and reaped, not left as zombies.
  int num_reaped = 0;
  for (int pid : before) num_reaped += Reaped(pid) ? 1 : 0;
  CHECK(num_reaped >= 1);
  CHECK(fn->WorkerPidsForTest().size() == 2);  // already replaced

  // Later calls still answer, on replacement workers.
  out = fn->Score(std::vector<RewardInput>{Item("ok"), Item("ok"), Item("ok")});
  for (const auto& o : out) CHECK(o.score == 1.0);
  std::vector<int> after = fn->WorkerPidsForTest();
  CHECK(after.size() == 2);
  CHECK(after != before);
  CHECK(fn->counters().timeouts == 2);
}

TEST_CASE("a crashing worker fails only its item and is replaced", "[isolation]") {
  auto fn = Make(Options(GRPO_FAULTY_PLUGIN, /*num_workers=*/1, /*deadline_ms=*/2000));
  std::vector<RewardInput> batch = {Item("ok"), Item("segv"), Item("ok"), Item("exit"), Item("ok")};
  auto out = fn->Score(batch);
  CHECK(out[0].score == 1.0);
  CHECK(out[1].error == "worker crashed (signal 11)");
  CHECK(out[1].score == -1.0);
  CHECK(out[1].components.at("isolation/crash") == 1.0);
  CHECK(out[2].score == 1.0);
  CHECK(out[2].error.empty());
  CHECK(out[3].error == "worker exited (code 3)");
  CHECK(out[4].score == 1.0);
  RewardCounters c = fn->counters();
  CHECK(c.crashes == 2);
  CHECK(c.timeouts == 0);
  CHECK(c.errors == 0);
  out = fn->Score(std::vector<RewardInput>{Item("ok")});
  CHECK(out[0].score == 1.0);
}

TEST_CASE("garbage and error responses are clear per-item errors", "[isolation]") {
  IsolatedRewardOptions o = Options(GRPO_FAULTY_PLUGIN, 2, 2000);
  o.params = {{"bonus", 0.5}};
  auto fn = Make(o);
  std::vector<RewardInput> batch = {Item("garbage"), Item("noscore"), Item("fail"),
                                    Item("liar"),    Item("big"),     Item("abc")};
  auto out = fn->Score(batch);
  CHECK(out[0].error.rfind("plugin returned invalid JSON: }{ not json", 0) == 0);
  CHECK(out[1].error.find("no numeric \"score\"") != std::string::npos);
  CHECK(out[2].error == "plugin error (code 1): fail requested");
  CHECK(out[3].error.find("out_len") != std::string::npos);
  for (int i = 0; i < 4; ++i) {
    CHECK(out[i].score == -1.0);
    CHECK(out[i].components.at("isolation/error") == 1.0);
  }
  CHECK(out[4].error.empty());  // over 64 KiB: the plugin asked for a bigger buffer
  CHECK(out[4].score == 7.0);
  CHECK(out[4].info.size() == 100000);
  CHECK(out[5].score == 1.5);  // params reach the plugin
  CHECK(out[5].components.at("len") == 3.0);
  RewardCounters c = fn->counters();
  CHECK(c.errors == 4);
  CHECK(c.crashes == 0);
  CHECK(fn->WorkerPidsForTest().size() == 2);  // errors do not cost a worker
}

TEST_CASE("plugins that cannot be loaded fail at creation with a clear error", "[isolation]") {
  auto missing = IsolatedReward::Create(Options("/nonexistent/dir/plugin.so"));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK(missing.status().message().find("/nonexistent/dir/plugin.so") != std::string::npos);

  auto no_symbol = IsolatedReward::Create(Options(GRPO_NOSYMBOL_PLUGIN));
  REQUIRE_FALSE(no_symbol.ok());
  CHECK(no_symbol.status().message().find("does not export grpo_reward_score") !=
        std::string::npos);

  auto bad_abi = IsolatedReward::Create(Options(GRPO_BADABI_PLUGIN));
  REQUIRE_FALSE(bad_abi.ok());
  CHECK(bad_abi.status().message().find("ABI version 99") != std::string::npos);

  // A file that exists but is no shared library: dlopen's own message comes through.
  auto not_so = IsolatedReward::Create(Options(GRPO_SOURCE_DIR "/reward/plugin_abi.h"));
  REQUIRE_FALSE(not_so.ok());
  CHECK(not_so.status().message().find("cannot load plugin") != std::string::npos);

  IsolatedRewardOptions o = Options(GRPO_EXAMPLE_PLUGIN);
  o.worker_path = "/nonexistent/grpo_reward_worker";
  auto no_worker = IsolatedReward::Create(o);
  REQUIRE_FALSE(no_worker.ok());
  CHECK(no_worker.status().message().find("/nonexistent/grpo_reward_worker") != std::string::npos);
}

TEST_CASE("destruction kills and reaps every worker", "[isolation]") {
  std::vector<int> pids;
  {
    auto fn = Make(Options(GRPO_FAULTY_PLUGIN, /*num_workers=*/3, /*deadline_ms=*/200));
    fn->Score(std::vector<RewardInput>(6, Item("ok")));
    pids = fn->WorkerPidsForTest();
    REQUIRE(pids.size() == 3);
    for (int pid : pids) CHECK_FALSE(Reaped(pid));  // alive and ours before destruction
  }
  for (int pid : pids) {
    INFO("pid " << pid);
    CHECK(Reaped(pid));
  }
}

}  // namespace
}  // namespace grpo
