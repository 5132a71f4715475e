// The learner's weight publisher (learner/weight_sync.h): the weight_sync config section, the
// collective path to in-process workers over a LocalGroup (completions carry the new version and
// their logprobs equal the learner's), the collective path to remote workers with its gRPC
// control plane (JoinWeightGroup / BeginWeightUpdate / EndWeightUpdate) over loopback, a worker
// that joins mid-run, and the whole learner loop on the collective transport.
#include "learner/weight_sync.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>

#include "absl/synchronization/mutex.h"
#include "comm/nccl_communicator.h"
#include "learner/config.h"
#include "learner/trainer.h"
#include "rollout/rollout_service.h"
#include "rollout/weights.h"
#include "tests/learner/learner_fixture.h"
#include "tests/rollout/rollout_test_util.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<LocalRolloutWorker> MakeLocalWorker(const Model<float>& model,
                                                    const std::string& name) {
  auto w = LocalRolloutWorker::Create(model, name, int64_t{4} << 20);
  REQUIRE(w.ok());
  return std::move(*w);
}

// The learner's logprobs (batch-invariant forward) of a completion.
std::vector<float> LearnerLogprobs(Model<float>& model, const std::vector<int32_t>& prompt,
                                   const std::vector<int32_t>& completion) {
  TokenBatch batch;
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), completion.begin(), completion.end());
  batch.Add(seq);
  ForwardOptions fo;
  fo.temperature = 1.0f;
  ForwardResult<float> r;
  model.set_batch_invariant(true);
  REQUIRE(model.Forward(batch, fo, &r).ok());
  model.set_batch_invariant(false);
  return std::vector<float>(r.logprobs.begin() + prompt.size() - 1, r.logprobs.end() - 1);
}

SamplingParams Sampling() {
  SamplingParams sp;
  sp.group_size = 3;
  sp.temperature = 1.0f;
  sp.max_new_tokens = 6;
  sp.seed = 21;
  sp.deterministic = true;
  return sp;
}

// Completions of `w` for `prompts` all carry `version`, and their logprobs equal the learner's.
void CheckServes(RolloutWorker* w, Model<float>& learner, const std::vector<RolloutPrompt>& prompts,
                 uint64_t version) {
  std::vector<GroupResult> out;
  REQUIRE(w->Generate(prompts, Sampling(), &out).ok());
  REQUIRE(out.size() == prompts.size());
  for (const GroupResult& g : out) {
    const RolloutPrompt& p = prompts[g.prompt_id];
    for (const Completion& c : g.completions) {
      CHECK(c.weight_version == version);
      const std::vector<float> want = LearnerLogprobs(learner, p.token_ids, c.token_ids);
      REQUIRE(want.size() == c.logprobs.size());
      CHECK(std::memcmp(want.data(), c.logprobs.data(), want.size() * sizeof(float)) == 0);
    }
  }
}

void Perturb(Model<float>* m, float delta) {
  for (int64_t i = 0; i < m->num_params(); i += 3) m->params()[i] += delta;
}

std::vector<RolloutPrompt> Prompts(int64_t vocab) {
  return {{0, testing::RandomTokens(4, vocab, 1)}, {1, testing::RandomTokens(6, vocab, 2)}};
}

TEST_CASE("weight_sync config: unknown values are one error naming the key",
          "[learner][weight_sync]") {
  nlohmann::json j =
      testing::MakeLearnerFixture((fs::temp_directory_path() / "grpo_weight_sync_config").string());
  auto parse = [&](const std::string& key, nlohmann::json value) {
    nlohmann::json k = j;
    k["weight_sync"][key] = value;
    return ParseLearnerConfig(k, "run.json");
  };
  auto ok = parse("transport", "collective");
  REQUIRE(ok.ok());
  CHECK(ok->weight_sync.transport == "collective");
  CHECK(ok->weight_sync.bucket_mb == 64);
  for (auto [key, value, says] : {std::tuple<std::string, nlohmann::json, std::string>{
                                      "transport", "nccl2", "'weight_sync.transport'"},
                                  {"dtype", "fp16", "'weight_sync.dtype'"},
                                  {"bucket_mb", 0, "'weight_sync.bucket_mb'"},
                                  {"bucket_mb", 4096, "'weight_sync.bucket_mb'"},
                                  {"buckets", 3, "weight_sync.buckets"}}) {
    auto r = parse(key, value);
    REQUIRE_FALSE(r.ok());
    INFO(r.status().message());
    CHECK(std::string(r.status().message()).find(says) != std::string::npos);
    CHECK(std::string(r.status().message()).find("run.json") != std::string::npos);
  }
  // "ipc" without the learner's GPU weights (a learner on the CPU): refused at start-up by name.
  WeightPublisherOptions o;
  o.config.transport = "ipc";
  auto p = WeightPublisher::Create(o);
  REQUIRE_FALSE(p.ok());
  CHECK(p.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(p.status().message()).find("weight_sync.transport") != std::string::npos);
}

