// Supervised fine-tuning (SFT): next-token training on prompt + response text, the warm start of
// an R1-Zero-style run (`grpo sft`, and the "sft" stage of `grpo train`). A tiny model trained
// from scratch needs a base that already answers in the expected format, as R1-Zero starts from
// a pretrained base; the data can come from the task generators with a share of deliberately
// wrong answers, so the base is weak and reinforcement learning has something to fix.
//
// Loss: the mean negative log-likelihood of the response tokens (the prompt, rendered by the chat
// template, is context only), over all response tokens of a batch. Optimizer: learner/optimizer.h
// AdamW with its schedules. Batches are drawn with a SplitMix64 stream keyed by the seed, so a run
// is repeatable.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/optimizer.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"

namespace grpo {

// Where SFT examples come from: a JSONL file of {"prompt": string, "response": string} rows, or
// a generated task.
struct SftDataConfig {
  std::string path;          // JSONL file; when empty, `task` generates the examples
  std::string task;          // "arith" (learner/tasks.h ArithConfig) | "countdown"
  int64_t n = 4096;          // generated examples
  uint64_t seed = 1;
  int64_t digits = 2;        // arith
  std::string ops = "+";     // arith
  // Share of generated examples whose answer is replaced by a wrong one (arith: off by 1..10;
  // countdown: another problem's solution), so the base model is deliberately imperfect.
  double wrong_fraction = 0.0;
  // The response text; {question}, {expression} (e.g. "12+34", countdown: the solution) and
  // {answer} are filled in. The R1-Zero shape by default.
  std::string response_format = "<think>{expression}</think><answer>{answer}</answer>";
  // Rows whose prompt is in this JSONL dataset (learner/dataset.h rows, e.g. the held-out eval
  // set) are left out, so evaluation measures generalization. Optional.
  std::string exclude_prompts_of;
};

struct SftConfig {
  std::string model;       // HF directory to start from
  std::string tokenizer;   // "" = MODEL/tokenizer.json
  std::string output_dir;  // the trained model, an HF directory (config.json, safetensors, tokenizer)
  ChatTemplateConfig chat_template;
  std::string eos = "<|endoftext|>";  // token text appended to every response ("" = none)
  SftDataConfig data;
  int64_t steps = 500;
  int64_t batch_size = 32;  // sequences per step
  uint64_t seed = 0;
  OptimizerConfig optimizer;
  int64_t log_every = 50;
  // Where forward and backward run: "cpu", "cuda" or "auto" (cuda when a GPU is present); the
  // weights and AdamW stay in host memory (learner/device_model.h).
  std::string device = "cpu";

  absl::Status Validate() const;
};

// Every key with its default (SftConfigFromJson fills what the user leaves out).
const nlohmann::json& DefaultSftConfigJson();
// Unknown keys and wrong types are errors naming the key ("sft.data.digits ..."); `source`
// names the file in messages.
absl::StatusOr<SftConfig> SftConfigFromJson(const nlohmann::json& j, const std::string& source);

struct SftExample {
  std::string prompt;    // the user's question (rendered by the chat template before training)
  std::string response;  // what the model learns to write after it (EOS is appended)
};

// The examples of a data config (file or generated); errors name path:line.
absl::StatusOr<std::vector<SftExample>> MakeSftExamples(const SftDataConfig& config);

struct SftProgress {
  int64_t step = 0;  // 1-based
  double loss = 0;   // mean NLL per response token of this step's batch
  double lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;  // tokens processed so far (prompt + response)
  double seconds = 0;  // since the start
};

struct SftResult {
  double first_loss = 0;  // mean over the first log_every steps
  double last_loss = 0;   // mean over the last log_every steps
  int64_t tokens = 0;
  double seconds = 0;
};

// Trains and writes config.output_dir (atomically: a temporary directory renamed at the end).
// `on_progress` is called every log_every steps and after the last one.
absl::StatusOr<SftResult> RunSft(const SftConfig& config,
                                 const std::function<void(const SftProgress&)>& on_progress);

}  // namespace grpo
