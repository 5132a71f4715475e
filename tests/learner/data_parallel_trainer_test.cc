// `grpo learner` with data_parallel.ranks > 1 (learner/local_data_parallel.h): the trainer's
// ranks are threads over a LocalGroup, each mini-batch's groups split across them. Against the
// same run with one rank: the same training up to float summation order, replicas bitwise equal,
// communication metrics written.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "learner/trainer.h"
#include "tests/learner/learner_fixture.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<Trainer> MakeDpTrainer(const nlohmann::json& j) {
  auto c = ParseLearnerConfig(j, "test config");
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  TrainerOptions opts;
  opts.console = false;
  auto t = Trainer::Create(*c, std::move(opts));
  INFO(t.status().ToString());
  REQUIRE(t.ok());
  return std::move(*t);
}

}  // namespace

TEST_CASE("learner: 3 data-parallel ranks train like one (a rank with no group, aux loss)",
          "[trainer][dp]") {
  const std::string dir = (fs::temp_directory_path() / "grpo_dp_trainer_test").string();
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 2;
  // 4 prompts, 2 mini-batches of 2 groups over 3 ranks: ranks get 0, 1 and 1 groups. One group
  // per micro-batch (G = 4) so the aux loss sees the same micro-batches either way.
  j["algorithm"]["micro_batch_seqs"] = 4;
  j["algorithm"]["aux_loss_coef"] = 0.01;
  j["algorithm"]["aggregation"] = "seq-mean-token-mean";

  j["output_dir"] = dir + "/one";
  auto one = MakeDpTrainer(j);
  REQUIRE(one->Run().ok());
  REQUIRE(one->last_metrics().count("data_parallel/bytes") == 0);

  j["output_dir"] = dir + "/three";
  j["data_parallel"] = {{"ranks", 3}, {"bucket_mb", 0.01}, {"check_replicas", true}};
  auto three = MakeDpTrainer(j);
  absl::Status s = three->Run();
  INFO(s.ToString());
  REQUIRE(s.ok());

  const Model<float>& a = one->policy();
  const Model<float>& b = three->policy();
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < a.num_params(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a.params()[i]) - b.params()[i]));
    norm = std::max(norm, std::abs(static_cast<double>(a.params()[i])));
  }
  INFO("max |one - three| " << diff << " (max |param| " << norm << ")");
  REQUIRE(diff < 1e-5 * norm);
  const auto& m1 = one->last_metrics();
  const auto& m3 = three->last_metrics();
  CHECK_THAT(m3.at("actor/grad_norm"), Catch::Matchers::WithinRel(m1.at("actor/grad_norm"), 1e-4));
  CHECK_THAT(m3.at("actor/kl"), Catch::Matchers::WithinAbs(m1.at("actor/kl"), 1e-6));
  CHECK(m3.at("reward/mean") == m1.at("reward/mean"));  // the same rollouts
  // Two optimizer steps per GRPO step, each all-reducing every gradient once.
  CHECK(m3.at("data_parallel/bytes") == 2.0 * 4.0 * static_cast<double>(b.num_params()));
  CHECK(m3.at("data_parallel/ranks") == 3);
  CHECK(m3.at("data_parallel/allreduce_wait_s") >= 0);
}

}  // namespace grpo

namespace grpo {

TEST_CASE("learner: with 2 data-parallel ranks, 2 steps straight equal 1 + resume + 1, bitwise",
          "[trainer][dp]") {
  const std::string dir = (fs::temp_directory_path() / "grpo_dp_resume_test").string();
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 2;
  j["checkpoint"] = {{"every", 1}};
  // The replicas must be made from the resumed policy AND optimizer state (AdamW moments): a
  // replica with fresh moments would diverge, and check_replicas would stop the run.
  j["data_parallel"] = {{"ranks", 2}, {"bucket_mb", 0.01}, {"check_replicas", true}};
  j["output_dir"] = dir + "/straight";
  auto straight = MakeDpTrainer(j);
  REQUIRE(straight->Run().ok());

  j["output_dir"] = dir + "/resumed";
  j["total_steps"] = 1;
  auto first = MakeDpTrainer(j);
  REQUIRE(first->Run().ok());
  j["total_steps"] = 2;
  auto c = ParseLearnerConfig(j, "test config");
  REQUIRE(c.ok());
  TrainerOptions opts;
  opts.console = false;
  opts.resume = true;
  auto resumed = Trainer::Create(*c, std::move(opts));
  INFO(resumed.status().ToString());
  REQUIRE(resumed.ok());
  absl::Status s = (*resumed)->Run();
  INFO(s.ToString());
  REQUIRE(s.ok());
  REQUIRE((*resumed)->steps_done() == 2);
  const Model<float>& a = straight->policy();
  const Model<float>& b = (*resumed)->policy();
  REQUIRE(std::memcmp(a.params(), b.params(), a.num_params() * sizeof(float)) == 0);
}

}  // namespace grpo
