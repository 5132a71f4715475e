#include "comm/local_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"

namespace grpo::comm {
namespace {

enum class Op { kAllReduce, kBroadcast, kBarrier };

const char* OpName(Op op) {
  switch (op) {
    case Op::kAllReduce:
      return "AllReduceSum";
    case Op::kBroadcast:
      return "Broadcast";
    case Op::kBarrier:
      return "Barrier";
  }
  return "?";
}

// What one rank passed to the collective in progress.
struct Call {
  Op op = Op::kBarrier;
  void* data = nullptr;
  int64_t size = 0;  // elements for AllReduceSum, bytes for Broadcast
  int root = 0;
};

class Group : public LocalGroup, public std::enable_shared_from_this<Group> {
 public:
  explicit Group(int world) : world_(world), here_(world, false), calls_(world) {}

  std::unique_ptr<Communicator> Rank(int rank) override;

  int world() const { return world_; }

  // Every collective: register this rank's call, wait for all ranks (phase 1), check that the
  // calls match, do this rank's share, wait again (phase 2) so no buffer is reused early.
  absl::Status Run(int rank, const Call& call, absl::Duration timeout) {
    {
      absl::MutexLock lock(&mu_);
      if (aborted_) return Aborted();
      calls_[rank] = call;
    }
    RETURN_IF_ERROR(Arrive(rank, timeout, /*size_scratch=*/call.op == Op::kAllReduce));
    // Between the two phases nobody writes calls_ (a rank writes its next call only after
    // phase 2), so it is read without the lock.
    for (int r = 0; r < world_; ++r) {
      const Call& o = calls_[r];
      if (o.op != call.op || o.size != call.size || o.root != call.root) {
        const std::string why = absl::StrFormat(
            "collective mismatch: rank %d called %s(size %d, root %d) while rank %d called "
            "%s(size %d, root %d)",
            rank, OpName(call.op), call.size, call.root, r, OpName(o.op), o.size, o.root);
        AbortWith(why);
        return absl::InvalidArgumentError(why);
      }
    }
    if (call.op == Op::kBarrier) return Arrive(rank, timeout);
    if (call.op == Op::kAllReduce) {
      // This rank sums its slice of the elements into the shared scratch, in rank order.
      const int64_t n = call.size;
      const int64_t lo = n * rank / world_, hi = n * (rank + 1) / world_;
      float* out = scratch_.data();
      for (int64_t i = lo; i < hi; ++i) {
        float s = static_cast<const float*>(calls_[0].data)[i];
        for (int r = 1; r < world_; ++r) s += static_cast<const float*>(calls_[r].data)[i];
        out[i] = s;
      }
      RETURN_IF_ERROR(Arrive(rank, timeout));
      std::memcpy(call.data, scratch_.data(), static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    }
    // Broadcast.
    if (rank != call.root && call.size > 0) {
      std::memcpy(call.data, calls_[call.root].data, static_cast<size_t>(call.size));
    }
    return Arrive(rank, timeout);
  }

  void AbortWith(const std::string& why) {
    absl::MutexLock lock(&mu_);
    if (!aborted_) {
      aborted_ = true;
      why_ = why;
    }
  }
  bool aborted() const {
    absl::MutexLock lock(&mu_);
    return aborted_;
  }

 private:
  absl::Status Aborted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::AbortedError("communicator aborted (" + why_ + "); build a new one");
  }

  // A generation barrier with a deadline; a timeout aborts the group, naming the ranks that had
  // not arrived. With size_scratch the last rank to arrive sizes the scratch for the largest call:
  // every rank is then between collectives, so nobody is reading or writing it.
  absl::Status Arrive(int rank, absl::Duration timeout, bool size_scratch = false) {
    absl::MutexLock lock(&mu_);
    if (aborted_) return Aborted();
    const uint64_t gen = generation_;
    here_[rank] = true;
    if (++arrived_ == world_) {
      std::fill(here_.begin(), here_.end(), false);
      if (size_scratch) {
        int64_t n = 0;
        for (const Call& c : calls_) n = std::max(n, c.size);
        if (static_cast<int64_t>(scratch_.size()) < n) scratch_.resize(static_cast<size_t>(n));
      }
      arrived_ = 0;
      ++generation_;
      return absl::OkStatus();
    }
    auto done = [this, gen]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return generation_ != gen || aborted_;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      std::vector<std::string> missing;
      for (int r = 0; r < world_; ++r) {
        if (!here_[r]) missing.push_back(absl::StrCat(r));
      }
      aborted_ = true;
      why_ = absl::StrFormat("rank %d waited %s in a collective for rank%s %s, which never came",
                             rank, absl::FormatDuration(timeout), missing.size() > 1 ? "s" : "",
                             absl::StrJoin(missing, ", "));
      return absl::DeadlineExceededError(why_ + "; a peer is dead or stuck");
    }
    if (generation_ != gen) return absl::OkStatus();
    return Aborted();
  }

  const int world_;
  mutable absl::Mutex mu_;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<bool> here_ ABSL_GUARDED_BY(mu_);  // (world) arrived in this generation
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  std::string why_ ABSL_GUARDED_BY(mu_);
  std::vector<Call> calls_;    // written by each rank before phase 1
  std::vector<float> scratch_;  // sized in phase 1 by the last rank, written between the phases
};

class LocalCommunicator : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<Group> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int world_size() const override { return group_->world(); }
  std::string backend() const override { return "local"; }
  MemorySpace memory() const override { return MemorySpace::kHost; }

  absl::Status AllReduceSum(float* data, int64_t count, absl::Duration timeout) override {
    if (count < 0) return absl::InvalidArgumentError("AllReduceSum: negative count");
    return group_->Run(rank_, {Op::kAllReduce, data, count, 0}, timeout);
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root, absl::Duration timeout) override {
    if (bytes < 0) return absl::InvalidArgumentError("Broadcast: negative size");
    if (root < 0 || root >= group_->world()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("Broadcast: root %d is not a rank of a group of %d", root,
                          group_->world()));
    }
    return group_->Run(rank_, {Op::kBroadcast, data, bytes, root}, timeout);
  }
  absl::Status Barrier(absl::Duration timeout) override {
    return group_->Run(rank_, {Op::kBarrier, nullptr, 0, 0}, timeout);
  }
  void Abort() override { group_->AbortWith(absl::StrFormat("rank %d called Abort", rank_)); }
  bool aborted() const override { return group_->aborted(); }

 private:
  std::shared_ptr<Group> group_;
  int rank_;
};

std::unique_ptr<Communicator> Group::Rank(int rank) {
  GRPO_CHECK_MSG(rank >= 0 && rank < world_, "LocalGroup::Rank: rank out of range");
  return std::make_unique<LocalCommunicator>(shared_from_this(), rank);
}

}  // namespace

std::shared_ptr<LocalGroup> LocalGroup::Create(int world_size) {
  GRPO_CHECK_MSG(world_size >= 1, "LocalGroup::Create: world_size must be >= 1");
  return std::make_shared<Group>(world_size);
}

}  // namespace grpo::comm
