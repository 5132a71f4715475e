// A tiny learner setup for tests: a random Qwen3-MoE over the toy character tokenizer written as
// an HF directory, a one-digit arithmetic dataset, a regex reward that a random policy hits about
// a third of the time (so groups have reward variance), and a learner config over them.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "learner/config.h"
#include "learner/tasks.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace grpo::testing {

inline nlohmann::json TinyLearnerModelJson() {
  return {{"architectures", {"Qwen3MoeForCausalLM"}},
          {"model_type", "qwen3_moe"},
          {"vocab_size", 263},
          {"hidden_size", 16},
          {"intermediate_size", 24},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"head_dim", 8},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 8},
          {"norm_topk_prob", true},
          {"mlp_only_layers", nlohmann::json::array()},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"max_position_embeddings", 128},
          {"tie_word_embeddings", false}};
}

// Writes DIR/model (config.json, model.safetensors, tokenizer.json) and DIR/train.jsonl; returns
// a config JSON over them with output_dir DIR/out.
inline nlohmann::json MakeLearnerFixture(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string model_dir = (fs::path(dir) / "model").string();
  auto cfg = ParseModelConfig(TinyLearnerModelJson(), "fixture");
  if (!cfg.ok()) throw std::runtime_error(std::string(cfg.status().message()));
  auto model = Model<float>::Create(*cfg);
  if (!model.ok()) throw std::runtime_error(std::string(model.status().message()));
  InitParams((*model)->layout(), 1234, 0.3f, (*model)->params());
  if (!SaveModel(**model, model_dir).ok()) throw std::runtime_error("save fixture model");
  if (!WriteToyTokenizer((fs::path(model_dir) / "tokenizer.json").string()).ok()) {
    throw std::runtime_error("write toy tokenizer");
  }
  ArithConfig ac;
  ac.n = 40;
  ac.seed = 5;
  ac.digits = 1;
  ac.ops = "+";
  auto problems = GenerateArith(ac);
  if (!problems.ok()) throw std::runtime_error("arith");
  const std::string data = (fs::path(dir) / "train.jsonl").string();
  {
    std::ofstream f(data);
    for (const ArithProblem& p : *problems) f << ArithRow(p).dump() << "\n";
  }
  return {
      {"model", model_dir},
      {"output_dir", (fs::path(dir) / "out").string()},
      {"seed", 42},
      {"total_steps", 4},
      {"data", {{"path", data}, {"seed", 3u}}},  // unsigned, as parsed from a file
      {"chat_template", {{"name", "custom"}, {"custom", "{prompt} "}}},
      {"reward", {{"rewards", {{{"name", "regex_match"}, {"params", {{"pattern", "[0-9]"}}}}}}}},
      {"rollout",
       {{"group_size", 4}, {"prompts_per_step", 4}, {"max_new_tokens", 6}, {"local_workers", 2}}},
      {"algorithm",
       {{"kl_coef", 0.05}, {"mini_batches", 2}, {"micro_batch_seqs", 3}, {"clip_high", 0.28}}},
      {"optimizer", {{"lr", 1e-2}, {"weight_decay", 0.0}}},
      {"log", {{"samples", 1}}},
  };
}

}  // namespace grpo::testing
