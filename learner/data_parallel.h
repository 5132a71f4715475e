// Data-parallel learners: R ranks each hold a replica of the policy and of the optimizer, every
// mini-batch's groups are split across them, and each optimizer step gives every rank the update
// that one learner would make on the whole mini-batch (up to float summation order):
//
//   1. the mini-batch's loss normalizers (sequences, unmasked tokens) are all-reduced before any
//      backward, so each rank's loss and gradient are its share of the GLOBAL mini-batch loss
//      (the aux-loss weight of a micro-batch is its share of the global sequence count too);
//   2. forward/backward over this rank's micro-batches; during the last micro-batch's backward
//      the model reports each block of finished gradients (Model::set_grad_ready_callback) and a
//      communication thread all-reduces (sums) each bucket of the gradient as soon as all of it
//      is final, overlapping communication with the rest of the backward;
//   3. the summed gradients are identical on every rank (the Communicator contract), so clipping
//      and AdamW give identical parameters everywhere (checked by VerifyReplicas);
//   4. the loss statistics (for metrics) are all-reduced too.
//
// The logic sees only the Communicator interface. The step takes a host-memory communicator:
// LocalGroup (ranks are threads of one process; on the CPU this is for correctness and tests, not
// speed: the GEMMs already use every core). A rank on a GPU (set_device_model) may also get a
// device-memory communicator (set_device_comm: NCCL, a GPU per rank) over which its gradients are
// summed on the device, step 2 included: the CUDA backward reports each block once its kernels
// are queued, with a fence the communication thread waits on before the bucket's all-reduce,
// which runs on an NCCL stream of its own beside the rest of the backward. The small collectives
// (counts, statistics, replica hashes: host vectors) stay on the host one; GradientReducer only
// passes pointers. A rank that fails
// mid-step aborts the communicators so the others stop with ABORTED; a rank that stalls makes
// the others' collectives time out with DEADLINE_EXCEEDED. Nothing hangs.
//
// Not here: where the groups come from, advantages and old/reference logprobs (the caller, e.g.
// learner/trainer.h, computes them for the whole batch), weight publishing and checkpoints (rank
// 0's job, in the caller).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "learner/device_model.h"
#include "learner/grpo.h"
#include "learner/optimizer.h"
#include "model/model.h"
#include "rollout/rollout_types.h"

namespace grpo {

// The `data_parallel` section of the learner config (learner/config.h).
struct DataParallelConfig {
  int64_t ranks = 1;            // learner replicas; 1 = no data parallelism
  double bucket_mb = 25;        // gradient all-reduce bucket, MiB of fp32 (PyTorch DDP's default)
  double timeout_s = 600;       // every collective; a peer silent this long fails the step
  bool check_replicas = false;  // after every optimizer step, compare parameter hashes across ranks

