// Data-parallel ranks as threads (see local_data_parallel.h).
#include "learner/local_data_parallel.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/nccl_communicator.h"
#include "common/log.h"
#include "common/status.h"

namespace grpo {

absl::StatusOr<std::unique_ptr<LocalDataParallel>> LocalDataParallel::Create(
    Model<float>* rank0, AdamW* optimizer0, const DataParallelConfig& config) {
  RETURN_IF_ERROR(config.Validate("data_parallel"));
  std::unique_ptr<LocalDataParallel> dp(new LocalDataParallel());
  dp->rank0_ = rank0;
  dp->timeout_ = absl::Seconds(config.timeout_s);
  const int world = static_cast<int>(config.ranks);
  if (world == 1) {
    dp->steps_.push_back(std::make_unique<DataParallelStep>(rank0, optimizer0, nullptr, config));
    return dp;
  }
  dp->group_ = comm::LocalGroup::Create(world);
  for (int r = 0; r < world; ++r) dp->comms_.push_back(dp->group_->Rank(r));
  const std::string state = optimizer0->SerializeState();
  for (int r = 1; r < world; ++r) {
    ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> m, Model<float>::Create(rank0->config()));
    std::copy_n(rank0->params(), rank0->num_params(), m->params());
    m->set_batch_invariant(rank0->batch_invariant());
    auto opt = std::make_unique<AdamW>(m->num_params(), optimizer0->config());
    RETURN_IF_ERROR(opt->RestoreState(state, "rank 0's optimizer"));
    dp->models_.push_back(std::move(m));
    dp->optimizers_.push_back(std::move(opt));
  }
  dp->steps_.push_back(
      std::make_unique<DataParallelStep>(rank0, optimizer0, dp->comms_[0].get(), config));
  for (int r = 1; r < world; ++r) {
    dp->steps_.push_back(std::make_unique<DataParallelStep>(
        dp->models_[r - 1].get(), dp->optimizers_[r - 1].get(), dp->comms_[r].get(), config));
  }
  return dp;
}

const Model<float>& LocalDataParallel::model(int rank) const {
  GRPO_CHECK(rank >= 0 && rank < world_size());
  return rank == 0 ? *rank0_ : *models_[rank - 1];
}

absl::StatusOr<MiniBatchResult> LocalDataParallel::Run(const ShardFn& shard,
                                                       const MiniBatchOptions& options) {
  const int world = world_size();
  std::vector<absl::StatusOr<MiniBatchResult>> results(world, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 1; r < world; ++r) {
    threads.emplace_back([&, r] { results[r] = steps_[r]->Run(shard(r), options); });
  }
  results[0] = steps_[0]->Run(shard(0), options);
  for (std::thread& t : threads) t.join();
  // The cause, not its echo: a rank that failed by itself aborts the communicator, and the
  // others then report ABORTED.
  const absl::Status* first = nullptr;
  for (int r = 0; r < world; ++r) {
    if (results[r].ok()) continue;
    const absl::Status& s = results[r].status();
    if (first == nullptr) first = &s;
    if (s.code() != absl::StatusCode::kAborted) return s;
  }
  if (first != nullptr) return *first;
  return std::move(results[0]);
}

absl::Status LocalDataParallel::set_device_model(DeviceModel* device) {
  for (auto& step : steps_) {
    step->set_device_model(nullptr);
    if (world_size() > 1) step->set_device_comm(nullptr);
  }
  device_comms_.clear();
  devices_.clear();
  if (device != nullptr && device->device() == Device::kCuda) {
    const int gpus = std::max(1, CudaDeviceCount());
    for (int r = 1; r < world_size(); ++r) {
      auto m = DeviceModel::Create(models_[r - 1].get(), Device::kCuda, r % gpus);
      if (!m.ok()) return WithContext(m.status(), absl::StrCat("data-parallel rank ", r));
      devices_.push_back(std::move(*m));
    }
    for (int r = 1; r < world_size(); ++r) steps_[r]->set_device_model(devices_[r - 1].get());
  }
  steps_[0]->set_device_model(device);  // a CPU DeviceModel leaves rank 0 on the plain path
  if (!devices_.empty()) {
    const int gpus = CudaDeviceCount();
    if (gpus < world_size() || !comm::NcclUsable()) {
      GRPO_LOG(INFO, "data parallel: %d ranks on %d GPU(s)%s: gradients reduced in host memory",
               world_size(), gpus, comm::NcclUsable() ? "" : ", no NCCL");
    } else if (absl::Status st = ConnectDeviceComms(); !st.ok()) {
      GRPO_LOG(WARNING,
               "data parallel: NCCL between the %d GPU ranks failed (%s); gradients are "
               "reduced in host memory instead",
               world_size(), std::string(st.message()));
    } else {
      GRPO_LOG(INFO, "data parallel: %d ranks on GPUs 0..%d, gradients all-reduced over NCCL",
               world_size(), world_size() - 1);
    }
  }
  return absl::OkStatus();
}

absl::Status LocalDataParallel::ConnectDeviceComms() {
  const int world = world_size();
  ASSIGN_OR_RETURN(const comm::NcclUniqueId id, comm::NewNcclUniqueId());
  // Every rank joins at once, each from a thread of its own (a join returns when all have).
  std::vector<absl::StatusOr<std::unique_ptr<comm::Communicator>>> made;
  for (int r = 0; r < world; ++r) made.emplace_back(absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      made[r] = comm::NcclCommunicator::Create(id, r, world, r, timeout_,
                                               comm::NcclStreamOrder::kIndependent);
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<std::unique_ptr<comm::Communicator>> comms;
  for (int r = 0; r < world; ++r) {
    if (!made[r].ok()) return WithContext(made[r].status(), absl::StrCat("rank ", r));
    comms.push_back(std::move(*made[r]));
  }
  device_comms_ = std::move(comms);
  for (int r = 0; r < world; ++r) steps_[r]->set_device_comm(device_comms_[r].get());
  return absl::OkStatus();
}

std::string LocalDataParallel::gradient_transport() const {
  if (world_size() == 1) return "none";
  return steps_[0]->reduces_on_device() ? "nccl" : "host";
}

}  // namespace grpo
