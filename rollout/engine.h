// The rollout engine: turns requests (prompts + SamplingParams) into groups of completions with
// continuous batching, on the CPU model or (EngineOptions::device) the CUDA one
// (rollout/decode_model.h: the same loop, sampling and stop logic on either). One engine thread
// owns the model and loops:
//   1. apply a staged weight update once no sequence is running (see below);
//   2. admit waiting groups in arrival order while the decode batch has room (max_batch) and the
//      KV pool can reserve the group's rows: prompt + max_new_tokens for sample 0, max_new_tokens
//      for each other sample (a group that does not fit waits; it never fails);
//   3. prefill the admitted groups' prompts (each once, several per model call) into sample 0's
//      rows, let the group's other G-1 samples read those rows in place (SharePrefix), and sample
//      every sample's first token from the shared logits;
//   4. one decode step for every running sequence together (Model::Extend), sample, check stop
//      conditions; finished sequences release their KV rows (sample 0's once no sample of its
//      group reads the prompt any more), and a group is delivered as soon as its last sample
//      finishes.
//
// Reproducibility: every sample draws from its own random stream keyed by (seed, prompt_id,
// sample index), one uniform per token, and prefill and decode run with batch-invariant kernels
// (each token's arithmetic is independent of the other tokens in the call; kernels/cpu/gemm.h):
// so a completion depends only on its prompt, its sampling parameters and the weights, never on
// what else was batched. The same construction makes every logprob bitwise equal to
// Model<float>::Forward with set_batch_invariant(true) (the learner's forward in deterministic
// mode) on the same tokens, and within rounding (~1e-6) of the default, oneDNN-based Forward.
// On the CPU, SamplingParams::deterministic is therefore always satisfied; it is kept in the
// contract so that a faster non-invariant prefill can become the default later without changing
// what deterministic callers get. (The invariant kernels run at roughly 60-95% of oneDNN's speed
// on large row counts and faster than the small-M path at decode sizes; batching several
// groups' prompts into one prefill call more than pays for the difference.)
//
// On CUDA (bf16 weights and K/V, cuBLAS GEMMs that are not batch-invariant) logprobs agree with
// the CPU learner's to bf16 precision, and a completion can depend on what else was batched when
// two tokens nearly tie; requests with `deterministic` are refused there (INVALID_ARGUMENT).
// Logits come back to the host each step and are sampled there, exactly as on the CPU.
//
// Logprobs: those of the distribution the token was drawn from (ALGORITHMS.md section 10):
// softmax(logits / temperature) restricted to top-k, then to the top-p nucleus, renormalized.
// With top_k 0 and top_p 1 they are computed by the same kernel as the learner's
// (cpu::LogprobForward). Temperature 0 is greedy (argmax, lowest id on ties) and reports the
// temperature-1 logprob.
//
// Stop conditions, checked after each token in this order: a stop token (kept as the last token;
// stop_token_id set), a stop string (the decoded completion text contains it; the token that
// completed the match is kept and nothing is cut, so tokens and logprobs stay aligned and the
// text may run past the match within that last token; stop_string set), max_new_tokens (LENGTH).
//
// Weight updates: StageWeights() stores verified parameters; from then on no new sequence is
// admitted; running sequences finish on the old weights; then the engine copies the new
// parameters in and admission resumes. Every completion therefore has exactly one version. A
// second StageWeights() before the swap replaces the staged parameters (the newest wins).
//
// Cancellation and shutdown: Cancel() drops a request's waiting groups and running sequences at
// the next step and frees their KV rows (nothing more is delivered). Shutdown() ends every
// running sequence with finish reason ABORT, delivers their groups, fails requests that had
// groups still waiting with UNAVAILABLE, and stops the thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/cuda_model.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "rollout/rollout_types.h"

namespace grpo {

class DecodeModel;

struct EngineOptions {
  // KV cache pool for all running sequences, bytes. Sized at start-up.
  int64_t kv_budget_bytes = int64_t{256} << 20;
  // Most sequences in one decode step.
  int64_t max_batch = 64;
  // The version the initial weights are reported as.
  uint64_t initial_version = 0;
  // Where the model runs: kCuda copies the weights to the GPU at Create (UNAVAILABLE without
  // one); the KV budget is then device memory, at 2 bytes per K/V element instead of 4.
  Device device = Device::kCpu;

  absl::Status Validate() const;
};

// What the caller of Submit() gets back: groups as they complete, then the end of the request.
// Thread-safe; shared between the engine and the caller.
class RolloutRequest {
 public:
  enum class Wait { kGroup, kDone, kTimeout };
  // Waits up to `timeout` for the next finished group (kGroup: *group set) or the end of the
  // request (kDone: every group was delivered, or the request failed: see status()).
  Wait Next(GroupResult* group, absl::Duration timeout);
  // OK once every group was delivered; UNAVAILABLE after Shutdown(); CANCELLED after Cancel().
  absl::Status status() const;
  int64_t num_groups() const { return num_groups_; }

 private:
  friend class Engine;
  explicit RolloutRequest(int64_t num_groups) : num_groups_(num_groups) {}
  void Deliver(GroupResult group);
  void Finish(absl::Status status);