// "auto" picks a transport from where the run computes; anything else is taken as written.
TEST_CASE("weight_sync transport auto: ipc for a GPU learner with GPU engines or servers",
          "[learner][weight_sync]") {
  WeightSyncConfig c;
  auto pick = [&](bool learner_cuda, bool in_process, bool engines_cuda, bool remote, bool nccl) {
    WeightSyncSetup s;
    s.learner_cuda = learner_cuda;
    s.in_process_engines = in_process;
    s.engines_cuda = engines_cuda;
    s.remote_workers = remote;
    s.nccl_usable = nccl;
    std::string why;
    std::string t = ResolveWeightTransport(c, s, &why);
    CHECK_FALSE(why.empty());
    return t;
  };
  REQUIRE(c.transport == "auto");  // the default
  CHECK(pick(true, true, true, false, true) == "ipc");
  CHECK(pick(true, true, true, false, false) == "ipc");   // in-process needs no NCCL
  CHECK(pick(true, true, false, false, true) == "grpc");  // CPU engines
  CHECK(pick(false, true, true, false, true) == "grpc");  // CPU learner
  // Remote workers may share the learner's GPU (NCCL refuses that): never collective by itself;
  // ipc, which servers that cannot take handles refuse once (then grpc).
  CHECK(pick(true, false, false, true, true) == "ipc");
  CHECK(pick(true, false, false, true, false) == "ipc");   // needs no NCCL
  CHECK(pick(false, false, false, true, true) == "grpc");  // CPU learner, remote workers
  CHECK(pick(true, false, false, false, true) == "grpc");  // workers handed in by the caller
  CHECK(pick(false, false, false, false, false) == "grpc");
  for (const char* t : {"grpc", "collective", "ipc"}) {
    c.transport = t;
    CHECK(pick(false, false, false, false, false) == t);
    CHECK(pick(true, true, true, false, true) == t);
  }
}

