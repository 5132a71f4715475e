// Tests for reward/reward_model.h and reward/model_reward.h: parity with transformers'
// Qwen3/Qwen2/Qwen3-MoE *ForSequenceClassification on tiny random checkpoints
// (tests/fixtures/reward_model/, scripts/make_reward_model_fixtures.py), independence from
// batching, the pad-token rule, the `model` reward end to end (template, tokenizer, truncation,
// normalization), composition with rule rewards, and bad checkpoints / params / items.
#include "reward/model_reward.h"

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "reward/reward_model.h"
#include "reward/reward_set.h"

namespace grpo {
namespace {

const std::string kFixtures = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/reward_model/";

nlohmann::json ReadScores(const std::string& name) {
  auto j = ReadJsonFile(kFixtures + name + "/scores.json");
  INFO(j.status().ToString());
  REQUIRE(j.ok());
  return *j;
}

std::unique_ptr<RewardModel> LoadFixture(const std::string& name) {
  auto m = RewardModel::Load(kFixtures + name);
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  return std::move(*m);
}

std::vector<std::vector<int32_t>> Sequences(const nlohmann::json& doc) {
  return doc["sequences"].get<std::vector<std::vector<int32_t>>>();
}

// Max |a - b| over all values; reports the worst index on failure via the caller's INFO.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b, size_t* worst) {
  REQUIRE(a.size() == b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(std::isfinite(a[i]));
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (d > max_diff) max_diff = d, *worst = i;
  }
  return max_diff;
}

TEST_CASE("reward model: scores equal transformers *ForSequenceClassification", "[reward_model]") {
  for (const std::string name : {"qwen3", "qwen2", "qwen3_moe", "llama"}) {
    SECTION(name) {
      const nlohmann::json doc = ReadScores(name);
      auto model = LoadFixture(name);
      CHECK(model->num_labels() == doc["num_labels"].get<int64_t>());
      REQUIRE(model->pad_token_id() == std::optional<int32_t>(doc["pad_token_id"].get<int32_t>()));
      const auto seqs = Sequences(doc);
      std::vector<float> want;
      for (const auto& row : doc["scores"]) {
        for (const auto& v : row) want.push_back(v.get<float>());
      }
      std::vector<float> got;
      REQUIRE(model->Score(seqs, {}, &got).ok());
      // Metric: absolute error per logit; the logits are O(1), fp32 on both sides.
      size_t worst = 0;
      const double diff = MaxAbsDiff(got, want, &worst);
      INFO(name << ": worst logit " << worst << " got " << got[worst] << " want " << want[worst]);
      CHECK(diff < 1e-4);
      // The fixture is not degenerate: scores differ between sequences by far more than 1e-4.
      double lo = 1e9, hi = -1e9;
      for (float v : want) lo = std::min<double>(lo, v), hi = std::max<double>(hi, v);
      CHECK(hi - lo > 0.1);
    }
  }
}

TEST_CASE("reward model: trailing pad tokens are not scored, inner ones are", "[reward_model]") {
  auto model = LoadFixture("qwen3");
  const int32_t pad = *model->pad_token_id();
  const std::vector<int32_t> seq = {5, 9, 77, 130, 12};
  std::vector<int32_t> padded = seq;
  padded.push_back(pad);
  padded.push_back(pad);
  std::vector<int32_t> inner = {5, 9, pad, 130, 12};
  CHECK(model->ScoredLength(padded) == 5);
  CHECK(model->ScoredLength(inner) == 5);
  CHECK(model->ScoredLength(std::vector<int32_t>{pad, pad}) == 1);
  std::vector<float> got;
  REQUIRE(model->Score({seq, padded, inner}, {}, &got).ok());
  CHECK(got[0] == got[1]);
  CHECK(std::fabs(got[0] - got[2]) > 1e-3);
}

TEST_CASE("reward model: scores do not depend on batching", "[reward_model]") {
  for (const std::string name : {"qwen3", "qwen3_moe"}) {
    SECTION(name) {
      auto model = LoadFixture(name);
      auto seqs = Sequences(ReadScores(name));
      std::vector<float> together;
      REQUIRE(model->Score(seqs, {}, &together).ok());
      // Every way of batching: one at a time, pairs, a token budget smaller than most sequences,
      // and the batch reversed (other neighbours, other offsets).
      std::vector<RewardModelBatching> ways = {{1 << 20, 1}, {1 << 20, 2}, {16, 256}, {1, 256}};
      // Metric: absolute difference; only fp32 rounding may differ (oneDNN blocks GEMMs by their
      // row count and runs a GEMV for tiny ones). Attention leaking across sequences or wrong
      // positions would move scores by > 1e-2.
      for (const RewardModelBatching& way : ways) {
        std::vector<float> got;
        REQUIRE(model->Score(seqs, way, &got).ok());
        size_t worst = 0;
        INFO("max_batch_tokens " << way.max_batch_tokens << " max_batch_seqs "
                                 << way.max_batch_seqs);
        CHECK(MaxAbsDiff(got, together, &worst) < 1e-5);
      }
      std::vector<std::vector<int32_t>> reversed(seqs.rbegin(), seqs.rend());
      std::vector<float> got;
      REQUIRE(model->Score(reversed, {}, &got).ok());
      std::reverse(got.begin(), got.end());  // num_labels == 1 for these fixtures
      size_t worst = 0;
      CHECK(MaxAbsDiff(got, together, &worst) < 1e-5);
    }
  }
}

TEST_CASE("reward model: batch-invariant mode makes scores bitwise independent of batching",
          "[reward_model]") {
  for (const std::string name : {"qwen3", "qwen3_moe"}) {
    SECTION(name) {
      auto model = LoadFixture(name);
      model->set_batch_invariant(true);
      auto seqs = Sequences(ReadScores(name));
      std::vector<float> together;
      REQUIRE(model->Score(seqs, {}, &together).ok());
      for (const RewardModelBatching& way :
           std::vector<RewardModelBatching>{{1 << 20, 1}, {1 << 20, 3}, {16, 256}}) {
        std::vector<float> got;
        REQUIRE(model->Score(seqs, way, &got).ok());
        CHECK(got == together);  // exact: bitwise
      }
      // Still the transformers numbers.
      const nlohmann::json doc = ReadScores(name);
      for (size_t i = 0; i < seqs.size(); ++i) {
        CHECK(std::fabs(together[i] - doc["scores"][i][0].get<float>()) < 1e-4);
      }
    }
  }
  // Through the reward function's "deterministic" param.
  auto fn = RewardRegistry::Global().Create(
      "model", {{"path", kFixtures + "qwen3"}, {"deterministic", true}, {"max_batch_seqs", 1}});
  REQUIRE(fn.ok());
  auto whole = RewardRegistry::Global().Create(
      "model", {{"path", kFixtures + "qwen3"}, {"deterministic", true}});
  REQUIRE(whole.ok());
  RewardInput a, b;
  a.prompt = "one", a.completion = "two";
  b.prompt = "three", b.completion = "four five";
  const auto x = (*fn)->Score({a, b}), y = (*whole)->Score({a, b});
  CHECK(x[0].score == y[0].score);
  CHECK(x[1].score == y[1].score);
}

TEST_CASE("reward model: bad sequences are rejected with a reason", "[reward_model]") {
  auto model = LoadFixture("qwen3");
  CHECK_FALSE(model->CheckSequence(std::vector<int32_t>{}).ok());
  CHECK(std::string(model->CheckSequence(std::vector<int32_t>{1, 272}).message())
            .find("outside the reward model's vocabulary") != std::string::npos);
  std::vector<int32_t> long_seq(model->max_length() + 1, 7);
  CHECK(std::string(model->CheckSequence(long_seq).message()).find("context") != std::string::npos);
  long_seq.back() = *model->pad_token_id();  // the trailing pad is not scored: fits again
  CHECK(model->CheckSequence(long_seq).ok());
  std::vector<float> got;
  auto s = model->Score({{1, 2}, {}}, {}, &got);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("sequence 1") != std::string::npos);
}