  const int64_t num_groups_;
  mutable absl::Mutex mu_;
  std::deque<GroupResult> ready_ ABSL_GUARDED_BY(mu_);
  int64_t delivered_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> cancelled_{false};
};

class Engine {
 public:
  // Takes the model (weights loaded). `tokenizer` (may be null: stop strings are then refused)
  // decodes completions for stop strings. Starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Model<float>> model,
                                                        std::unique_ptr<Tokenizer> tokenizer,
                                                        const EngineOptions& options);
  ~Engine();  // Shutdown()

  // Validates the request (INVALID_ARGUMENT naming the field: prompts[i].token_ids[j] out of the
  // vocabulary, an empty prompt, prompt + max_new_tokens over the context or over what the KV
  // pool can ever hold, sampling params, stop strings without a tokenizer) and queues it.
  // UNAVAILABLE after Shutdown().
  absl::StatusOr<std::shared_ptr<RolloutRequest>> Submit(std::vector<RolloutPrompt> prompts,
                                                         const SamplingParams& sampling);
  // Stops a request (idempotent; no-op once it is done).
  void Cancel(const std::shared_ptr<RolloutRequest>& request);
  // Convenience: Submit and collect every group, in prompt order.
  absl::StatusOr<std::vector<GroupResult>> GenerateAll(std::vector<RolloutPrompt> prompts,
                                                       const SamplingParams& sampling);

  // Stages verified parameters (num_params floats) as `version`, which must be newer than the
  // serving and any staged version (FAILED_PRECONDITION otherwise). Returns at once; the swap
  // happens when running sequences have finished.
  absl::Status StageWeights(uint64_t version, std::vector<float> params);
  // The same with the weights of `src`, copied device to device at the swap (an engine on cuda
  // colocated with a learner on the same GPU: weight_sync.transport "ipc"). The caller keeps
  // `src` alive and unchanged until WaitDeviceWeights returns. FAILED_PRECONDITION on the CPU.
  absl::Status StageDeviceWeights(uint64_t version, const CudaModel* src);
  // The same with a source known by its device buffers (CudaModel::weight_buffers() of a model
  // of this config, e.g. a learner's in another process imported through CUDA IPC: RolloutService
  // UpdateWeightsIpc). The caller keeps them alive and unchanged until WaitDeviceWeights returns.
  absl::Status StageDeviceWeights(uint64_t version, const CudaModel::WeightBuffers& src);
  // WaitApplied for a device-staged `version`, after which the source is never read again, OK or
  // not: on a failed wait (deadline, shutdown) a staged version the engine has not started copying
  // is taken back (the serving version stays), and a copy under way is waited for.
  absl::Status WaitDeviceWeights(uint64_t version, absl::Time deadline);
  // Waits until weights of `version` or newer are in the model (the swap applied, not just
  // staged). DEADLINE_EXCEEDED otherwise.
  absl::Status WaitApplied(uint64_t version, absl::Time deadline);
  // Newest version known (staged, else serving): the floor for the next update.
  uint64_t newest_version() const;
  // The parameter buffer of the last applied update (empty if none, or taken already), for the
  // next update to be received into (WeightAssembler::Reuse): the engine keeps one spare
  // num_params floats in memory so that updates do not fault in fresh pages every time.
  std::vector<float> TakeSpareParams();

  RolloutStatus GetStatus() const;
  void Shutdown();

  const ModelConfig& config() const { return config_; }
  int64_t num_params() const { return num_params_; }
  uint64_t layout_fingerprint() const { return fingerprint_; }
  // Longest prompt + max_new_tokens a request may ask for.
  int64_t max_context() const { return max_context_; }
  Device device() const { return options_.device; }

 private:
  struct Group;
  struct Sequence;
  struct Work;  // engine-thread state (model, KV pool, running sequences)
  Engine(std::unique_ptr<DecodeModel> model, std::unique_ptr<Tokenizer> tokenizer,
         const EngineOptions& options, const ModelConfig& config, int64_t num_params,
         uint64_t fingerprint, int64_t pool_rows);
  void Loop();

  const EngineOptions options_;
  const ModelConfig config_;
  const int64_t num_params_;
  const uint64_t fingerprint_;
  int64_t max_context_ = 0;
  int64_t kv_row_bytes_ = 0;    // one token's K and V over all layers
  bool shares_prefix_ = false;  // a group's samples read the prompt's rows (DecodeModel)
  std::unique_ptr<Work> work_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Group>> waiting_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t staged_version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t applied_version_ ABSL_GUARDED_BY(mu_) = 0;  // WaitApplied
  // StageWeights / StageDeviceWeights: UNAVAILABLE while stopping, FAILED_PRECONDITION unless
  // `version` is newer than the serving and any staged one.
  absl::Status CheckStageable(uint64_t version) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<float> staged_params_ ABSL_GUARDED_BY(mu_);
  // Instead of staged_params_: the device source of the staged version (bf16 null: none).
  CudaModel::WeightBuffers staged_device_ ABSL_GUARDED_BY(mu_);
  bool copying_device_ ABSL_GUARDED_BY(mu_) = false;      // the engine thread reads the source now
  std::vector<float> spare_params_ ABSL_GUARDED_BY(mu_);  // TakeSpareParams
  // Status figures, written by the engine thread.
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_sequences_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t kv_bytes_used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t total_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<absl::Time, int64_t>> recent_ ABSL_GUARDED_BY(mu_);  // (time, tokens)

  std::thread thread_;
};

}  // namespace grpo