// "ipc" moves weights device to device into in-process engines on cuda, and tries CUDA IPC
// handles on remote servers; an in-process CPU engine goes point to point at once, a remote
// worker after the device path failed (here: no learner GPU weights, as without CUDA), and both
// serve the new version. The device paths themselves are tests/gpu/rollout_cuda_test.cc's; the
// server's refusals are tests/rollout/service_test.cc's.
TEST_CASE("ipc publish: workers not on cuda go point to point", "[learner][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto learner = testing::MakeModel<float>(c, 45);
  auto w0 = MakeLocalWorker(*learner, "local0");
  std::unique_ptr<Engine> engine = testing::MakeEngine(c, 46);
  RolloutServiceImpl service(engine.get());
  int port = 0;
  auto server = StartRolloutServer(&service, "127.0.0.1", 0, &port);
  REQUIRE(server.ok());
  auto w1 = RemoteRolloutWorker::Connect(absl::StrCat("127.0.0.1:", port), absl::Seconds(30));
  REQUIRE(w1.ok());
  std::vector<RolloutWorker*> workers = {w0.get(), w1->get()};
  std::vector<bool> alive;
  WeightPublisherOptions o;
  o.config.transport = "ipc";
  int asked = 0;
  o.device_weights = [&]() -> absl::StatusOr<const CudaModel*> {
    ++asked;
    return absl::FailedPreconditionError("no learner GPU weights in this test");
  };
  auto pub = WeightPublisher::Create(o);
  REQUIRE(pub.ok());
  CHECK((*pub)->description().find("ipc") == 0);
  Perturb(learner.get(), 0.05f);
  std::map<std::string, double> m;
  REQUIRE((*pub)
              ->Publish(workers, &alive, learner->layout(),
                        absl::MakeConstSpan(learner->params(), learner->num_params()), 1, &m)
              .ok());
  CHECK(asked == 1);  // for the remote worker only
  CHECK(m.at("weight_sync/ipc_workers") == 0);
  CHECK(m.at("weight_sync/p2p_workers") == 2);
  CheckServes(w0.get(), *learner, Prompts(c.vocab_size), 1);
  CheckServes(w1->get(), *learner, Prompts(c.vocab_size), 1);
  engine->Shutdown();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

TEST_CASE("collective publish to in-process workers: new version, learner's logprobs",
          "[learner][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto learner = testing::MakeModel<float>(c, 40);
  auto w0 = MakeLocalWorker(*learner, "local0");
  auto w1 = MakeLocalWorker(*learner, "local1");
  std::vector<RolloutWorker*> workers = {w0.get(), w1.get()};
  std::vector<bool> alive;
  WeightPublisherOptions o;
  o.config.transport = "collective";
  o.config.bucket_mb = 0.01;  // ~10 KB buckets: several, the last one short
  o.timeout_s = 30;
  auto pub = WeightPublisher::Create(o);
  REQUIRE(pub.ok());
  const auto prompts = Prompts(c.vocab_size);
  for (uint64_t version = 1; version <= 2; ++version) {
    Perturb(learner.get(), 0.05f * static_cast<float>(version));
    std::map<std::string, double> m;
    REQUIRE((*pub)
                ->Publish(workers, &alive, learner->layout(),
                          absl::MakeConstSpan(learner->params(), learner->num_params()), version,
                          &m)
                .ok());
    CHECK(m.at("weight_sync/collective_workers") == 2);
    CHECK(m.at("weight_sync/p2p_workers") == 0);
    CHECK(m.at("weight_sync/bucket_count") > 2);
    CHECK(m.at("weight_sync/bytes") == 2.0 * learner->num_params() * 4);
    CHECK(m.at("weight_sync/gb_per_s") > 0);
    for (RolloutWorker* w : workers) CheckServes(w, *learner, prompts, version);
  }
  // A stale update is refused by every receiver; the point-to-point fallback refuses it too, so
  // nobody is left alive and the publisher says so; the workers still serve version 2.
  std::map<std::string, double> m;
  const absl::Status stale =
      (*pub)->Publish(workers, &alive, learner->layout(),
                      absl::MakeConstSpan(learner->params(), learner->num_params()), 2, &m);
  CHECK(stale.code() == absl::StatusCode::kUnavailable);
  CHECK(*w0->NewestVersion() == 2);
  CHECK(*w1->NewestVersion() == 2);
}

TEST_CASE("a worker that joins mid-run gets the current weights before any work",
          "[learner][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto learner = testing::MakeModel<float>(c, 50);
  auto w0 = MakeLocalWorker(*learner, "local0");
  std::vector<RolloutWorker*> workers = {w0.get()};
  std::vector<bool> alive;
  WeightPublisherOptions o;
  auto pub = WeightPublisher::Create(o);  // auto: point to point
  REQUIRE(pub.ok());
  CHECK((*pub)->description() == "grpc");
  for (uint64_t version = 1; version <= 3; ++version) {
    Perturb(learner.get(), 0.03f);
    std::map<std::string, double> m;
    REQUIRE((*pub)
                ->Publish(workers, &alive, learner->layout(),
                          absl::MakeConstSpan(learner->params(), learner->num_params()), version,
                          &m)
                .ok());
  }
  // The newcomer was made from the initial weights (version 0).
  auto initial = testing::MakeModel<float>(c, 50);
  auto late = MakeLocalWorker(*initial, "late");
  workers.push_back(late.get());
  const auto params = absl::MakeConstSpan(learner->params(), learner->num_params());
  auto pushed = EnsureCurrentWeights(workers, &alive, learner->layout(), params, 3);
  REQUIRE(pushed.ok());
  CHECK(*pushed == 1);  // only the newcomer
  CHECK(*late->NewestVersion() == 3);
  CheckServes(late.get(), *learner, Prompts(c.vocab_size), 3);
  // Everyone current: nothing to do.
  CHECK(*EnsureCurrentWeights(workers, &alive, learner->layout(), params, 3) == 0);
  // A worker ahead of the learner cannot be trusted with this run's work: dropped.
  auto behind = EnsureCurrentWeights(workers, &alive, learner->layout(), params, 2);
  CHECK(behind.status().code() == absl::StatusCode::kUnavailable);
  CHECK_FALSE(alive[0]);
  CHECK_FALSE(alive[1]);
}

// Remote workers over loopback gRPC, with the group's collectives on a LocalGroup shared by the
// servers and the learner (standing in for NCCL): the control plane and the receivers run as in
// production.
TEST_CASE("collective publish to remote workers through the gRPC control plane",
          "[learner][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto learner = testing::MakeModel<float>(c, 60);
  // Stands in for NCCL's bootstrap: ranks of one group go to whoever asks first; a rank asked
  // for again (the group was rebuilt) opens a new group of the requested size.
  struct Groups {
    absl::Mutex mu;
    std::shared_ptr<comm::LocalGroup> group;
    std::vector<bool> taken;
  };
  auto groups = std::make_shared<Groups>();
  CommunicatorFactory factory = [groups](const rollout::JoinWeightGroupRequest& r) {
    absl::MutexLock lock(&groups->mu);
    if (groups->group == nullptr || static_cast<int>(groups->taken.size()) != r.world_size() ||
        groups->taken[r.rank()]) {
      groups->group = comm::LocalGroup::Create(r.world_size());
      groups->taken.assign(r.world_size(), false);
    }
    groups->taken[r.rank()] = true;
    return absl::StatusOr<std::unique_ptr<comm::Communicator>>(groups->group->Rank(r.rank()));
  };
  struct Server {
    std::unique_ptr<Engine> engine;
    std::unique_ptr<RolloutServiceImpl> service;
    std::unique_ptr<grpc::Server> server;
    std::string address;
  };
  std::vector<Server> servers(2);
  for (Server& s : servers) {
    s.engine = testing::MakeEngine(c, 60);
    s.service = std::make_unique<RolloutServiceImpl>(s.engine.get(), factory);
    int port = 0;
    auto started = StartRolloutServer(s.service.get(), "127.0.0.1", 0, &port);
    REQUIRE(started.ok());
    s.server = std::move(*started);
    s.address = absl::StrCat("127.0.0.1:", port);
  }
  std::vector<std::unique_ptr<RemoteRolloutWorker>> remote;
  std::vector<RolloutWorker*> workers;
  for (Server& s : servers) {
    auto w = RemoteRolloutWorker::Connect(s.address, absl::Seconds(30));
    REQUIRE(w.ok());
    workers.push_back(w->get());
    remote.push_back(std::move(*w));
  }
  WeightPublisherOptions o;
  o.config.transport = "collective";
  o.config.bucket_mb = 0.02;
  o.timeout_s = 30;
  o.remote_backend = "local";
  o.remote_factory = factory;
  o.deterministic = true;  // auto dtype: fp32 (else bf16 to remote workers)
  auto pub = WeightPublisher::Create(o);
  REQUIRE(pub.ok());
  std::vector<bool> alive;
  const auto prompts = Prompts(c.vocab_size);
  for (uint64_t version = 1; version <= 2; ++version) {
    Perturb(learner.get(), 0.04f);
    std::map<std::string, double> m;
    REQUIRE((*pub)
                ->Publish(workers, &alive, learner->layout(),
                          absl::MakeConstSpan(learner->params(), learner->num_params()), version,
                          &m)
                .ok());
    CHECK(m.at("weight_sync/collective_workers") == 2);
    CHECK(m.at("weight_sync/p2p_workers") == 0);
    for (RolloutWorker* w : workers) CheckServes(w, *learner, prompts, version);
  }
  // Join requests are checked field by field.
  auto client = RolloutClient::Connect(servers[0].address);
  REQUIRE(client.ok());
  rollout::JoinWeightGroupRequest bad;
  bad.set_backend("local");
  bad.set_world_size(2);
  bad.set_rank(0);
  bad.set_root(0);
  bad.set_timeout_s(5);
  auto refused = (*client)->JoinWeightGroup(bad, absl::Now() + absl::Seconds(10));
  CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);

  // Worker 1 goes away: its BeginWeightUpdate fails, so the group is aborted (worker 0's receive
  // ends ABORTED, not hung), worker 0 gets the update point to point and worker 1 is dropped.
  servers[1].engine->Shutdown();
  servers[1].server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  Perturb(learner.get(), 0.04f);
  std::map<std::string, double> m3;
  REQUIRE((*pub)
              ->Publish(workers, &alive, learner->layout(),
                        absl::MakeConstSpan(learner->params(), learner->num_params()), 3, &m3)
              .ok());
  CHECK(m3.at("weight_sync/collective_workers") == 0);
  CHECK(m3.at("weight_sync/p2p_workers") == 1);
  CHECK(alive[0]);
  CHECK_FALSE(alive[1]);
  CheckServes(workers[0], *learner, prompts, 3);
  // The next update rebuilds the group with the workers left, and the broadcast path is back.
  Perturb(learner.get(), 0.04f);
  std::map<std::string, double> m4;
  REQUIRE((*pub)
              ->Publish(workers, &alive, learner->layout(),
                        absl::MakeConstSpan(learner->params(), learner->num_params()), 4, &m4)
              .ok());
  CHECK(m4.at("weight_sync/collective_workers") == 1);
  CHECK(m4.at("weight_sync/p2p_workers") == 0);
  CheckServes(workers[0], *learner, prompts, 4);
  servers[0].engine->Shutdown();
  servers[0].server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

// Remote workers over real NCCL where neither side can (a CPU machine): the join is refused at
// once and the update goes over the gRPC stream; the worker is not lost.
TEST_CASE("collective transport without NCCL falls back to the gRPC stream",
          "[learner][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto learner = testing::MakeModel<float>(c, 70);
  auto engine = testing::MakeEngine(c, 70);
  RolloutServiceImpl service(engine.get());  // the production (NCCL) factory
  int port = 0;
  auto server = StartRolloutServer(&service, "127.0.0.1", 0, &port);
  REQUIRE(server.ok());
  auto worker = RemoteRolloutWorker::Connect(absl::StrCat("127.0.0.1:", port), absl::Seconds(30));
  REQUIRE(worker.ok());
  std::vector<RolloutWorker*> workers = {worker->get()};
  WeightPublisherOptions o;
  o.config.transport = "collective";
  o.timeout_s = 5;
  o.deterministic = true;
  auto pub = WeightPublisher::Create(o);
  REQUIRE(pub.ok());
  std::vector<bool> alive;
  Perturb(learner.get(), 0.02f);
  std::map<std::string, double> m;
  REQUIRE((*pub)
              ->Publish(workers, &alive, learner->layout(),
                        absl::MakeConstSpan(learner->params(), learner->num_params()), 1, &m)
              .ok());
  CHECK(m.at("weight_sync/collective_workers") + m.at("weight_sync/p2p_workers") == 1);
  if (!comm::NcclUsable()) {
    CHECK(m.at("weight_sync/p2p_workers") == 1);
    CHECK((*pub)->description().find("grpc for remote") != std::string::npos);
  }
  CHECK(alive[0]);
  CheckServes(workers[0], *learner, Prompts(c.vocab_size), 1);
  engine->Shutdown();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

// The whole learner loop on the collective transport with deterministic kernels: the rollouts of
// step 2 ran on the weights step 1 published over the group, so their logprobs equal the
// learner's bit for bit. With bf16 buckets they differ (so the check can fail).
TEST_CASE("learner loop on the collective transport: rollout logprobs equal the learner's",
          "[learner][weight_sync][trainer]") {
  const std::string dir = (fs::temp_directory_path() / "grpo_weight_sync_trainer").string();
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 2;
  j["rollout"]["deterministic"] = true;
  j["weight_sync"] = {{"transport", "collective"}, {"bucket_mb", 0.05}};
  for (const std::string dtype : {"auto", "bf16"}) {
    j["weight_sync"]["dtype"] = dtype;
    j["output_dir"] = dir + "/out_" + dtype;
    auto cfg = ParseLearnerConfig(j, "test config");
    REQUIRE(cfg.ok());
    TrainerOptions opts;
    opts.console = false;
    auto t = Trainer::Create(*cfg, std::move(opts));
    REQUIRE(t.ok());
    REQUIRE((*t)->Step().ok());
    REQUIRE((*t)->Step().ok());
    const auto& m = (*t)->last_metrics();
    CHECK(m.at("weight_sync/collective_workers") == 2);
    if (dtype == "auto") {
      CHECK(m.at("mismatch/logprob_abs_diff") == 0.0);
    } else {
      CHECK(m.at("mismatch/logprob_abs_diff") > 0.0);
    }
  }
}

}  // namespace
}  // namespace grpo