TEST_CASE("Model::FinalHidden checks its batch", "[reward_model]") {
  auto config = LoadModelConfig(kFixtures + "qwen3/config.json");
  REQUIRE(config.ok());
  config->tie_word_embeddings = true;
  auto model = Model<float>::Create(*config);
  REQUIRE(model.ok());
  std::vector<float> hidden;
  TokenBatch empty_seq;
  empty_seq.Add(std::vector<int32_t>{1, 2});
  empty_seq.Add(std::vector<int32_t>{});
  auto s = (*model)->FinalHidden(empty_seq, &hidden);
  CHECK(std::string(s.message()).find("sequence 1 is empty") != std::string::npos);
  CHECK_FALSE((*model)->FinalHidden(TokenBatch(), &hidden).ok());
  TokenBatch bad_id;
  bad_id.Add(std::vector<int32_t>{1, 272});
  CHECK(std::string((*model)->FinalHidden(bad_id, &hidden).message()).find("vocabulary") !=
        std::string::npos);
  TokenBatch ok;
  ok.Add(std::vector<int32_t>{1, 2, 3});
  ok.Add(std::vector<int32_t>{4});
  REQUIRE((*model)->FinalHidden(ok, &hidden).ok());
  CHECK(hidden.size() == 2 * 16);
}

