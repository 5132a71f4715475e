// End-to-end tests of the learner loop (learner/trainer.h) on a tiny model, in-process:
//  - exact resume: 4 steps straight == 2 steps + resume + 2 steps (weights bitwise, metrics equal
//    except wall-clock fields);
//  - a rollout worker that dies mid-step: its groups are re-issued, the step completes with every
//    group, and the weights equal those of a run where nothing failed;
//  - a crash in the middle of writing a checkpoint leaves the previous one loadable and resumable.
// The multi-process version (learner + `grpo rollout serve` workers) needs the rollout service.
#include "learner/trainer.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "common/status.h"
#include "learner/checkpoint.h"
#include "model/checkpoint.h"
#include "rollout/weight_sync.h"
#include "tests/learner/learner_fixture.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  return (fs::temp_directory_path() / ("grpo_trainer_test_" + name)).string();
}

LearnerConfig Parse(const nlohmann::json& j) {
  auto c = ParseLearnerConfig(j, "test config");
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return *c;
}

std::unique_ptr<Trainer> MakeTrainer(const LearnerConfig& c, TrainerOptions opts = {}) {
  opts.console = false;
  auto t = Trainer::Create(c, std::move(opts));
  INFO(t.status().ToString());
  REQUIRE(t.ok());
  return std::move(*t);
}

void RequireOk(const absl::Status& s) {
  INFO(s.ToString());
  REQUIRE(s.ok());
}

std::vector<float> Params(Trainer& t) {
  return std::vector<float>(t.policy().params(), t.policy().params() + t.policy().num_params());
}

