// The GRPO training loop behind `grpo learner CONFIG`. One step:
//   1. take B prompts from the dataset, render them with the chat template, tokenize;
//   2. ask the rollout workers (in-process engines or remote RolloutServices) for G completions
//      each (balanced; a failed worker's undelivered groups are re-issued to the others:
//      learner/rollout_workers.h);
//   3. score every completion with the reward set (in-process rules, or a remote RewardService
//      through the "remote" reward); with dynamic sampling drop the groups whose rewards are all
//      equal and sample more prompts, up to max_gen_batches rounds;
//   4. advantages per group; old logprobs (recomputed by the learner, or the rollout's) and
//      reference logprobs when the KL coefficient is > 0;
//   5. ppo_epochs x mini_batches optimizer steps: each mini-batch holds whole groups, its loss
//      normalizer is computed over all of it, then micro-batches run forward/backward and
//      accumulate; AdamW with clipping and the schedule;
//   6. publish the new weights to every live worker under the next weight version;
//   7. metrics (console, metrics.jsonl, TensorBoard events, samples.jsonl) and a checkpoint every
//      checkpoint.every steps and at the end.
//
// Determinism: every random choice of step s (sampling seeds of each group, the mini-batch
// shuffle) is drawn from SplitMix64 streams keyed by (seed, s, ...); groups are processed in
// prompt order whatever order workers answer in. So a run resumed from the checkpoint of step k
// repeats steps k+1.. bit for bit (tests/learner/trainer_test.cc).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/checkpoint.h"
#include "learner/config.h"
#include "learner/dataset.h"
#include "learner/device_model.h"
#include "learner/local_data_parallel.h"
#include "learner/metrics.h"
#include "learner/optimizer.h"
#include "learner/rollout_workers.h"
#include "learner/weight_sync.h"
#include "model/chat_template.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "reward/reward_set.h"

namespace grpo {

struct TrainerOptions {
  bool resume = false;  // continue from the newest checkpoint under OUTPUT_DIR/checkpoints
  // Rollout workers to use instead of the ones the config names (tests inject fakes here).
  std::vector<std::unique_ptr<RolloutWorker>> workers;
  bool console = true;  // print the progress line
  // Passed to SaveCheckpoint (tests simulate a crash mid-write).
  std::function<absl::Status(const std::string&)> checkpoint_fault;
};

class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(LearnerConfig config,
                                                         TrainerOptions options);

  // Steps until config.total_steps, checkpointing as configured (always after the last step).
  absl::Status Run();
  // One step, then a checkpoint if one is due.
  absl::Status Step();
  absl::Status SaveCheckpointNow();

  int64_t steps_done() const { return step_; }
  Model<float>& policy() { return *policy_; }
  const std::map<std::string, double>& last_metrics() const { return last_metrics_; }
  std::string checkpoint_root() const;

 private:
  struct Group;
  struct Sample;
  Trainer() = default;

  absl::Status CollectGroups(std::vector<Group>* groups, std::map<std::string, double>* m);
  absl::Status PackBatch(const std::vector<Sample*>& seqs, size_t first, size_t last, bool replay,
                         TokenBatch* batch, std::vector<int32_t>* routing) const;
  absl::Status ComputeLogprobs(DeviceModel& model, const std::vector<Sample*>& seqs,
                               std::vector<double> Sample::*field);
  absl::Status TrainOnGroups(std::vector<Group>& groups, std::map<std::string, double>* m);
  // Pushes the policy to every live worker as version weight_version_ + 1 (then the current one).
  absl::Status PushWeights(std::map<std::string, double>* m);

  LearnerConfig config_;
  TrainerOptions options_;
  std::unique_ptr<Model<float>> policy_, reference_;
  // Where their forward and backward run (config.device); the weights stay in policy_/reference_.
  std::unique_ptr<DeviceModel> policy_dev_, reference_dev_;
  Device local_device_ = Device::kCpu;  // in-process engines (config.rollout.local_device)
  std::unique_ptr<Tokenizer> tokenizer_;
  std::string tokenizer_path_;
  std::unique_ptr<Dataset> dataset_;
  std::unique_ptr<Dataset> eval_dataset_;  // held-out set (config.eval.path), or null
  absl::Status EvaluateHeldOut(std::map<std::string, double>* m);
  std::unique_ptr<ChatTemplate> template_;
  std::unique_ptr<RewardSet> rewards_;
  std::vector<std::unique_ptr<RolloutWorker>> workers_;
  std::vector<bool> alive_;
  std::unique_ptr<WeightPublisher> publisher_;  // config.weight_sync's transport
  std::vector<int32_t> stop_ids_;
  std::unique_ptr<AdamW> optimizer_;
  // Every optimizer step goes through it: one rank (policy_, optimizer_) or data_parallel.ranks
  // ranks as threads, rank 0 being policy_ / optimizer_.
  std::unique_ptr<LocalDataParallel> dp_;
  std::unique_ptr<MetricsWriter> metrics_;
  int64_t step_ = 0;
  int64_t weight_version_ = 0;  // the version last pushed to the workers
  std::map<std::string, double> last_metrics_;
};

}  // namespace grpo