// A copy of fixture `name` in a fresh directory, with its tensors edited by `edit`.
std::string EditedCheckpoint(const std::string& name,
                             const std::function<void(std::vector<TensorToWrite>*,
                                                      std::vector<std::vector<float>>*)>& edit) {
  const std::string dir =
      std::filesystem::temp_directory_path() /
      ("grpo_rm_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kFixtures + name + "/config.json", dir + "/config.json");
  auto file = SafetensorsFile::Open(kFixtures + name + "/model.safetensors");
  REQUIRE(file.ok());
  std::vector<std::vector<float>> data;
  data.reserve(64);
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& t : (*file)->tensors()) {
    data.emplace_back(t.numel());
    REQUIRE((*file)->ReadAsFloat(t, data.back().data()).ok());
    tensors.push_back({t.name, t.shape, data.back().data(), Dtype::kF32});
  }
  edit(&tensors, &data);
  REQUIRE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

TEST_CASE("reward model: bad checkpoints get one clear error", "[reward_model]") {
  // A causal-LM checkpoint: no score.weight.
  auto lm = RewardModel::Load(std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/hf/qwen3");
  REQUIRE_FALSE(lm.ok());
  CHECK(std::string(lm.status().message()).find("score.weight") != std::string::npos);

  const std::string wrong_shape = EditedCheckpoint("qwen3", [](auto* tensors, auto*) {
    for (auto& t : *tensors) {
      if (t.name == "score.weight") t.shape = {2, 8};  // 16 values, hidden is 16
    }
  });
  auto m = RewardModel::Load(wrong_shape);
  REQUIRE_FALSE(m.ok());
  CHECK(std::string(m.status().message()).find("[num_labels, 16]") != std::string::npos);

  const std::string extra = EditedCheckpoint("qwen3", [](auto* tensors, auto* data) {
    data->push_back(std::vector<float>(4, 1.0f));
    tensors->push_back({"score.bias", {4}, data->back().data(), Dtype::kF32});
  });
  m = RewardModel::Load(extra);
  REQUIRE_FALSE(m.ok());
  CHECK(std::string(m.status().message()).find("unexpected tensor 'score.bias'") !=
        std::string::npos);

  // A stray lm_head.weight is ignored (transformers ignores it too); scores unchanged.
  const std::string with_head = EditedCheckpoint("qwen3", [](auto* tensors, auto* data) {
    data->push_back(std::vector<float>(272 * 16, 0.5f));
    tensors->push_back({"lm_head.weight", {272, 16}, data->back().data(), Dtype::kF32});
  });
  m = RewardModel::Load(with_head);
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  const nlohmann::json doc = ReadScores("qwen3");
  std::vector<float> got;
  REQUIRE((*m)->Score(Sequences(doc), {}, &got).ok());
  CHECK(std::fabs(got[2] - doc["scores"][2][0].get<float>()) < 1e-4);
  for (const auto& d : {wrong_shape, extra, with_head}) std::filesystem::remove_all(d);
}

// ---- the `model` reward function ----

std::unique_ptr<RewardFunction> MakeModelReward(nlohmann::json params) {
  auto fn = RewardRegistry::Global().Create("model", params);
  INFO(fn.status().ToString());
  REQUIRE(fn.ok());
  return std::move(*fn);
}

RewardInput Item(const std::string& prompt, const std::string& completion) {
  RewardInput in;
  in.prompt = prompt;
  in.completion = completion;
  return in;
}

TEST_CASE("model reward: chatml text items equal transformers end to end", "[model_reward]") {
  for (const std::string name : {"qwen3", "qwen2"}) {
    SECTION(name) {
      const nlohmann::json doc = ReadScores(name);
      auto fn = MakeModelReward({{"path", kFixtures + name}});
      const auto* reward = dynamic_cast<const ModelReward*>(fn.get());
      REQUIRE(reward != nullptr);
      std::vector<RewardInput> items;
      for (const auto& it : doc["items"]) {
        items.push_back(Item(it["prompt"], it["completion"]));
        auto ids = reward->Tokens(items.back());
        REQUIRE(ids.ok());
        CHECK(*ids == it["ids"].get<std::vector<int32_t>>());
      }
      const auto out = fn->Score(items);
      REQUIRE(out.size() == items.size());
      for (size_t i = 0; i < out.size(); ++i) {
        INFO("item " << i << ": " << out[i].error);
        CHECK(out[i].error.empty());
        const double want = doc["items"][i]["scores"][0].get<double>();
        CHECK(std::fabs(out[i].score - want) < 1e-4);
        CHECK(out[i].components.at("raw") == out[i].score);
      }
    }
  }
}

TEST_CASE("model reward: label picks the logit", "[model_reward]") {
  const nlohmann::json doc = ReadScores("qwen2");
  auto fn = MakeModelReward({{"path", kFixtures + "qwen2"}, {"label", 1}});
  const auto out = fn->Score({Item(doc["items"][0]["prompt"], doc["items"][0]["completion"])});
  CHECK(std::fabs(out[0].score - doc["items"][0]["scores"][1].get<double>()) < 1e-4);
  auto bad =
      RewardRegistry::Global().Create("model", {{"path", kFixtures + "qwen2"}, {"label", 2}});
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("label") != std::string::npos);
}

TEST_CASE("model reward: template none, prompt_field and completion suffix", "[model_reward]") {
  auto raw = MakeModelReward({{"path", kFixtures + "qwen3"}, {"template", "none"}});
  const auto* r = dynamic_cast<const ModelReward*>(raw.get());
  auto ids = r->Tokens(Item("ab", "cd"));
  REQUIRE(ids.ok());
  CHECK(*ids == std::vector<int32_t>{'a', 'b', 'c', 'd'});  // toy tokenizer: id == byte

  auto from_extra = MakeModelReward({{"path", kFixtures + "qwen3"},
                                     {"prompt_field", "extra.question"},
                                     {"completion_suffix", ""}});
  const auto* e = dynamic_cast<const ModelReward*>(from_extra.get());
  RewardInput in = Item("ignored templated prompt", "7");
  in.extra = {{"question", nlohmann::json::array({{{"role", "user"}, {"content", "Q"}}})}};
  ids = e->Tokens(in);
  REQUIRE(ids.ok());
  // <|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n7
  CHECK(*ids == std::vector<int32_t>{257, 'u', 's', 'e', 'r', '\n', 'Q', 258, '\n', 257, 'a',
                                     's', 's', 'i', 's', 't', 'a',  'n', 't', '\n', '7'});
  in.extra = {{"other", 1}};
  const auto out = from_extra->Score({in});
  CHECK(out[0].error.find("extra has no \"question\"") != std::string::npos);
}

TEST_CASE("model reward: over-long items are truncated from the left of the prompt or rejected",
          "[model_reward]") {
  const std::string prompt(60, 'p');
  const std::string completion = "the completion";
  auto left = MakeModelReward({{"path", kFixtures + "qwen3"}, {"max_length", 40}});
  const auto* r = dynamic_cast<const ModelReward*>(left.get());
  auto ids = r->Tokens(Item(prompt, completion));
  REQUIRE(ids.ok());
  REQUIRE(ids->size() == 40);
  // The whole completion and suffix are kept at the end: "the completion" <|im_end|> "\n".
  std::vector<int32_t> tail(ids->end() - 16, ids->end());
  std::vector<int32_t> want(completion.begin(), completion.end());
  want.push_back(258);
  want.push_back('\n');
  CHECK(tail == want);
  CHECK((*ids)[0] == 'p');  // the prompt's left end (and the template head) went first
  // The truncated ids score exactly as the model scores them directly.
  auto model = LoadFixture("qwen3");
  std::vector<float> direct;
  REQUIRE(model->Score({*ids}, {}, &direct).ok());
  auto scored = left->Score({Item(prompt, completion), Item("short", "ok")});
  CHECK(scored[0].error.empty());
  CHECK(std::fabs(scored[0].score - direct[0]) < 1e-6);
  CHECK(scored[1].error.empty());
  // A completion that alone is over max_length is an error for that item only.
  scored = left->Score({Item("p", std::string(50, 'c')), Item("short", "ok")});
  CHECK(scored[0].error.find("completion alone") != std::string::npos);
  CHECK(scored[1].error.empty());

  auto reject = MakeModelReward(
      {{"path", kFixtures + "qwen3"}, {"max_length", 40}, {"truncation", "reject"}});
  scored = reject->Score({Item(prompt, completion), Item("short", "ok")});
  CHECK(scored[0].error.find("exceed max_length 40") != std::string::npos);
  CHECK(scored[1].error.empty());
  CHECK(scored[1].score == Approx(left->Score({Item("short", "ok")})[0].score).margin(1e-6));
}

TEST_CASE("model reward: normalization", "[model_reward]") {
  const std::vector<RewardInput> items = {Item("a", "one"), Item("b", "two"), Item("c", "three"),
                                          Item("d", "four")};
  auto none = MakeModelReward({{"path", kFixtures + "qwen3"}});
  auto affine = MakeModelReward(
      {{"path", kFixtures + "qwen3"}, {"normalize", "affine"}, {"shift", 0.5}, {"scale", 2.0}});
  auto zscore = MakeModelReward({{"path", kFixtures + "qwen3"}, {"normalize", "zscore"}});
  const auto raw = none->Score(items), a = affine->Score(items), z = zscore->Score(items);
  double mean = 0, sq = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    CHECK(a[i].score == Approx((raw[i].score - 0.5) / 2.0).margin(1e-9));
    CHECK(z[i].components.at("raw") == raw[i].score);
    mean += z[i].score;
    sq += z[i].score * z[i].score;
  }
  CHECK(std::fabs(raw[0].score - raw[1].score) > 1e-3);  // not a degenerate batch
  CHECK(mean / 4 == Approx(0).margin(1e-9));
  CHECK(sq / 4 == Approx(1).margin(1e-4));
  // Failed items are left out of the statistics.
  std::vector<RewardInput> with_bad = items;
  with_bad.push_back(Item("x", "\xff"));
  const auto zb = zscore->Score(with_bad);
  CHECK_FALSE(zb[4].error.empty());
  for (size_t i = 0; i < items.size(); ++i) CHECK(zb[i].score == Approx(z[i].score).margin(1e-9));
  auto bad = RewardRegistry::Global().Create(
      "model", {{"path", kFixtures + "qwen3"}, {"normalize", "zscore"}, {"scale", 2.0}});
  CHECK_FALSE(bad.ok());
}

