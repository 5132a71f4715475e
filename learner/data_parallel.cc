// Data-parallel learner step (see data_parallel.h).
#include "learner/data_parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace grpo {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Exact integer all-reduce through float sums: 12-bit limbs, 3 per count.
constexpr int kLimbBits = 12;
constexpr int kLimbs = 3;
constexpr int64_t kMaxExactWorld = int64_t{1} << (24 - kLimbBits);

uint64_t Fnv1a64(const void* data, size_t bytes) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

absl::Status DataParallelConfig::Validate(const std::string& prefix) const {
  if (ranks < 1 || ranks > kMaxExactWorld) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ".ranks ", ranks, " must lie in [1, ", kMaxExactWorld, "]"));
  }
  // At least one fp32 element, at most 4 GiB per bucket.
  if (!(bucket_mb * 1024 * 1024 >= 4 && bucket_mb <= 4096)) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, ".bucket_mb ", bucket_mb, " must lie in [4 bytes, 4096] MiB (PyTorch uses 25)"));
  }
  if (!(timeout_s > 0 && std::isfinite(timeout_s))) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ".timeout_s ", timeout_s, " must be > 0 seconds"));
  }
  return absl::OkStatus();
}

int64_t DataParallelConfig::bucket_elems() const {
  return std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / sizeof(float)));
}

GroupRange AssignGroups(int64_t num_groups, int rank, int world) {
  GRPO_CHECK(world >= 1 && rank >= 0 && rank < world && num_groups >= 0);
  return {num_groups * rank / world, num_groups * (rank + 1) / world};
}

std::vector<GradBucket> PlanGradBuckets(int64_t num_params, int64_t bucket_elems) {
  GRPO_CHECK(num_params >= 0 && bucket_elems >= 1);
  std::vector<GradBucket> b;
  for (int64_t end = num_params; end > 0; end -= bucket_elems) {
    const int64_t first = std::max<int64_t>(0, end - bucket_elems);
    b.push_back({first, end - first});
  }
  return b;
}

// ---- GradientReducer ----

GradientReducer::GradientReducer(comm::Communicator* comm, int64_t num_params, int64_t bucket_elems,
                                 absl::Duration timeout)
    : comm_(comm),
      num_params_(num_params),
      timeout_(timeout),
      buckets_(PlanGradBuckets(num_params, bucket_elems)) {
  GRPO_CHECK(comm != nullptr && num_params >= 1);
  ready_.assign(buckets_.size(), 0);
  fences_.assign(buckets_.size(), nullptr);
  thread_ = std::thread([this] { Loop(); });
}

GradientReducer::~GradientReducer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void GradientReducer::Begin(float* grads, std::string context) {
  absl::MutexLock lock(&mu_);
  GRPO_CHECK_MSG(!active_, "GradientReducer::Begin while a round is in progress");
  grads_ = grads;
  context_ = std::move(context);
  std::fill(ready_.begin(), ready_.end(), 0);
  std::fill(fences_.begin(), fences_.end(), nullptr);
  next_ = 0;
  cancelled_ = false;
  status_ = absl::OkStatus();
  active_ = true;
}

void GradientReducer::MarkReady(int64_t first, int64_t count, Fence fence) {
  GRPO_CHECK(first >= 0 && count >= 0 && first + count <= num_params_);
  if (count == 0) return;
  const int64_t n = buckets_[0].count;  // every bucket but the last (lowest) has n elements
  const int64_t last = first + count;   // exclusive
  const int64_t k_first = (num_params_ - last) / n;      // bucket of element last - 1
  const int64_t k_last = (num_params_ - 1 - first) / n;  // bucket of element first
  absl::MutexLock lock(&mu_);
  GRPO_CHECK_MSG(active_ || cancelled_ || !status_.ok(),
                 "GradientReducer::MarkReady outside a round");
  for (int64_t k = k_first; k <= k_last; ++k) {
    const GradBucket& b = buckets_[k];
    const int64_t overlap = std::min(last, b.first + b.count) - std::max(first, b.first);
    ready_[k] += overlap;
    GRPO_CHECK_MSG(ready_[k] <= b.count, "GradientReducer: a gradient block was marked twice");
    fences_[k] = fence;  // the latest block's fence covers the earlier ones (queue order)
  }
}

