// Tests for reward/judge_reward.h: verdict parsing, and the `judge` reward end to end on a judge
// whose answers are known in advance: a one-layer Qwen3 whose attention and MLP weights are zero
// and whose embedding / LM head make it a bigram table (x -> "Score: 7" <|im_end|>, y -> y y y
// ...), so greedy decoding writes exactly those verdicts. Also the deadline (items without a
// verdict get an error and Score returns) and config errors.
#include "reward/judge_reward.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"

namespace grpo {
namespace {

TEST_CASE("judge: the score is the number after the last prefix", "[judge]") {
  auto p = [](const std::string& verdict) { return ParseJudgeScore(verdict, "Score:"); };
  CHECK(*p("Score: 7") == 7);
  CHECK(*p("score:8.5 then SCORE:\t-2 done") == -2);
  CHECK(*p("Score: 10.") == 10);
  CHECK(*p("Score: +3.25/10") == 3.25);
  CHECK(p("Score: seven").status().code() == absl::StatusCode::kNotFound);
  CHECK(p("Score:").status().code() == absl::StatusCode::kNotFound);
  CHECK(p("no verdict here").status().code() == absl::StatusCode::kNotFound);
  CHECK(p("").status().code() == absl::StatusCode::kNotFound);
}

// Writes the bigram judge (see the file comment) to a fresh directory with the toy tokenizer.
std::string WriteBigramJudge() {
  const nlohmann::json cfg = {{"model_type", "qwen3"},
                              {"vocab_size", 272},
                              {"hidden_size", 16},
                              {"intermediate_size", 16},
                              {"num_hidden_layers", 1},
                              {"num_attention_heads", 2},
                              {"num_key_value_heads", 1},
                              {"head_dim", 8},
                              {"rms_norm_eps", 1e-6},
                              {"rope_theta", 10000.0},
                              {"max_position_embeddings", 256},
                              {"tie_word_embeddings", false}};
  auto config = ParseModelConfig(cfg, "bigram");
  REQUIRE(config.ok());
  auto model = Model<float>::Create(*config);
  REQUIRE(model.ok());
  Model<float>& m = **model;
  const ParamLayout& layout = m.layout();
  for (const ParamTensor& t : layout.tensors) {
    if (t.is_norm) std::fill_n(m.params() + t.offset, t.numel, 1.0f);
  }
  const std::map<int32_t, int32_t> next = {{'x', 'S'}, {'S', 'c'}, {'c', 'o'}, {'o', 'r'},
                                           {'r', 'e'}, {'e', ':'}, {':', ' '}, {' ', '7'},
                                           {'7', 258}, {'y', 'y'}};
  const int64_t H = 16;
  int64_t k = 0;
  for (const auto& [from, to] : next) {
    m.params()[layout.embed + from * H + k] = 1.0f;   // token `from` is basis vector k
    m.params()[layout.lm_head + to * H + k] = 10.0f;  // which votes for `to`
    ++k;
  }
  const std::string dir =
      std::filesystem::temp_directory_path() / ("grpo_judge_" + std::to_string(::getpid()));
  REQUIRE(SaveModel(m, dir).ok());
  std::filesystem::copy_file(std::string(GRPO_SOURCE_DIR) + "/configs/toy_tokenizer.json",
                             dir + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  return dir;
}

RewardInput Item(const std::string& completion) {
  RewardInput in;
  in.prompt = "q";
  in.completion = completion;
  return in;
}

TEST_CASE("judge: verdicts from the rollout engine become scores", "[judge]") {
  const std::string dir = WriteBigramJudge();
  auto fn = RewardRegistry::Global().Create("judge", {{"path", dir},
                                                      {"judge_prompt", "{completion}"},
                                                      {"template", "none"},
                                                      {"kv_budget_mb", 8},
                                                      {"max_new_tokens", 12}});
  INFO(fn.status().ToString());
  REQUIRE(fn.ok());
  const auto out = (*fn)->Score({Item("x"), Item("y"), Item(""), Item("\xff")});
  REQUIRE(out.size() == 4);
  INFO(out[0].error << " | " << out[0].info);
  CHECK(out[0].error.empty());
  CHECK(out[0].info == "Score: 7");
  CHECK(out[0].score == Approx(0.7));
  CHECK(out[0].components.at("verdict") == 7.0);
  CHECK(out[1].error.find("no \"Score:\" in the verdict (finish length)") != std::string::npos);
  CHECK(out[2].error.find("judge prompt: no tokens") != std::string::npos);
  CHECK(out[3].error.find("invalid UTF-8") != std::string::npos);

  // Out of range, and normalize off.
  auto raw = RewardRegistry::Global().Create("judge", {{"path", dir},
                                                       {"judge_prompt", "{completion}"},
                                                       {"template", "none"},
                                                       {"kv_budget_mb", 8},
                                                       {"normalize", false},
                                                       {"max_score", 5}});
  REQUIRE(raw.ok());
  CHECK((*raw)->Score({Item("x")})[0].error.find("outside [0, 5]") != std::string::npos);
  // A judge prompt that leaves no room for max_new_tokens in the context (256).
  auto tight = RewardRegistry::Global().Create("judge", {{"path", dir},
                                                         {"judge_prompt", "{completion}"},
                                                         {"template", "none"},
                                                         {"kv_budget_mb", 8},
                                                         {"max_new_tokens", 250}});
  REQUIRE(tight.ok());
  const auto t = (*tight)->Score({Item(std::string(10, 'x')), Item("x")});
  CHECK(t[0].error.find("over the judge's context") != std::string::npos);
  CHECK(t[1].error.empty());
  std::filesystem::remove_all(dir);
}

TEST_CASE("judge: the deadline bounds a Score call", "[judge]") {
  const std::string dir = WriteBigramJudge();
  // 64 judges that never stop (y y y ...) for 200 tokens each, within 1 ms: most cannot finish.
  auto fn = RewardRegistry::Global().Create("judge", {{"path", dir},
                                                      {"judge_prompt", "{completion}"},
                                                      {"template", "none"},
                                                      {"kv_budget_mb", 8},
                                                      {"max_new_tokens", 200},
                                                      {"deadline_ms", 1}});
  REQUIRE(fn.ok());
  std::vector<RewardInput> items(64, Item("y"));
  const auto out = (*fn)->Score(items);
  int late = 0;
  for (const RewardOutput& o : out) {
    CHECK_FALSE(o.error.empty());  // finished ones have no score either ("yyy...")
    late += o.error.find("no verdict within deadline_ms 1") != std::string::npos;
  }
  CHECK(late > 0);
  // The engine still works after a cancelled request: a verdict, or (1 ms is short) the deadline.
  const RewardOutput again = (*fn)->Score({Item("x")})[0];
  INFO(again.error);
  CHECK((again.error.empty() ? again.score == Approx(0.7)
                             : again.error.find("deadline") != std::string::npos));
  std::filesystem::remove_all(dir);
}

TEST_CASE("judge: config errors name the field", "[judge]") {
  auto err = [](nlohmann::json params) {
    auto fn = RewardRegistry::Global().Create("judge", params);
    REQUIRE_FALSE(fn.ok());
    return std::string(fn.status().message());
  };
  CHECK(err(nlohmann::json::object()).find("params.path") != std::string::npos);
  const std::string path = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/hf/qwen3";
  CHECK(err({{"path", path}, {"judge_prompt", "{answer}"}}).find("unknown placeholder {answer}") !=
        std::string::npos);
  CHECK(err({{"path", path}, {"judge_prompt", "a } b"}}).find("lone '}'") != std::string::npos);
  CHECK(err({{"path", path}, {"min_score", 5}, {"max_score", 1}}).find("max_score") !=
        std::string::npos);
  CHECK(err({{"path", path}, {"deadline_ms", 0}}).find("deadline_ms") != std::string::npos);
  CHECK(err({{"path", path}, {"top_p", 2.0}}).find("top_p") != std::string::npos);
  CHECK(err({{"path", path}, {"verdict", 1}}).find("unknown field 'verdict'") != std::string::npos);
}

}  // namespace
}  // namespace grpo
