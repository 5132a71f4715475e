// Rollout workers for the learner and the balanced dispatcher (see rollout_workers.h).
#include "learner/rollout_workers.h"

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/cuda_ipc.h"
#include "common/log.h"
#include "common/status.h"
#include "rollout/weights.h"

namespace grpo {

absl::StatusOr<std::unique_ptr<LocalRolloutWorker>> LocalRolloutWorker::Create(
    const Model<float>& model, std::string name, int64_t kv_budget_bytes, Device device) {
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> copy, Model<float>::Create(model.config()));
  std::copy_n(model.params(), model.num_params(), copy->params());
  EngineOptions options;
  options.kv_budget_bytes = kv_budget_bytes;
  options.device = device;
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   Engine::Create(std::move(copy), nullptr, options));
  return std::unique_ptr<LocalRolloutWorker>(
      new LocalRolloutWorker(std::move(engine), std::move(name)));
}

absl::Status LocalRolloutWorker::Generate(absl::Span<const RolloutPrompt> prompts,
                                          const SamplingParams& sampling,
                                          std::vector<GroupResult>* out) {
  ASSIGN_OR_RETURN(
      std::vector<GroupResult> groups,
      engine_->GenerateAll(std::vector<RolloutPrompt>(prompts.begin(), prompts.end()), sampling));
  for (GroupResult& g : groups) out->push_back(std::move(g));
  return absl::OkStatus();
}

absl::Status LocalRolloutWorker::PushWeights(const ParamLayout& layout,
                                             absl::Span<const float> params, uint64_t version) {
  if (static_cast<int64_t>(params.size()) != engine_->num_params()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name_, ": pushed ", params.size(), " parameters, the model has ", engine_->num_params()));
  }
  std::vector<float> copy = engine_->TakeSpareParams();  // pages already mapped (engine.h)
  copy.assign(params.begin(), params.end());
  return engine_->StageWeights(version, std::move(copy));
}

absl::Status LocalRolloutWorker::PushDeviceWeights(const CudaModel& src, uint64_t version,
                                                   absl::Time deadline) {
  RETURN_IF_ERROR(WithContext(engine_->StageDeviceWeights(version, &src), name_));
  // `src` changes after this returns (the next optimizer step): even on a failed wait the engine
  // must not copy it later, half updated, under this version.
  return WithContext(engine_->WaitDeviceWeights(version, deadline), name_);
}

absl::Status RemoteRolloutWorker::PushDeviceWeights(const CudaModel& src, uint64_t version,
                                                    absl::Time deadline) {
  const CudaModel::WeightBuffers buffers = src.weight_buffers();
  rollout::IpcWeightUpdate request;
  ASSIGN_OR_RETURN(std::string bf16, comm::ExportDeviceBuffer(buffers.bf16, buffers.bf16_bytes));
  ASSIGN_OR_RETURN(std::string f32, comm::ExportDeviceBuffer(buffers.f32, buffers.f32_bytes));
  request.set_version(version);
  request.set_num_params(static_cast<uint64_t>(src.num_params()));
  request.set_layout_fingerprint(LayoutFingerprint(src.layout()));
  request.set_bf16_handle(std::move(bf16));
  request.set_f32_handle(std::move(f32));
  request.set_master(buffers.master);
  request.set_machine_id(comm::MachineId());
  // The server gives up a little before the call's deadline, so that it has withdrawn the update
  // (and stopped reading the handles) by the time this call fails.
  request.set_timeout_s(std::max(1.0, absl::ToDoubleSeconds(deadline - absl::Now()) - 1.0));
  ASSIGN_OR_RETURN(rollout::UpdateWeightsResponse response,
                   client_->UpdateWeightsIpc(request, deadline));
  last_push_bytes_ = static_cast<int64_t>(response.bytes_received());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RemoteRolloutWorker>> RemoteRolloutWorker::Connect(
    const std::string& address, absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<RolloutClient> client, RolloutClient::Connect(address));
  return std::unique_ptr<RemoteRolloutWorker>(new RemoteRolloutWorker(std::move(client), timeout));
}