  // Errors name the key under `prefix` ("data_parallel.bucket_mb ...").
  absl::Status Validate(const std::string& prefix) const;
  // Bucket size in fp32 elements (>= 1).
  int64_t bucket_elems() const;
};

// Which groups of a mini-batch of num_groups rank `rank` of `world` trains on: the contiguous
// range [first, last) = [num_groups * rank / world, num_groups * (rank + 1) / world). Whole
// groups, deterministic, sizes differ by at most one; a rank may get none.
struct GroupRange {
  int64_t first = 0, last = 0;
};
GroupRange AssignGroups(int64_t num_groups, int rank, int world);

// A contiguous block of the flat gradient array.
struct GradBucket {
  int64_t first = 0;
  int64_t count = 0;
};
// Buckets of at most bucket_elems elements laid from the END of the array to its start: bucket 0
// holds the last parameters, which the backward finishes first (the lm_head and final norm, then
// the last layer). Every element lies in exactly one bucket.
std::vector<GradBucket> PlanGradBuckets(int64_t num_params, int64_t bucket_elems);

// Cumulative communication figures of one rank.
struct DataParallelStats {
  double allreduce_s = 0;       // seconds inside gradient all-reduces (overlapped or not)
  double allreduce_wait_s = 0;  // seconds the training thread waited for them after its backward
  double fence_wait_s = 0;      // seconds the communication thread waited for a GPU backward to
                                // compute a bucket it had queued (GradientReducer fences)
  double bytes_reduced = 0;     // gradient bytes this rank all-reduced
  int64_t buckets_reduced = 0;
};

// Sums a gradient array over the ranks in buckets, on a communication thread of its own that
// reduces bucket k as soon as every element of it is marked ready, strictly in bucket order (so
// every rank issues the same collectives in the same order, whatever order blocks arrive in).
//
//   reducer.Begin(grads, "step 3");
//   ... backward, calling reducer.MarkReady(first, count) for each finished block ...
//   RETURN_IF_ERROR(reducer.Finish());   // grads now hold the sum over ranks
//
// Every element must be marked ready exactly once per Begin() (a block marked twice is a bug:
// CHECK). Not thread-safe between Begin/Finish callers; MarkReady may come from any one thread.
//
// A block may come with a fence: the gradients were queued for computation, not yet computed (a
// GPU backward marks each block once its kernels are queued). Before a bucket's all-reduce the
// communication thread waits on the fence of the block that completed the bucket, the last to
// arrive (blocks are queued in the order they are marked, so that fence covers the bucket's
// earlier blocks too). A fence returns an error or DEADLINE_EXCEEDED after `timeout`; the round
// then fails with it.
class GradientReducer {
 public:
  using Fence = std::function<absl::Status(absl::Duration timeout)>;

  // comm outlives the reducer; num_params >= 1, bucket_elems >= 1.
  GradientReducer(comm::Communicator* comm, int64_t num_params, int64_t bucket_elems,
                  absl::Duration timeout);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  const std::vector<GradBucket>& buckets() const { return buckets_; }

  // Starts a round over grads (num_params floats, kept alive until Finish). `context` prefixes
  // errors ("data-parallel rank 1/2, optimizer step 7").
  void Begin(float* grads, std::string context);
  void MarkReady(int64_t first, int64_t count, Fence fence = nullptr);
  void MarkAllReady() { MarkReady(0, num_params_); }
  // This rank gives up the round (an error of its own): the thread stops waiting for blocks.
  // Call Communicator::Abort() first if a collective may be in flight, then Finish().
  void Cancel();
  // Waits until every bucket is reduced (or the round failed / was cancelled). Returns the first
  // collective error with the context and bucket, or CANCELLED after Cancel().
  absl::Status Finish();

  DataParallelStats stats() const;

 private:
  void Loop();