TEST_CASE("model reward: composes with rule rewards under weights and routing", "[model_reward]") {
  const nlohmann::json config = {
      {"rewards",
       {{{"name", "model"},
         {"key", "rm"},
         {"weight", 0.5},
         {"params", {{"path", kFixtures + "qwen3"}}}},
        {{"name", "exact_match"}, {"weight", 1.0}, {"data_sources", {"qa"}}}}},
      {"failure_score", -3.0}};
  auto parsed = RewardSetConfig::FromJson(config);
  REQUIRE(parsed.ok());
  auto set = RewardSet::Create(*parsed);
  INFO(set.status().ToString());
  REQUIRE(set.ok());
  RewardInput qa = Item("What is 6*7?", "42");
  qa.ground_truth = "42";
  qa.data_source = "qa";
  RewardInput chat = Item("Say hi", "hi");
  chat.data_source = "chat";
  RewardInput broken = Item("x", "\xff\xfe");
  broken.data_source = "chat";
  const auto out = set->Score({qa, chat, broken});
  auto fn = MakeModelReward({{"path", kFixtures + "qwen3"}});
  const auto alone = fn->Score({qa, chat});
  CHECK(out[0].score == Approx(0.5 * alone[0].score + 1.0).margin(1e-9));
  CHECK(out[0].components.at("rm") == alone[0].score);
  CHECK(out[0].components.at("rm/raw") == alone[0].score);
  CHECK(out[0].components.at("exact_match") == 1.0);
  CHECK(out[1].score == Approx(0.5 * alone[1].score).margin(1e-9));
  CHECK(out[1].components.count("exact_match") == 0);
  CHECK(out[2].score == -3.0);
  CHECK(out[2].error.find("rm: completion: invalid UTF-8") != std::string::npos);
}