void GradientReducer::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
}

absl::Status GradientReducer::Finish() {
  const auto t0 = std::chrono::steady_clock::now();
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !active_; };
  if (active_ && !cancelled_) {
    // Every element must have been marked; otherwise the wait below would never end.
    int64_t marked = 0;
    for (int64_t r : ready_) marked += r;
    GRPO_CHECK_MSG(marked == num_params_,
                   "GradientReducer::Finish before every gradient was marked ready");
  }
  mu_.Await(absl::Condition(&idle));
  stats_.allreduce_wait_s += SecondsSince(t0);
  return status_;
}

DataParallelStats GradientReducer::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void GradientReducer::Loop() {
  mu_.Lock();
  auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (active_ && (cancelled_ || ready_[next_] == buckets_[next_].count));
  };
  while (true) {
    mu_.Await(absl::Condition(&work));
    if (stop_) break;
    if (cancelled_) {
      if (status_.ok()) status_ = absl::CancelledError(context_ + ": cancelled by this rank");
      active_ = false;
      continue;
    }
    const size_t k = next_;
    const GradBucket b = buckets_[k];
    float* data = grads_ + b.first;
    Fence fence = std::move(fences_[k]);
    fences_[k] = nullptr;
    mu_.Unlock();
    absl::Status s;
    if (fence) {
      const auto tf = std::chrono::steady_clock::now();
      s = WithContext(fence(timeout_), "waiting for the backward to compute the bucket");
      const double df = SecondsSince(tf);
      absl::MutexLock lock(&mu_);
      stats_.fence_wait_s += df;
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (s.ok()) s = comm_->AllReduceSum(data, b.count, timeout_);
    const double dt = SecondsSince(t0);
    mu_.Lock();
    stats_.allreduce_s += dt;
    if (!s.ok()) {
      status_ = WithContext(
          s, absl::StrFormat("%s: all-reduce of gradient bucket %d of %d (elements [%d, %d))",
                             context_, k, buckets_.size(), b.first, b.first + b.count));
      active_ = false;
      continue;
    }
    stats_.bytes_reduced += static_cast<double>(b.count) * sizeof(float);
    stats_.buckets_reduced += 1;
    if (++next_ == buckets_.size()) active_ = false;
  }
  mu_.Unlock();
}

// ---- Exact small collectives ----

absl::Status AllReduceCounts(comm::Communicator& comm, absl::Span<int64_t> counts,
                             absl::Duration timeout) {
  if (comm.world_size() > kMaxExactWorld) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllReduceCounts: exact for at most ", kMaxExactWorld, " ranks, not ", comm.world_size()));
  }
  constexpr int64_t kMask = (int64_t{1} << kLimbBits) - 1;
  std::vector<float> buf(counts.size() * kLimbs);
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0 || counts[i] >= (int64_t{1} << (kLimbBits * kLimbs))) {
      return absl::InvalidArgumentError(
          absl::StrCat("AllReduceCounts: count ", counts[i], " is outside [0, 2^36)"));
    }
    for (int j = 0; j < kLimbs; ++j) {
      buf[i * kLimbs + j] = static_cast<float>((counts[i] >> (kLimbBits * j)) & kMask);
    }
  }
  RETURN_IF_ERROR(comm.AllReduceSum(buf.data(), static_cast<int64_t>(buf.size()), timeout));
  for (size_t i = 0; i < counts.size(); ++i) {
    int64_t v = 0;
    for (int j = 0; j < kLimbs; ++j) {
      v += static_cast<int64_t>(buf[i * kLimbs + j]) << (kLimbBits * j);
    }
    counts[i] = v;
  }
  return absl::OkStatus();
}

