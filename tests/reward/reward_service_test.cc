// Tests for reward/reward_service.h: the RewardService served in-process on 127.0.0.1 (a free
// port), called through a real gRPC client and through the "remote" reward function. Checks that
// results equal RewardSet::Score, concurrent clients, per-item errors, Health, a dead server, and
// plugins that hang or crash behind the service (tests/reward/plugins/faulty_plugin.c).
#include "reward/reward_service.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace grpo {
namespace {

using Clock = std::chrono::steady_clock;

long ElapsedMs(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// exact_match on data_source "qa" plus a lenient-format term on every item.
const nlohmann::json kConfig = nlohmann::json::parse(R"({
  "rewards": [
    {"name": "exact_match", "weight": 1.0, "params": {"extract": "answer_tag"}, "data_sources": ["qa"]},
    {"name": "format", "weight": 0.5, "params": {"mode": "lenient"}}
  ],
  "failure_score": -1.0
})");

nlohmann::json PluginConfig() {
  return {
      {"rewards",
       {{{"name", "plugin"},
         {"key", "faulty"},
         {"params", {{"path", GRPO_FAULTY_PLUGIN}, {"deadline_ms", 300}, {"num_workers", 1}}}}}},
      {"failure_score", -1.0}};
}

// A RewardService on 127.0.0.1:<free port> and a client stub for it.
struct TestServer {
  explicit TestServer(const nlohmann::json& config, int max_batch_size = 64) {
    auto s = RewardScorer::FromConfigJson(config, max_batch_size);
    INFO(s.status().ToString());
    REQUIRE(s.ok());
    scorer = std::move(*s);
    service = std::make_unique<RewardServiceImpl>(scorer.get());
    auto started = StartRewardServer(service.get(), "127.0.0.1", 0, &port);
    INFO(started.status().ToString());
    REQUIRE(started.ok());
    server = std::move(*started);
    address = "127.0.0.1:" + std::to_string(port);
    stub = RewardService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  ~TestServer() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }

  grpc::Status Score(const ScoreRequest& req, ScoreResponse* resp, int deadline_ms = 10000) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    return stub->Score(&ctx, req, resp);
  }

  std::unique_ptr<RewardScorer> scorer;
  std::unique_ptr<RewardServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<RewardService::Stub> stub;
  int port = 0;
  std::string address;
};

RewardItem Item(const std::string& completion, const std::string& truth_json,
                const std::string& data_source = "qa") {
  RewardItem item;
  item.set_prompt("Q?");
  item.set_completion(completion);
  item.set_ground_truth_json(truth_json);
  item.set_data_source(data_source);
  return item;
}

// A batch whose scores differ item to item (depends on `seed`).
ScoreRequest Batch(int seed, int n) {
  ScoreRequest req;
  for (int i = 0; i < n; ++i) {
    const int answer = seed * 100 + i;
    const bool right = (i + seed) % 3 == 0;
    const bool formatted = (i + seed) % 2 == 0;
    std::string text = "<answer>" + std::to_string(right ? answer : answer + 1) + "</answer>";
    if (formatted) text = "<think>hm</think>" + text;
    *req.add_items() =
        Item(text, "\"" + std::to_string(answer) + "\"", i % 4 == 3 ? "other" : "qa");
  }
  return req;
}

std::vector<RewardOutput> Direct(const RewardScorer& scorer, const ScoreRequest& req) {
  std::vector<RewardInput> inputs;
  for (const RewardItem& item : req.items()) {
    auto in = RewardScorer::ToRewardInput(item);
    REQUIRE(in.ok());
    inputs.push_back(std::move(*in));
  }
  return scorer.set().Score(inputs);
}

void RequireSame(const ScoreResponse& resp, const std::vector<RewardOutput>& want) {
  REQUIRE(resp.results_size() == static_cast<int>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    const RewardResult& got = resp.results(static_cast<int>(i));
    INFO("item " << i << " error " << got.error());
    CHECK(got.score() == want[i].score);  // exact: same code, same inputs
    CHECK(got.error() == want[i].error);
    CHECK(got.components().size() == want[i].components.size());
    for (const auto& [name, value] : want[i].components) {
      REQUIRE(got.components().count(name) == 1);
      CHECK(got.components().at(name) == value);
    }
  }
}