TEST_CASE("model reward: bad params get one clear error", "[model_reward]") {
  auto err = [](nlohmann::json params) {
    auto fn = RewardRegistry::Global().Create("model", params);
    REQUIRE_FALSE(fn.ok());
    return std::string(fn.status().message());
  };
  const std::string path = kFixtures + "qwen3";
  CHECK(err(nlohmann::json::object()).find("params.path: required") != std::string::npos);
  CHECK(err({{"path", path}, {"batch", 3}}).find("unknown field 'batch'") != std::string::npos);
  CHECK(err({{"path", path}, {"template", "chatml"}}).find("params.template") != std::string::npos);
  CHECK(err({{"path", path}, {"template", {{"name", "nope"}}}}).find("params.template") !=
        std::string::npos);
  CHECK(err({{"path", path}, {"max_length", 100000}}).find("max_position_embeddings") !=
        std::string::npos);
  CHECK(err({{"path", path}, {"truncation", "right"}}).find("\"left\", \"reject\"") !=
        std::string::npos);
  CHECK(err({{"path", path}, {"device", "cuda"}}).find("use \"cpu\"") != std::string::npos);
  CHECK(err({{"path", path}, {"prompt_field", "extra."}}).find("prompt_field") !=
        std::string::npos);
  CHECK(err({{"path", path + "/missing"}}).find("config.json") != std::string::npos);
  CHECK(err({{"path", path}, {"tokenizer", path + "/config.json"}}).size() > 0);
  CHECK(err({{"path", path}, {"max_batch_tokens", 0}}).find(">= 1") != std::string::npos);
}

}  // namespace
}  // namespace grpo