absl::Status VerifyReplicas(comm::Communicator& comm, const float* params, int64_t num_params,
                            absl::Duration timeout) {
  const uint64_t h = Fnv1a64(params, static_cast<size_t>(num_params) * sizeof(float));
  const int world = comm.world_size(), rank = comm.rank();
  // One slot of four 16-bit limbs per rank; only the owner writes a slot, so the sums are exact.
  std::vector<float> slots(static_cast<size_t>(world) * 4, 0.0f);
  for (int j = 0; j < 4; ++j) slots[rank * 4 + j] = static_cast<float>((h >> (16 * j)) & 0xffff);
  RETURN_IF_ERROR(comm.AllReduceSum(slots.data(), static_cast<int64_t>(slots.size()), timeout));
  for (int r = 1; r < world; ++r) {
    if (!std::equal(slots.begin() + r * 4, slots.begin() + r * 4 + 4, slots.begin())) {
      return absl::DataLossError(absl::StrFormat(
          "the parameters of data-parallel rank %d differ from rank 0's: the replicas diverged "
          "(every rank must start from the same weights and optimizer state)",
          r));
    }
  }
  return absl::OkStatus();
}

// ---- DataParallelStep ----

DataParallelStep::DataParallelStep(Model<float>* policy, AdamW* optimizer, comm::Communicator* comm,
                                   const DataParallelConfig& config)
    : policy_(policy),
      optimizer_(optimizer),
      comm_(comm),
      config_(config),
      timeout_(absl::Seconds(config.timeout_s)) {
  GRPO_CHECK(policy != nullptr && optimizer != nullptr);
  GRPO_CHECK(optimizer->num_params() == policy->num_params());
  if (comm_ != nullptr) {
    // The gradients are reduced in host memory (Model<float>'s; a device model's are fetched
    // there first).
    GRPO_CHECK_MSG(comm_->memory() == comm::MemorySpace::kHost,
                   "DataParallelStep: the CPU model needs a host-memory communicator");
    reducer_ = std::make_unique<GradientReducer>(comm_, policy->num_params(), config.bucket_elems(),
                                                 timeout_);
  }
}

void DataParallelStep::set_device_model(DeviceModel* device) {
  GRPO_CHECK_MSG(device == nullptr || &device->host() == policy_,
                 "DataParallelStep: a device model must compute for this step's policy");
  // A CPU DeviceModel computes with the policy itself: the plain path (whose backward reports
  // gradient blocks to the reducer as they finish).
  device_ = device != nullptr && device->device() == Device::kCuda ? device : nullptr;
}

void DataParallelStep::set_device_comm(comm::Communicator* device_comm) {
  GRPO_CHECK_MSG(device_comm == nullptr ||
                     (comm_ != nullptr && device_comm->memory() == comm::MemorySpace::kDevice &&
                      device_comm->world_size() == comm_->world_size() &&
                      device_comm->rank() == comm_->rank()),
                 "DataParallelStep: a device communicator must span the host one's ranks");
  device_comm_ = device_comm;
  device_reducer_.reset();
  if (device_comm != nullptr) {
    device_reducer_ = std::make_unique<GradientReducer>(device_comm, policy_->num_params(),
                                                        config_.bucket_elems(), timeout_);
  }
}

DataParallelStats DataParallelStep::stats() const {
  DataParallelStats s = reducer_ == nullptr ? DataParallelStats{} : reducer_->stats();
  if (device_reducer_ != nullptr) {
    const DataParallelStats d = device_reducer_->stats();
    s.allreduce_s += d.allreduce_s;
    s.allreduce_wait_s += d.allreduce_wait_s;
    s.fence_wait_s += d.fence_wait_s;
    s.bytes_reduced += d.bytes_reduced;
    s.buckets_reduced += d.buckets_reduced;
  }
  return s;
}