TEST_CASE("service scores equal RewardSet::Score", "[service]") {
  TestServer ts(kConfig);
  const ScoreRequest req = Batch(1, 12);
  ScoreResponse resp;
  const grpc::Status st = ts.Score(req, &resp);
  INFO(st.error_message());
  REQUIRE(st.ok());
  const std::vector<RewardOutput> want = Direct(*ts.scorer, req);
  RequireSame(resp, want);
  // The batch is not trivial: some right, some wrong, some formatted.
  int num_right = 0;
  for (const RewardOutput& o : want)
    num_right += o.components.count("exact_match") && o.components.at("exact_match") == 1.0;
  CHECK(num_right > 0);
  CHECK(num_right < 9);
  CHECK(resp.counters_size() == 0);  // no plugin rewards
}

TEST_CASE("service handles 8 concurrent clients", "[service]") {
  TestServer ts(kConfig);
  constexpr int kNumThreads = 8, kNumCalls = 10;
  std::vector<int> failures(kNumThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kNumThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < kNumCalls; ++c) {
        const ScoreRequest req = Batch(t * kNumCalls + c, 5 + t);
        ScoreResponse resp;
        if (!ts.Score(req, &resp).ok() || resp.results_size() != req.items_size()) {
          ++failures[t];
          continue;
        }
        // Each item's expected score from its own text: 1 if right (qa only) + 0.5 if formatted.
        for (int i = 0; i < req.items_size(); ++i) {
          const int seed = t * kNumCalls + c;
          const bool qa = i % 4 != 3, right = (i + seed) % 3 == 0, formatted = (i + seed) % 2 == 0;
          const double want = (qa && right ? 1.0 : 0.0) + (formatted ? 0.5 : 0.0);
          if (resp.results(i).score() != want || !resp.results(i).error().empty()) ++failures[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kNumThreads; ++t) CHECK(failures[t] == 0);
}

TEST_CASE("service gives malformed items their own error", "[service]") {
  TestServer ts(kConfig);
  ScoreRequest req;
  *req.add_items() = Item("<answer>7</answer>", "\"7\"");
  *req.add_items() = Item("<answer>7</answer>", "{not json");
  RewardItem bad_extra = Item("<answer>7</answer>", "\"7\"");
  bad_extra.set_extra_json("[1,");
  *req.add_items() = bad_extra;
  *req.add_items() = Item("<answer>8</answer>", "\"8\"");
  ScoreResponse resp;
  REQUIRE(ts.Score(req, &resp).ok());
  REQUIRE(resp.results_size() == 4);
  CHECK(resp.results(0).error().empty());
  CHECK(resp.results(0).score() == 1.0);
  CHECK(resp.results(1).error().find("ground_truth_json") != std::string::npos);
  CHECK(resp.results(1).score() == -1.0);
  CHECK(resp.results(2).error().find("extra_json") != std::string::npos);
  CHECK(resp.results(2).score() == -1.0);
  CHECK(resp.results(3).error().empty());
  CHECK(resp.results(3).score() == 1.0);
}

TEST_CASE("scorer rejects invalid UTF-8 per item", "[service]") {
  auto scorer = RewardScorer::FromConfigJson(kConfig);
  REQUIRE(scorer.ok());
  ScoreRequest req;
  *req.add_items() = Item("<answer>\xff</answer>", "\"7\"");
  *req.add_items() = Item("<answer>7</answer>", "\"7\"");
  ScoreResponse resp;
  REQUIRE((*scorer)->Score(req, &resp).ok());
  REQUIRE(resp.results_size() == 2);
  CHECK(resp.results(0).error().find("invalid UTF-8") != std::string::npos);
  CHECK(resp.results(1).score() == 1.0);
  CHECK(IsValidUtf8("h\xc3\xa9llo"));
  CHECK_FALSE(IsValidUtf8("\xc0\xaf"));      // overlong
  CHECK_FALSE(IsValidUtf8("\xed\xa0\x80"));  // surrogate
  CHECK_FALSE(IsValidUtf8("\xe2\x82"));      // truncated
}

TEST_CASE("service rejects a batch over its maximum", "[service]") {
  TestServer ts(kConfig, /*max_batch_size=*/4);
  ScoreResponse resp;
  const grpc::Status st = ts.Score(Batch(0, 5), &resp);
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(st.error_message().find("maximum of 4") != std::string::npos);
  CHECK(ts.Score(Batch(0, 4), &resp).ok());
}

TEST_CASE("service Health lists the rewards", "[service]") {
  TestServer ts(kConfig);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  HealthResponse resp;
  REQUIRE(ts.stub->Health(&ctx, HealthRequest(), &resp).ok());
  REQUIRE(resp.rewards_size() == 2);
  CHECK(resp.rewards(0) == "exact_match");
  CHECK(resp.rewards(1) == "format");
}

TEST_CASE("remote reward scores through the service", "[service]") {
  TestServer ts(kConfig);
  auto fn = RewardRegistry::Global().Create(
      "remote", {{"address", ts.address}, {"deadline_ms", 5000}, {"failure_score", -2}});
  INFO(fn.status().ToString());
  REQUIRE(fn.ok());
  const ScoreRequest req = Batch(2, 9);
  std::vector<RewardInput> inputs;
  for (const RewardItem& item : req.items()) inputs.push_back(*RewardScorer::ToRewardInput(item));
  RewardInput bad_utf8 = inputs[0];
  bad_utf8.completion = "\xff";
  inputs.push_back(bad_utf8);
  const std::vector<RewardOutput> got = (*fn)->Score(inputs);
  const std::vector<RewardOutput> want = ts.scorer->set().Score(inputs);
  REQUIRE(got.size() == inputs.size());
  for (size_t i = 0; i + 1 < inputs.size(); ++i) {
    INFO("item " << i << " error " << got[i].error);
    CHECK(got[i].score == want[i].score);
    CHECK(got[i].error == want[i].error);
    CHECK(got[i].components == want[i].components);
  }
  CHECK(got.back().error.find("invalid UTF-8") != std::string::npos);
  CHECK(got.back().score == -2.0);
  // Params are checked.
  CHECK_FALSE(RewardRegistry::Global().Create("remote", {{"adress", "x"}}).ok());
  CHECK_FALSE(RewardRegistry::Global().Create("remote", nlohmann::json::object()).ok());
}

TEST_CASE("remote reward against a dead port fails every item within its deadline", "[service]") {
  int dead_port = 0;
  {
    TestServer ts(kConfig);  // bind a free port, then stop serving on it
    dead_port = ts.port;
  }
  auto fn = RewardRegistry::Global().Create("remote",
                                            {{"address", "127.0.0.1:" + std::to_string(dead_port)},
                                             {"deadline_ms", 500},
                                             {"failure_score", -3}});
  REQUIRE(fn.ok());
  std::vector<RewardInput> inputs(3);
  for (auto& in : inputs) in.completion = "x";
  const auto start = Clock::now();
  const std::vector<RewardOutput> got = (*fn)->Score(inputs);
  CHECK(ElapsedMs(start) < 3000);
  REQUIRE(got.size() == 3);
  for (const RewardOutput& o : got) {
    INFO(o.error);
    CHECK(o.score == -3.0);
    CHECK(o.error.rfind("remote reward 127.0.0.1:" + std::to_string(dead_port) + ": ", 0) == 0);
  }
}

TEST_CASE("service survives a hanging and a crashing plugin", "[service]") {
  TestServer ts(PluginConfig());
  ScoreRequest req;
  *req.add_items() = Item("hang", "");
  *req.add_items() = Item("fine", "");
  ScoreResponse resp;
  auto start = Clock::now();
  REQUIRE(ts.Score(req, &resp).ok());
  const long ms = ElapsedMs(start);
  CHECK(ms >= 250);  // waited for the 300 ms deadline
  CHECK(ms < 5000);
  REQUIRE(resp.results_size() == 2);
  INFO(resp.results(0).error());
  CHECK(resp.results(0).error().find("timeout") != std::string::npos);
  CHECK(resp.results(0).score() == -1.0);
  CHECK(resp.results(1).error().empty());
  CHECK(resp.results(1).score() == 1.0);
  REQUIRE(resp.counters_size() == 1);
  CHECK(resp.counters(0).name() == "faulty");
  CHECK(resp.counters(0).calls() == 2);
  CHECK(resp.counters(0).timeouts() == 1);
  CHECK(resp.counters(0).crashes() == 0);

  // The service still answers; then a segfaulting item.
  req.Clear();
  *req.add_items() = Item("segv", "");
  *req.add_items() = Item("fine", "");
  REQUIRE(ts.Score(req, &resp).ok());
  REQUIRE(resp.results_size() == 2);
  INFO(resp.results(0).error());
  CHECK(resp.results(0).error().find("crash") != std::string::npos);
  CHECK(resp.results(1).score() == 1.0);
  REQUIRE(resp.counters_size() == 1);
  CHECK(resp.counters(0).calls() == 4);
  CHECK(resp.counters(0).timeouts() == 1);
  CHECK(resp.counters(0).crashes() == 1);

  req.Clear();
  *req.add_items() = Item("fine", "");
  REQUIRE(ts.Score(req, &resp).ok());
  CHECK(resp.results(0).score() == 1.0);
}

}  // namespace
}  // namespace grpo