absl::Status RemoteRolloutWorker::Generate(absl::Span<const RolloutPrompt> prompts,
                                           const SamplingParams& sampling,
                                           std::vector<GroupResult>* out) {
  return client_->Generate(prompts, sampling, absl::Now() + timeout_, [out](GroupResult&& g) {
    out->push_back(std::move(g));
    return absl::OkStatus();
  });
}

absl::Status RemoteRolloutWorker::PushWeights(const ParamLayout& layout,
                                              absl::Span<const float> params, uint64_t version) {
  return client_->PushWeights(version, layout, params, absl::Now() + timeout_,
                              RolloutClient::kDefaultChunkBytes, &last_push_bytes_);
}

absl::StatusOr<uint64_t> RemoteRolloutWorker::NewestVersion() {
  ASSIGN_OR_RETURN(RolloutStatus st, client_->GetStatus(absl::Now() + timeout_));
  return std::max(st.weight_version, st.staged_version);
}

absl::StatusOr<std::vector<GroupResult>> DispatchGroups(absl::Span<RolloutWorker* const> workers,
                                                        std::vector<bool>* alive,
                                                        absl::Span<const RolloutPrompt> prompts,
                                                        const SamplingParams& sampling,
                                                        DispatchStats* stats) {
  alive->resize(workers.size(), true);
  std::map<uint64_t, GroupResult> done;
  std::vector<RolloutPrompt> pending(prompts.begin(), prompts.end());
  bool first_round = true;
  while (!pending.empty()) {
    std::vector<size_t> live;
    for (size_t w = 0; w < workers.size(); ++w) {
      if ((*alive)[w]) live.push_back(w);
    }
    if (live.empty()) {
      return absl::UnavailableError(
          absl::StrCat("every rollout worker failed: ", absl::StrJoin(stats->failures, "; ")));
    }
    if (!first_round) stats->reissued_groups += static_cast<int64_t>(pending.size());
    first_round = false;
    // Contiguous, even split: worker j of n takes [j*P/n, (j+1)*P/n).
    const size_t n = live.size(), P = pending.size();
    std::vector<std::vector<RolloutPrompt>> parts(n);
    for (size_t j = 0; j < n; ++j) {
      parts[j].assign(pending.begin() + j * P / n, pending.begin() + (j + 1) * P / n);
    }
    std::vector<absl::Status> status(n);
    std::vector<std::vector<GroupResult>> got(n);
    std::vector<std::thread> threads;
    for (size_t j = 0; j < n; ++j) {
      if (parts[j].empty()) continue;
      threads.emplace_back(
          [&, j] { status[j] = workers[live[j]]->Generate(parts[j], sampling, &got[j]); });
    }
    for (auto& t : threads) t.join();
    std::vector<RolloutPrompt> retry;
    for (size_t j = 0; j < n; ++j) {
      if (parts[j].empty()) continue;
      std::set<uint64_t> asked;
      for (const RolloutPrompt& p : parts[j]) asked.insert(p.prompt_id);
      for (GroupResult& g : got[j]) {
        // Keep only complete answers to what this worker was asked.
        if (asked.count(g.prompt_id) &&
            static_cast<int32_t>(g.completions.size()) == sampling.group_size) {
          done[g.prompt_id] = std::move(g);
        }
      }
      if (status[j].code() == absl::StatusCode::kInvalidArgument) {
        return WithContext(status[j], workers[live[j]]->name());
      }
      bool complete = status[j].ok();
      int missing = 0;
      for (const RolloutPrompt& p : parts[j]) {
        if (!done.count(p.prompt_id)) {
          complete = false;
          retry.push_back(p);
          ++missing;
        }
      }
      if (!complete) {
        const std::string why =
            absl::StrCat(workers[live[j]]->name(), ": ",
                         status[j].ok() ? "answered with missing groups" : status[j].ToString());
        GRPO_LOG(WARNING, "rollout worker lost (%s); re-issuing its %d undelivered groups", why,
                 missing);
        stats->failures.push_back(why);
        (*alive)[live[j]] = false;
      }
    }
    pending = std::move(retry);
  }
  std::vector<GroupResult> out;
  for (auto& [id, g] : done) out.push_back(std::move(g));
  return out;
}

}  // namespace grpo
