// The learner's run config: one JSON file, every key documented with its default in
// DefaultLearnerConfigJson() (learner/config.cc; `grpo learner --print-defaults` prints it),
// `--set key.sub=value` overrides, unknown keys rejected by their full name, values range-checked.
//
// The file is merged key by key onto the defaults, so a config names only what it changes. Three
// subtrees are passed whole to their own parsers, which also reject unknown keys: "data"
// (learner/dataset.h DatasetConfig), "chat_template" (model/chat_template.h) and "reward"
// (reward/reward_set.h RewardSetConfig; a remote reward service is the "remote" reward there).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/data_parallel.h"
#include "learner/dataset.h"
#include "learner/grpo.h"
#include "learner/optimizer.h"
#include "learner/weight_sync_config.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"

namespace grpo {

struct LearnerRolloutConfig {
  // Remote RolloutService addresses. Empty: generate in-process (learner/rollout.h LocalRollout).
  std::vector<std::string> workers;
  int64_t local_workers = 1;      // in-process engines when `workers` is empty (groups balanced)
  // Where those engines decode: "cpu", "cuda" or "auto" (cuda when a GPU is present, unless
  // `deterministic` needs the CPU's batch-invariant kernels).
  std::string local_device = "cpu";
  int64_t group_size = 8;         // G
  int64_t prompts_per_step = 16;  // B prompts -> B * G completions per step
  double temperature = 1.0;
  int64_t max_new_tokens = 64;
  std::vector<std::string> stop_tokens;  // token strings (e.g. "<|im_end|>") that end a completion
  int64_t max_prompt_tokens = 512;       // longer prompts are an error naming the dataset row
  double timeout_s = 600;                // per rollout call / weight push to a remote worker
  // Batch-invariant kernels in rollout and learner: rollout logprobs equal the learner's bitwise.
  bool deterministic = false;
};

struct LearnerAlgorithmConfig {
  AdvantageConfig advantage;
  LossConfig loss;
  int64_t ppo_epochs = 1;
  int64_t mini_batches = 1;      // optimizer steps per epoch; the step's groups split evenly
  int64_t micro_batch_seqs = 0;  // sequences per forward/backward; 0 = the whole mini-batch
  std::string old_logprobs = "recompute";  // "recompute" (decoupled) | "rollout" (bypass)
  int64_t ref_refresh_every = 0;  // copy the policy into the reference every N steps; 0 never
  bool dynamic_sampling = false;  // drop zero-variance groups and sample more prompts
  int64_t max_gen_batches = 10;   // dynamic sampling: rollout rounds per step at most
  bool overlong_filter = false;   // mask every token of a completion that hit max_new_tokens
  bool routing_replay = false;    // R3: replay the rollout's expert ids in every learner forward
  double aux_loss_coef = 0.0;     // router load-balancing loss coefficient (HF uses 0.001)
};

// Held-out evaluation during training (learner/eval.h): greedy accuracy of the current policy on
// a dataset every N steps, logged as eval/accuracy and eval/mean_reward.
struct LearnerEvalConfig {
  std::string path;            // JSONL dataset (learner/dataset.h rows); "" = no evaluation
  int64_t every = 0;           // steps between evaluations (and after the last step); 0 = never
  int64_t samples = 1;         // completions per prompt
  double temperature = 0.0;    // 0 = greedy
  int64_t max_new_tokens = 0;  // 0 = rollout.max_new_tokens
  int64_t limit = 0;           // first N rows; 0 = all
};

struct LearnerConfig {
  std::string model;       // HF directory with the initial policy (config.json + safetensors)
  std::string tokenizer;   // tokenizer.json; "" = MODEL/tokenizer.json
  std::string output_dir;  // metrics, event files, samples, checkpoints
  uint64_t seed = 0;       // every random stream of the run derives from (seed, step, ...)
  int64_t total_steps = 1;
  // Where the policy's and the reference's forward and backward run: "cpu", "cuda" or "auto"
  // (cuda when a GPU is present, unless rollout.deterministic needs the CPU). The weights and
  // the optimizer stay in host memory either way (learner/device_model.h); with
  // data_parallel.ranks > 1 each rank computes on a GPU (rank r on GPU r modulo the GPUs).
  std::string device = "cpu";
  DatasetConfig data;
  ChatTemplateConfig chat_template;
  nlohmann::json reward;  // a RewardSetConfig object
  LearnerRolloutConfig rollout;
  LearnerAlgorithmConfig algorithm;
  // Learner replicas training on shares of each mini-batch (learner/data_parallel.h); on the CPU
  // threads of this process (learner/local_data_parallel.h).
  DataParallelConfig data_parallel;
  OptimizerConfig optimizer;
  int64_t checkpoint_every = 0;  // steps; 0 = only at the end
  int64_t checkpoint_keep = 3;   // newest K kept
  int64_t log_samples = 2;       // completions written to samples.jsonl per step
  bool tensorboard = true;
  LearnerEvalConfig eval;
  WeightSyncConfig weight_sync;  // how weights reach the workers (learner/weight_sync_config.h)

  // Range and consistency checks; errors name the key ("algorithm.loss.clip_low ...").
  absl::Status Validate() const;
};

// Every key with its default value (the documentation of the format; see config.cc comments).
const nlohmann::json& DefaultLearnerConfigJson();

// Applies "key.sub=value" to a config JSON: the value is parsed as JSON when it parses (numbers,
// true/false, arrays, quoted strings), else taken as a plain string. The key must exist in the
// defaults (or lie inside one of the pass-through subtrees).
absl::Status ApplyOverride(const std::string& assignment, nlohmann::json* config);

// Merges `user` onto the defaults (unknown keys and type mismatches are errors naming the key),
// parses and validates. `source` (the file) prefixes errors.
absl::StatusOr<LearnerConfig> ParseLearnerConfig(const nlohmann::json& user,
                                                 const std::string& source);

// Reads the file, applies the overrides in order, parses. Relative paths in the config are taken
// relative to the current directory.
absl::StatusOr<LearnerConfig> LoadLearnerConfig(const std::string& path,
                                                const std::vector<std::string>& overrides);

}  // namespace grpo