// metrics.jsonl without the fields that measure wall-clock time.
std::vector<nlohmann::json> DeterministicMetrics(const std::string& out_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream f(fs::path(out_dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = ParseJson(line);
    REQUIRE(j.ok());
    nlohmann::json kept;
    for (auto it = j->begin(); it != j->end(); ++it) {
      const std::string& k = it.key();
      if (k.rfind("time/", 0) == 0 || k.find("per_s") != std::string::npos ||
          k == "weight_sync/seconds") {
        continue;
      }
      kept[k] = it.value();
    }
    lines.push_back(kept);
  }
  return lines;
}

TEST_CASE("learner: N steps straight equal N/2 + resume + N/2, bit for bit", "[trainer]") {
  const std::string dir = TempDir("resume");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["checkpoint"] = {{"every", 2}, {"keep", 2}};

  nlohmann::json ja = j;
  ja["output_dir"] = dir + "/out_straight";
  auto a = MakeTrainer(Parse(ja));
  RequireOk(a->Run());
  const std::vector<float> straight = Params(*a);

  nlohmann::json jb = j;
  jb["output_dir"] = dir + "/out_resumed";
  {
    auto b = MakeTrainer(Parse(jb));
    RequireOk(b->Step());
    RequireOk(b->Step());  // checkpoint at step 2
    RequireOk(b->Step());  // progress past the checkpoint that the resume must redo
  }
  TrainerOptions opts;
  opts.resume = true;
  auto b = MakeTrainer(Parse(jb), std::move(opts));
  CHECK(b->steps_done() == 2);
  RequireOk(b->Run());
  const std::vector<float> resumed = Params(*b);

  REQUIRE(straight.size() == resumed.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < straight.size(); ++i) mismatches += straight[i] != resumed[i];
  CHECK(mismatches == 0);
  // The policy did move (a test that cannot fail is a defect).
  auto init = LoadModel(dir + "/model");
  REQUIRE(init.ok());
  int64_t moved = 0;
  for (size_t i = 0; i < straight.size(); ++i) moved += straight[i] != (*init)->params()[i];
  CHECK(moved > static_cast<int64_t>(straight.size()) / 2);

  const auto ma = DeterministicMetrics(ja["output_dir"]);
  const auto mb = DeterministicMetrics(jb["output_dir"]);
  REQUIRE(ma.size() == 4);
  REQUIRE(mb.size() == 4);  // step 3 of the interrupted run was replaced, not duplicated
  for (size_t i = 0; i < ma.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(ma[i] == mb[i]);
  }
  // keep = 2: steps 2 and 4 remain.
  const auto cks = ListCheckpoints(jb["output_dir"].get<std::string>() + "/checkpoints");
  REQUIRE(cks.size() == 2);
  CHECK(fs::path(cks.back()).filename() == "step_00000004");
  CHECK(fs::exists(fs::path(cks.back()) / "tokenizer.json"));
  CHECK(fs::exists(fs::path(cks.back()) / "config.json"));
}

// A worker that fails every Generate call from the `fail_from`-th on (0-based), like a process
// killed mid-run.
class DyingWorker : public RolloutWorker {
 public:
  DyingWorker(std::unique_ptr<LocalRolloutWorker> inner, int fail_from)
      : inner_(std::move(inner)), fail_from_(fail_from) {}
  std::string name() const override { return "dying"; }
  absl::Status Generate(absl::Span<const RolloutPrompt> prompts, const SamplingParams& sampling,
                        std::vector<GroupResult>* out) override {
    if (calls_++ < fail_from_) return inner_->Generate(prompts, sampling, out);
    // Killed mid-call: the first group made it out, the rest did not.
    std::vector<GroupResult> all;
    RETURN_IF_ERROR(inner_->Generate(prompts, sampling, &all));
    out->push_back(std::move(all[0]));
    return absl::UnavailableError("connection reset (killed)");
  }
  absl::Status PushWeights(const ParamLayout& layout, absl::Span<const float> params,
                           uint64_t version) override {
    return inner_->PushWeights(layout, params, version);
  }
  int64_t last_push_bytes() const override { return inner_->last_push_bytes(); }
  absl::StatusOr<uint64_t> NewestVersion() override { return inner_->NewestVersion(); }

 private:
  std::unique_ptr<LocalRolloutWorker> inner_;
  int fail_from_;
  int calls_ = 0;
};

TEST_CASE("learner: a worker killed mid-step has its groups re-issued and nothing else changes",
          "[trainer]") {
  const std::string dir = TempDir("kill");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 3;
  const LearnerConfig healthy_cfg = Parse(j);
  auto healthy = MakeTrainer(healthy_cfg);
  RequireOk(healthy->Run());

  nlohmann::json jk = j;
  jk["output_dir"] = dir + "/out_kill";
  const LearnerConfig cfg = Parse(jk);
  auto init = LoadModel(dir + "/model");
  REQUIRE(init.ok());
  TrainerOptions opts;
  auto w0 = LocalRolloutWorker::Create(**init, "w0", int64_t{4} << 20);
  auto w1 = LocalRolloutWorker::Create(**init, "w1", int64_t{4} << 20);
  REQUIRE(w0.ok());
  REQUIRE(w1.ok());
  opts.workers.push_back(std::make_unique<DyingWorker>(std::move(*w0), /*fail_from=*/1));
  opts.workers.push_back(std::move(*w1));
  auto killed = MakeTrainer(cfg, std::move(opts));
  RequireOk(killed->Step());
  CHECK(killed->last_metrics().at("rollout/groups_reissued") == 0);
  RequireOk(killed->Step());  // the dying worker fails here, holding half of the groups
  CHECK(killed->last_metrics().at("rollout/groups_reissued") == 1);  // one of its two got out
  CHECK(killed->last_metrics().at("rollout/groups_trained") == 4);
  CHECK(killed->last_metrics().at("rollout/workers_alive") == 1);
  RequireOk(killed->Step());
  CHECK(killed->last_metrics().at("rollout/groups_reissued") == 0);
  CHECK(Params(*killed) == Params(*healthy));
}

TEST_CASE("learner: a crash while writing a checkpoint leaves the previous one loadable",
          "[trainer]") {
  const std::string dir = TempDir("crash");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["checkpoint"] = {{"every", 1}, {"keep", 3}};
  j["total_steps"] = 3;
  const LearnerConfig cfg = Parse(j);
  bool crash = false;
  std::vector<float> after_step1;
  {
    TrainerOptions opts;
    opts.checkpoint_fault = [&crash](const std::string& file) {
      return crash && file == "optimizer.bin" ? absl::InternalError("simulated crash")
                                              : absl::OkStatus();
    };
    auto t = MakeTrainer(cfg, std::move(opts));
    RequireOk(t->Step());
    after_step1 = Params(*t);
    crash = true;
    const absl::Status s = t->Step();
    REQUIRE(!s.ok());
    CHECK(std::string(s.message()).find("simulated crash") != std::string::npos);
  }
  const std::string root = cfg.output_dir + "/checkpoints";
  const auto cks = ListCheckpoints(root);
  REQUIRE(cks.size() == 1);
  CHECK(fs::path(cks[0]).filename() == "step_00000001");
  CHECK(fs::exists(fs::path(root) / ".tmp-step_00000002"));  // the torn write is still there...
  auto loaded = LoadModel(cks[0]);  // ...and the previous checkpoint loads as an HF directory
  REQUIRE(loaded.ok());
  CHECK(std::vector<float>((*loaded)->params(), (*loaded)->params() + (*loaded)->num_params()) ==
        after_step1);
  TrainerOptions opts;
  opts.resume = true;
  auto t = MakeTrainer(cfg, std::move(opts));
  CHECK(t->steps_done() == 1);
  RequireOk(t->Run());
  CHECK(!fs::exists(fs::path(root) / ".tmp-step_00000002"));  // cleared by the next save
  CHECK(ListCheckpoints(root).size() == 3);
}

TEST_CASE("learner: --resume with no checkpoint is a clear error", "[trainer]") {
  const std::string dir = TempDir("noresume");
  const LearnerConfig cfg = Parse(testing::MakeLearnerFixture(dir));
  TrainerOptions opts;
  opts.resume = true;
  opts.console = false;
  auto t = Trainer::Create(cfg, std::move(opts));
  REQUIRE(!t.ok());
  CHECK(std::string(t.status().message()).find("no checkpoint") != std::string::npos);
}

TEST_CASE("learner: device cuda without a GPU is a clear error, and auto trains on the CPU",
          "[trainer]") {
  if (CudaAvailable()) {
    WARN("a CUDA device is present: the GPU learner step is tested in grpo_gpu_tests instead");
    return;
  }
  const std::string dir = TempDir("device");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["device"] = "cuda";
  TrainerOptions opts;
  opts.console = false;
  auto t = Trainer::Create(Parse(j), std::move(opts));
  REQUIRE(t.status().code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(t.status().message()).find("config 'device'") != std::string::npos);
  j["device"] = "cpu";
  j["rollout"]["local_device"] = "cuda";
  TrainerOptions opts2;
  opts2.console = false;
  auto v = Trainer::Create(Parse(j), std::move(opts2));
  REQUIRE(v.status().code() == absl::StatusCode::kUnavailable);
  CHECK(std::string(v.status().message()).find("rollout.local_device") != std::string::npos);
  j["rollout"]["local_device"] = "auto";
  j["device"] = "auto";
  j["total_steps"] = 1;
  auto u = MakeTrainer(Parse(j));
  RequireOk(u->Step());
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

TEST_CASE("learner: deterministic rollout logprobs equal the learner's bit for bit", "[trainer]") {
  const std::string dir = TempDir("deterministic");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 1;
  j["rollout"]["deterministic"] = true;
  auto t = MakeTrainer(Parse(j));
  RequireOk(t->Step());
  CHECK(t->last_metrics().at("mismatch/logprob_abs_diff") == 0.0);
  // Without batch-invariant kernels they differ by rounding (so the metric can fail).
  j["rollout"]["deterministic"] = false;
  j["output_dir"] = dir + "/out2";
  auto u = MakeTrainer(Parse(j));
  RequireOk(u->Step());
  CHECK(u->last_metrics().at("mismatch/logprob_abs_diff") > 0.0);
}

TEST_CASE("learner: bf16 weights with an fp32 master stay bf16-valued, bitwise in rollout, and "
          "resume exactly", "[trainer]") {
  const std::string dir = TempDir("bf16_weights");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 4;
  j["checkpoint"] = {{"every", 2}, {"keep", 2}};
  j["rollout"]["deterministic"] = true;
  j["optimizer"]["weight_dtype"] = "bf16";
  auto bf16_valued = [](const std::vector<float>& p) {
    int64_t off = 0;
    for (float x : p) off += Bf16ToFloat(FloatToBf16(x)) != x;
    return off;
  };
  auto init = LoadModel(dir + "/model");
  REQUIRE(init.ok());
  const std::vector<float> p0((*init)->params(), (*init)->params() + (*init)->num_params());
  REQUIRE(bf16_valued(p0) > 0);  // the fixture's weights are fp32, so the rounding shows

  nlohmann::json ja = j;
  ja["output_dir"] = dir + "/out_straight";
  auto a = MakeTrainer(Parse(ja));
  CHECK(bf16_valued(Params(*a)) == 0);  // rounded before the first rollout
  RequireOk(a->Step());
  // The workers sampled with the learner's bf16-valued weights: same logprobs, bit for bit.
  CHECK(a->last_metrics().at("mismatch/logprob_abs_diff") == 0.0);
  RequireOk(a->Run());
  const std::vector<float> straight = Params(*a);
  CHECK(bf16_valued(straight) == 0);
  CHECK(a->last_metrics().at("mismatch/logprob_abs_diff") == 0.0);
  int64_t moved = 0;
  for (size_t i = 0; i < straight.size(); ++i) {
    moved += straight[i] != Bf16ToFloat(FloatToBf16(p0[i]));
  }
  CHECK(moved > 0);
  // The checkpoint holds them as bf16 (lossless), the master copy in optimizer.bin.
  const auto cks = ListCheckpoints(ja["output_dir"].get<std::string>() + "/checkpoints");
  REQUIRE(!cks.empty());
  std::ifstream cfg(fs::path(cks.back()) / "config.json");
  nlohmann::json saved;
  cfg >> saved;
  CHECK(saved.value("torch_dtype", "") == "bfloat16");

  // 2 steps + resume + 2 steps: the master copy comes back from the checkpoint, so the weights
  // equal the straight run's bit for bit.
  nlohmann::json jb = j;
  jb["output_dir"] = dir + "/out_resumed";
  {
    auto b = MakeTrainer(Parse(jb));
    RequireOk(b->Step());
    RequireOk(b->Step());
  }
  TrainerOptions opts;
  opts.resume = true;
  auto b = MakeTrainer(Parse(jb), std::move(opts));
  REQUIRE(b->steps_done() == 2);
  RequireOk(b->Run());
  CHECK(Params(*b) == straight);
}

TEST_CASE("learner: every algorithm option together runs (R3, GSPO, TIS, dynamic sampling, ...)",
          "[trainer]") {
  const std::string dir = TempDir("options");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 2;
  j["algorithm"] = {{"policy_loss", "gspo"},    {"clip_low", 3e-4},
                    {"clip_high", 4e-4},        {"aggregation", "seq-mean-token-mean"},
                    {"kl_coef", 0.01},          {"kl_estimator", "k2"},
                    {"entropy_coef", 0.001},    {"mismatch", "seq_tis"},
                    {"ppo_epochs", 2},          {"mini_batches", 2},
                    {"micro_batch_seqs", 5},    {"ref_refresh_every", 1},
                    {"dynamic_sampling", true}, {"overlong_filter", true},
                    {"routing_replay", true},   {"aux_loss_coef", 0.001},
                    {"advantage", "rloo"}};
  j["optimizer"] = {{"lr", 1e-3}, {"schedule", "cosine"}, {"warmup_steps", 2}};
  j["rollout"]["max_new_tokens"] = 3;  // some completions end early, most are truncated
  auto t = MakeTrainer(Parse(j));
  RequireOk(t->Run());
  const auto& m = t->last_metrics();
  CHECK(m.at("rollout/groups_trained") + m.at("rollout/groups_dropped") >= 4);
  CHECK(m.at("loss/aux") > 0);
  CHECK(m.count("mismatch/is_weight_mean") == 1);
  const auto cks = ListCheckpoints(Parse(j).output_dir + "/checkpoints");
  REQUIRE(!cks.empty());
  CHECK(fs::exists(fs::path(cks.back()) / "reference" / "model.safetensors"));
}

TEST_CASE("learner: dynamic sampling drops zero-variance groups and refills", "[trainer]") {
  const std::string dir = TempDir("dynamic");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 1;
  j["algorithm"]["dynamic_sampling"] = true;
  j["rollout"]["max_new_tokens"] = 2;  // short: many groups have no digit at all
  auto t = MakeTrainer(Parse(j));
  RequireOk(t->Step());
  const auto& m = t->last_metrics();
  CHECK(m.at("rollout/groups_dropped") > 0);
  CHECK(m.at("rollout/rounds") > 1);
  CHECK(m.at("rollout/groups_trained") == 4);
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

TEST_CASE("learner: micro-batching does not change the mini-batch loss or gradient", "[trainer]") {
  const std::string dir = TempDir("micro");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 1;
  j["algorithm"]["mini_batches"] = 1;
  std::map<std::string, double> by_micro[3];
  const int micro[3] = {0, 1, 5};  // whole mini-batch, one sequence, uneven splits of 16
  for (int k = 0; k < 3; ++k) {
    j["algorithm"]["micro_batch_seqs"] = micro[k];
    j["output_dir"] = dir + "/out" + std::to_string(k);
    auto t = MakeTrainer(Parse(j));
    RequireOk(t->Step());
    by_micro[k] = t->last_metrics();
  }
  for (int k = 1; k < 3; ++k) {
    INFO("micro_batch_seqs " << micro[k]);
    CHECK(by_micro[k].at("actor/grad_norm") > 0);
    CHECK_THAT(by_micro[k].at("actor/grad_norm"),
               Catch::Matchers::WithinRel(by_micro[0].at("actor/grad_norm"), 1e-5));
    // On-policy at the first step the loss is ~0 (advantages sum to zero per group): absolute.
    CHECK_THAT(by_micro[k].at("loss/total"),
               Catch::Matchers::WithinAbs(by_micro[0].at("loss/total"), 1e-9));
  }
}

}  // namespace
}  // namespace grpo