  comm::Communicator* const comm_;
  const int64_t num_params_;
  const absl::Duration timeout_;
  std::vector<GradBucket> buckets_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  float* grads_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string context_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> ready_ ABSL_GUARDED_BY(mu_);  // (buckets) elements marked ready
  std::vector<Fence> fences_ ABSL_GUARDED_BY(mu_);   // (buckets) the latest block's fence
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;             // next bucket to reduce
  bool active_ ABSL_GUARDED_BY(mu_) = false;         // a round is in progress
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  DataParallelStats stats_ ABSL_GUARDED_BY(mu_);
};

// All-reduces non-negative integer counts exactly (each is split into 12-bit limbs whose float
// sums are exact for up to 4096 ranks); counts must be < 2^36.
absl::Status AllReduceCounts(comm::Communicator& comm, absl::Span<int64_t> counts,
                             absl::Duration timeout);

// FNV-1a 64 of the parameter bits, gathered from every rank (through an all-reduce of one
// exactly-representable slot per rank) and compared: DATA_LOSS naming the first rank whose
// replica differs from rank 0's. Costs one pass over the parameters (host memory).
absl::Status VerifyReplicas(comm::Communicator& comm, const float* params, int64_t num_params,
                            absl::Duration timeout);

// One response sequence of a mini-batch, as the loss needs it. Spans are views that outlive the
// step; completion-length arrays are (C).
struct TrainSequence {
  absl::Span<const int32_t> prompt;      // (P) prompt ids
  absl::Span<const int32_t> completion;  // (C) generated ids
  absl::Span<const double> old_logprobs;
  absl::Span<const float> rollout_logprobs;  // the sampler's logprobs
  absl::Span<const double> ref_logprobs;     // empty unless the loss has a KL term
  const RoutingData* routing = nullptr;      // R3: the rollout's expert ids over P + C tokens
  double advantage = 0;
  double mask = 1;  // 0: every token of the sequence is masked out (overlong filter)
};

struct MiniBatchOptions {
  LossConfig loss;
  float temperature = 1.0f;
  int64_t micro_batch_seqs = 0;  // sequences per forward/backward on this rank; 0 = all of them
  double aux_loss_coef = 0;      // router load-balancing loss coefficient
  bool routing_replay = false;   // replay TrainSequence::routing (MoE models only)
  double lr = 0;                 // this optimizer step's learning rate
  int64_t opt_step = 0;          // for error messages ("optimizer step N")
};

struct MiniBatchResult {
  // No unmasked token in the whole mini-batch under token-mean: nothing was done (every rank
  // agrees, the decision is taken on the global normalizer).
  bool skipped_empty = false;
  double loss = 0;            // the mini-batch loss (global)
  double aux_loss_sum = 0;    // sum of the micro-batches' unscaled aux losses over all ranks
  double trained_tokens = 0;  // prompt + completion tokens through forward/backward, all ranks
  LossStats stats;            // global
  OptimizerStepResult opt;
};

// One optimizer step of one rank over its share of a mini-batch. With comm == nullptr it is the
// plain single-learner step (no collectives; statistics stay in fp64). With a communicator every
// rank must call Run() for every mini-batch, in the same order, even with no sequences.
class DataParallelStep {
 public:
  // policy, optimizer and comm outlive the step. config.ranks is not read (comm says the world).
  DataParallelStep(Model<float>* policy, AdamW* optimizer, comm::Communicator* comm,
                   const DataParallelConfig& config);

  absl::StatusOr<MiniBatchResult> Run(absl::Span<const TrainSequence> seqs,
                                      const MiniBatchOptions& options);

  int rank() const { return comm_ == nullptr ? 0 : comm_->rank(); }
  int world_size() const { return comm_ == nullptr ? 1 : comm_->world_size(); }
  DataParallelStats stats() const;

  // Forward and backward on `device` (learner/device_model.h; its host() must be this step's
  // policy) instead of the policy itself: how a learner trains on a GPU. Without a device
  // communicator the gradients come to the host after the last micro-batch and are all-reduced
  // there with the other ranks' (host-memory communicator; not overlapped with the backward);
  // with one, see set_device_comm. The updated weights go up before the next forward. null = the
  // CPU.
  void set_device_model(DeviceModel* device);
  // A device-memory communicator over the same ranks (NCCL, one GPU per rank, its stream
  // comm::NcclStreamOrder::kIndependent for the overlap): with a GPU device model the gradients
  // are then all-reduced on the device, in buckets, overlapped with the last micro-batch's
  // backward, and come to the host already summed; the host communicator keeps the small collectives
  // (normalizers, statistics, replica checks). An error in either aborts both. null: the host.
  void set_device_comm(comm::Communicator* device_comm);
  // Whether the next Run reduces the gradients on the device (a GPU model and a device comm).
  bool reduces_on_device() const { return device_ != nullptr && device_reducer_ != nullptr; }

  // Tests and tracing: called on the training thread after each grad-ready block of the last
  // micro-batch has been handed to the reducer.
  void set_grad_ready_observer(std::function<void(int64_t first, int64_t count)> observer) {
    observer_ = std::move(observer);
  }

 private:
  absl::Status ReduceResult(MiniBatchResult* r, const std::string& context);

  Model<float>* policy_;
  DeviceModel* device_ = nullptr;  // set_device_model
  AdamW* optimizer_;
  comm::Communicator* comm_;
  DataParallelConfig config_;
  absl::Duration timeout_;
  std::unique_ptr<GradientReducer> reducer_;
  comm::Communicator* device_comm_ = nullptr;        // set_device_comm
  std::unique_ptr<GradientReducer> device_reducer_;  // over device_comm_
  std::function<void(int64_t, int64_t)> observer_;
};

}  // namespace grpo
