
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

TEST_CASE("learner: every algorithm option together runs (R3, GSPO, TIS, dynamic sampling, ...)",
          "[trainer]") {
  const std::string dir = TempDir("options");
  nlohmann::json j = testing::MakeLearnerFixture(dir);
  j["total_steps"] = 2;
  j["algorithm"] = {{"policy_loss", "gspo"}, {"clip_low", 3e-4}, {"clip_high", 4e-4},
                    {"aggregation", "seq-mean-token-mean"}, {"kl_coef", 0.01},
                    {"kl_estimator", "k2"}, {"entropy_coef", 0.001}, {"mismatch", "seq_tis"},
                    {"ppo_epochs", 2}, {"mini_batches", 2}, {"micro_batch_seqs", 5},
                    {"ref_refresh_every", 1}, {"dynamic_sampling", true},
                    {"overlong_filter", true}, {"routing_replay", true},
                    {"aux_loss_coef", 0.001}, {"advantage", "rloo"}};
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