absl::StatusOr<MiniBatchResult> DataParallelStep::Run(absl::Span<const TrainSequence> seqs,
                                                      const MiniBatchOptions& o) {
  const std::string context =
      comm_ == nullptr ? absl::StrCat("optimizer step ", o.opt_step)
                       : absl::StrFormat("data-parallel rank %d of %d, optimizer step %d", rank(),
                                         world_size(), o.opt_step);
  MiniBatchResult result;
  // Normalizers over the whole (global) mini-batch, before any backward.
  int64_t counts[2] = {static_cast<int64_t>(seqs.size()), 0};
  for (const TrainSequence& s : seqs) {
    if (s.mask != 0) counts[1] += static_cast<int64_t>(s.completion.size());
  }
  if (comm_ != nullptr) {
    RETURN_IF_ERROR(WithContext(AllReduceCounts(*comm_, absl::MakeSpan(counts), timeout_),
                                absl::StrCat(context, ": all-reduce of the loss normalizers")));
  }
  LossNormalizer norm;
  norm.num_seqs = counts[0];
  norm.num_tokens = static_cast<double>(counts[1]);
  if (norm.num_seqs == 0 ||
      (norm.num_tokens == 0 && o.loss.aggregation == LossAggregation::kTokenMean)) {
    result.skipped_empty = true;
    return result;
  }

  // The gradients are summed over the ranks by `grad_reducer`: in host memory (reducer_), or on
  // the device (device_reducer_, over the device model's gradient buffer).
  const bool on_device = reduces_on_device();
  GradientReducer* grad_reducer = on_device ? device_reducer_.get() : reducer_.get();
  float* grad_buffer = policy_->grads();
  const auto abort_all = [&] {
    if (comm_ != nullptr) comm_->Abort();  // release the other ranks now, not at their deadline
    if (device_comm_ != nullptr) device_comm_->Abort();
  };
  if (device_ != nullptr) {
    absl::Status zs = device_->ZeroGrads();
    if (zs.ok() && on_device) {
      absl::StatusOr<float*> g = device_->DeviceGrads();
      if (g.ok()) grad_buffer = *g;
      zs = g.status();
    }
    if (!zs.ok()) {
      abort_all();
      return WithContext(zs, context);
    }
  } else {
    policy_->ZeroGrads();
  }
  if (grad_reducer != nullptr) grad_reducer->Begin(grad_buffer, context);
  // From here on an error of this rank must release the others: abort the communicators.
  auto fail = [&](const absl::Status& s) {
    if (grad_reducer != nullptr) {
      abort_all();
      grad_reducer->Cancel();
      grad_reducer->Finish().IgnoreError();
    }
    policy_->set_grad_ready_callback(nullptr);
    if (device_ != nullptr) device_->set_grad_ready_callback(nullptr);
    return WithContext(s, context);
  };
  const bool replay = o.routing_replay && policy_->config().NumMoeLayers() > 0;
  const int64_t L = policy_->config().NumMoeLayers();
  const int64_t K = policy_->config().num_experts_per_tok;
  const size_t micro = o.micro_batch_seqs > 0 ? static_cast<size_t>(o.micro_batch_seqs)
                                              : std::max<size_t>(1, seqs.size());
  for (size_t first = 0; first < seqs.size(); first += micro) {
    const size_t last = std::min(seqs.size(), first + micro);
    TokenBatch batch;
    for (size_t i = first; i < last; ++i) {
      std::vector<int32_t> toks(seqs[i].prompt.begin(), seqs[i].prompt.end());
      toks.insert(toks.end(), seqs[i].completion.begin(), seqs[i].completion.end());
      batch.Add(toks);
    }
    std::vector<int32_t> routing;
    if (replay) {
      const int64_t T = batch.num_tokens();
      routing.assign(L * T * K, 0);
      for (size_t i = first; i < last; ++i) {
        const int64_t b = static_cast<int64_t>(i - first);
        const int64_t n = batch.offsets[b + 1] - batch.offsets[b];
        const RoutingData* r = seqs[i].routing;
        if (r == nullptr || r->num_moe_layers != L || r->num_tokens != n || r->top_k != K ||
            static_cast<int64_t>(r->expert_ids.size()) != L * n * K) {
          return fail(absl::DataLossError(absl::StrCat(
              "R3: the rollout's routing for a sequence of ", n, " tokens is ",
              r == nullptr ? std::string("missing")
                           : absl::StrCat("(", r->num_moe_layers, ", ", r->num_tokens, ", ",
                                          r->top_k, ") with ", r->expert_ids.size(), " ids"),
              "; expected (", L, ", ", n, ", ", K,
              ") (does the worker serve the same model, with return_routing?)")));
        }
        for (int64_t l = 0; l < L; ++l) {
          std::copy_n(r->expert_ids.data() + l * n * K, n * K,
                      routing.data() + (l * T + batch.offsets[b]) * K);
        }
      }
    }
    std::vector<int64_t> resp_offsets = {0};
    std::vector<double> old_lp, roll_lp, ref_lp, mask, advs;
    for (size_t i = first; i < last; ++i) {
      const TrainSequence& s = seqs[i];
      const int64_t C = static_cast<int64_t>(s.completion.size());
      resp_offsets.push_back(resp_offsets.back() + C);
      old_lp.insert(old_lp.end(), s.old_logprobs.begin(), s.old_logprobs.end());
      roll_lp.insert(roll_lp.end(), s.rollout_logprobs.begin(), s.rollout_logprobs.end());
      ref_lp.insert(ref_lp.end(), s.ref_logprobs.begin(), s.ref_logprobs.end());
      mask.insert(mask.end(), C, s.mask);
      advs.push_back(s.advantage);
    }
    ForwardOptions fo;
    fo.temperature = o.temperature;
    fo.for_backward = true;
    fo.replay_routing = routing;
    // The aux loss of each micro-batch, weighted by its share of the GLOBAL mini-batch.
    fo.aux_loss_coef =
        o.aux_loss_coef * static_cast<double>(last - first) / static_cast<double>(norm.num_seqs);
    ForwardResult<float> res;
    if (absl::Status s = device_ != nullptr ? device_->Forward(batch, fo, &res)
                                            : policy_->Forward(batch, fo, &res);
        !s.ok()) {
      return fail(s);
    }
    std::vector<double> lp, ent;
    for (size_t i = first; i < last; ++i) {
      const int64_t b = static_cast<int64_t>(i - first);
      const int64_t P = static_cast<int64_t>(seqs[i].prompt.size());
      const int64_t C = static_cast<int64_t>(seqs[i].completion.size());
      for (int64_t j = 0; j < C; ++j) {
        lp.push_back(res.logprobs[batch.offsets[b] + P - 1 + j]);
        ent.push_back(res.entropy[batch.offsets[b] + P - 1 + j]);
      }
    }
    LossInput in;
    in.offsets = resp_offsets;
    in.logprobs = lp;
    in.old_logprobs = old_lp;
    in.rollout_logprobs = roll_lp;
    in.ref_logprobs = ref_lp;
    in.entropy = ent;
    in.mask = mask;
    in.advantages = advs;
    absl::StatusOr<LossOutput> lo = ComputeLoss(in, norm, o.loss);
    if (!lo.ok()) return fail(lo.status());
    result.loss += lo->loss;
    result.aux_loss_sum += static_cast<double>(res.aux_loss);
    result.stats.Merge(lo->stats);
    std::vector<float> dlp(batch.num_tokens(), 0.0f), dent;
    if (o.loss.entropy_coef != 0) dent.assign(batch.num_tokens(), 0.0f);
    for (size_t i = first; i < last; ++i) {
      const int64_t b = static_cast<int64_t>(i - first);
      const int64_t P = static_cast<int64_t>(seqs[i].prompt.size());
      const int64_t C = static_cast<int64_t>(seqs[i].completion.size());
      for (int64_t j = 0; j < C; ++j) {
        dlp[batch.offsets[b] + P - 1 + j] = static_cast<float>(lo->dlogprobs[resp_offsets[b] + j]);
        if (!dent.empty()) {
          dent[batch.offsets[b] + P - 1 + j] =
              static_cast<float>(lo->dentropy[resp_offsets[b] + j]);
        }
      }
    }
    // The last micro-batch's backward finishes the gradients block by block: hand each block to
    // the reducer as it completes so its buckets are reduced while the backward goes on.
    const bool final_micro = last == seqs.size();
    if (final_micro && reducer_ != nullptr && device_ == nullptr) {
      policy_->set_grad_ready_callback([this](int64_t first_offset, int64_t count) {
        reducer_->MarkReady(first_offset, count);
        if (observer_) observer_(first_offset, count);
      });
    }
    if (final_micro && on_device) {
      // The same on the GPU: each block comes once its kernels are queued, with a fence the
      // communication thread waits on before the bucket's all-reduce (on an NCCL stream that
      // runs beside the backward's).
      device_->set_grad_ready_callback(
          [this](int64_t first_offset, int64_t count, CudaModel::GradFence ready) {
            device_reducer_->MarkReady(first_offset, count, std::move(ready));
            if (observer_) observer_(first_offset, count);
          });
    }
    absl::Status bs =
        device_ != nullptr ? device_->Backward(dlp, dent) : policy_->Backward(dlp, dent);
    policy_->set_grad_ready_callback(nullptr);
    if (device_ != nullptr) device_->set_grad_ready_callback(nullptr);
    if (!bs.ok()) return fail(bs);
    result.trained_tokens += static_cast<double>(batch.num_tokens());
  }
  if (reducer_ != nullptr) {
    if (on_device) {
      // Summed on the device, bucket by bucket, overlapped with the last backward (its blocks
      // were marked as they were queued), then down to the host already reduced. A rank with no
      // sequences contributes its zeroed gradients.
      if (seqs.empty()) device_reducer_->MarkAllReady();
      if (absl::Status ds = device_reducer_->Finish(); !ds.ok()) {
        abort_all();  // the host collectives below would otherwise wait for their deadline
        return ds;
      }
      if (absl::Status fs = device_->FetchGrads(); !fs.ok()) {
        abort_all();
        return WithContext(fs, context);
      }
    } else {
      if (device_ != nullptr) {
        // The device's gradients come to the host whole and join the reduction at once: the
        // device backward does not report blocks as they finish, so no overlap with it (yet).
        if (absl::Status fs = device_->FetchGrads(); !fs.ok()) return fail(fs);
        reducer_->MarkAllReady();
      } else if (seqs.empty()) {
        reducer_->MarkAllReady();  // this rank's zero gradients join the sums
      }
      RETURN_IF_ERROR(reducer_->Finish());
    }
    RETURN_IF_ERROR(ReduceResult(&result, context));
  } else if (device_ != nullptr) {
    RETURN_IF_ERROR(WithContext(device_->FetchGrads(), context));
  }
  result.opt = optimizer_->Step(policy_->params(), policy_->grads(), o.lr);
  if (device_ != nullptr) device_->ParamsChanged();
  if (comm_ != nullptr && config_.check_replicas) {
    RETURN_IF_ERROR(
        WithContext(VerifyReplicas(*comm_, policy_->params(), policy_->num_params(), timeout_),
                    absl::StrCat(context, ": replica check after the optimizer step")));
  }
  return result;
}

