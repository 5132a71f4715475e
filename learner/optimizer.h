// AdamW with fp32 state over a model's flat parameter and gradient arrays (Model<float>::params()
// and grads(), one layout), global-norm gradient clipping, skipping of steps whose gradients are
// not finite, and constant / cosine learning-rate schedules with linear warmup (ALGORITHMS.md §11,
// PyTorch AdamW and verl's schedules). The state serializes to a small binary file for checkpoints.
//
// Not here: which parameters exist (model/), when to step (learner/trainer.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json_config.h"

namespace grpo {

struct OptimizerConfig {
  double lr = 1e-6;  // peak learning rate (verl actor, DeepSeekMath, DAPO)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;         // decoupled, on every parameter (verl FSDP default)
  double max_grad_norm = 1.0;         // global-norm clip; <= 0 turns clipping off
  std::string schedule = "constant";  // "constant" | "cosine"
  int64_t warmup_steps = 0;           // linear warmup from warmup_init_ratio * lr
  double warmup_init_ratio = 0.0;     // cosine only (verl init_lr_ratio); constant starts at 0
  double min_lr_ratio = 0.0;          // cosine floor, as a fraction of lr
  double num_cycles = 0.5;            // cosine: 0.5 = one half-period down to the floor
  // The model's working weights: "fp32" (AdamW updates them in place) or "bf16" (they are kept
  // rounded to bf16 values, round to nearest even, and AdamW updates an fp32 master copy it
  // holds: the CUDA backend's and the mixed-precision peers' arrangement). With "bf16" the
  // forward, the backward, the reference model and the rollout workers all compute with the same
  // bf16-valued weights, which decode streams at 2 bytes per element (rollout/README.md).
  std::string weight_dtype = "fp32";

  absl::Status Validate() const;
};

// The fields of an "optimizer" section of a merged config (its keys are OptimizerConfig's names),
// read from `prefix` ("optimizer"); shared by the learner and SFT configs.
OptimizerConfig ReadOptimizerConfig(ConfigReader& r, const std::string& prefix);

// The learning rate at optimizer step `step` (0-based) of `total_steps` (verl torch_functional):
//   constant: lr * min(1, step / max(1, W))  when W > 0, else lr
//   cosine:   step < W: lr * (init + (1 - init) * step / W)
//             else lr * max(min_ratio, x * (1 - min_ratio) / 2 + (1 + min_ratio) / 2),
//                  x = cos(pi * num_cycles * 2 * (step - W) / max(1, total - W))
double LearningRate(const OptimizerConfig& config, int64_t step, int64_t total_steps);

// Sum of squares of n floats in fp64, with a fixed summation order for any thread count (so the
// value, and every step that uses it, is the same bit for bit on every run).
double SumOfSquares(const float* x, int64_t n);

// x[i] = x[i] rounded to the nearest bf16 value (ties to even), in place: the weights of an
// optimizer.weight_dtype "bf16" run.
void RoundToBf16InPlace(float* x, int64_t n);

struct OptimizerStepResult {
  double grad_norm = 0;   // global norm before clipping (inf/nan when skipped)
  double clip_scale = 1;  // factor the gradients were multiplied by
  bool skipped = false;   // non-finite gradients: parameters and state untouched
};

class AdamW {
 public:
  AdamW(int64_t num_params, OptimizerConfig config);

  // Ties the optimizer to the model's weights; call once before the first forward and after any
  // RestoreState. weight_dtype "bf16": `params` become the master copy (unless a restored state
  // brought one) and are rounded to bf16 values in place. "fp32": a master copy that a restored
  // state brought (a bf16 run resumed as fp32) is copied into `params`, so no precision is lost,
  // and dropped. Step binds lazily if this was not called.
  void BindWeights(float* params);
  bool bf16_weights() const { return config_.weight_dtype == "bf16"; }
  // The fp32 master copy (num_params floats), or null when the weights are their own master.
  const float* master() const { return master_.empty() ? nullptr : master_.data(); }

  // Clips the gradients (in place), then one AdamW step with learning rate `lr`:
  //   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
  //   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
  // When the gradient norm is not finite nothing changes (not even the step count).
  OptimizerStepResult Step(float* params, float* grads, double lr);

  int64_t step_count() const { return step_; }
  int64_t num_params() const { return static_cast<int64_t>(m_.size()); }
  const OptimizerConfig& config() const { return config_; }

  // Binary state: magic, version 2, n, step, has_master (int64 0/1), m (n floats), v (n floats),
  // the master copy (n floats, when has_master), CRC32C of all before it. Version 1 (no
  // has_master, no master copy) is still read.
  std::string SerializeState() const;
  // Errors: wrong magic/version, size for another parameter count, a bad checksum (names `source`).
  // Follow it with BindWeights.
  absl::Status RestoreState(const std::string& bytes, const std::string& source);

 private:
  OptimizerConfig config_;
  int64_t step_ = 0;
  std::vector<float> m_, v_;  // (num_params) fp32
  std::vector<float> master_;  // (num_params) fp32 with bf16 weights once bound; else empty
};

}  // namespace grpo