// Sums the per-rank results (fp32 all-reduce: these are metrics) and gathers the ratio extremes
// through one slot per rank.
absl::Status DataParallelStep::ReduceResult(MiniBatchResult* r, const std::string& context) {
  LossStats& st = r->stats;
  double* sums[] = {&r->loss,        &r->aux_loss_sum,     &r->trained_tokens, &st.num_tokens,
                    &st.num_seqs,    &st.pg_loss_sum,      &st.kl_sum,         &st.entropy_sum,
                    &st.clipped,     &st.dual_clipped,     &st.ratio_sum,      &st.is_weight_sum,
                    &st.is_rejected, &st.mismatch_abs_sum, &st.mismatch_tokens};
  constexpr size_t kNumSums = sizeof(sums) / sizeof(sums[0]);
  const int world = world_size(), rank = this->rank();
  std::vector<float> buf(kNumSums + 2 * static_cast<size_t>(world), 0.0f);
  for (size_t i = 0; i < kNumSums; ++i) buf[i] = static_cast<float>(*sums[i]);
  // A rank without tokens has min 1e300 / max -1e300: +-inf in fp32, and never the extreme.
  buf[kNumSums + 2 * rank] = static_cast<float>(st.ratio_min);
  buf[kNumSums + 2 * rank + 1] = static_cast<float>(st.ratio_max);
  RETURN_IF_ERROR(
      WithContext(comm_->AllReduceSum(buf.data(), static_cast<int64_t>(buf.size()), timeout_),
                  absl::StrCat(context, ": all-reduce of the loss statistics")));
  for (size_t i = 0; i < kNumSums; ++i) *sums[i] = buf[i];
  st.ratio_min = 1e300;
  st.ratio_max = -1e300;
  for (int q = 0; q < world; ++q) {
    const double lo = buf[kNumSums + 2 * q], hi = buf[kNumSums + 2 * q + 1];
    if (std::isfinite(lo)) st.ratio_min = std::min(st.ratio_min, lo);
    if (std::isfinite(hi)) st.ratio_max = std::max(st.ratio_max, hi);
  }
  return absl::OkStatus();
}

}  // namespace grpo
