// RolloutServiceImpl and StartRolloutServer (rollout/rollout_service.h).
#include "rollout/rollout_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/cuda_ipc.h"
#include "comm/nccl_communicator.h"
#include "common/status.h"
#include "rollout/convert.h"
#include "rollout/weights.h"

namespace grpo {
namespace {

// The one place absl::Status becomes grpc::Status (canonical codes share their numbers).
grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace

grpc::Status RolloutServiceImpl::Generate(grpc::ServerContext* ctx,
                                          const rollout::GenerateRequest* request,
                                          grpc::ServerWriter<rollout::GroupResult>* writer) {
  std::vector<RolloutPrompt> prompts(request->prompts_size());
  for (int i = 0; i < request->prompts_size(); ++i) {
    prompts[i].prompt_id = request->prompts(i).prompt_id();
    prompts[i].token_ids.assign(request->prompts(i).token_ids().begin(),
                                request->prompts(i).token_ids().end());
  }
  auto submitted = engine_->Submit(std::move(prompts), FromProto(request->sampling()));
  if (!submitted.ok()) return ToGrpcStatus(submitted.status());
  std::shared_ptr<RolloutRequest> req = std::move(*submitted);
  GroupResult group;
  rollout::GroupResult message;
  while (true) {
    const RolloutRequest::Wait w = req->Next(&group, absl::Milliseconds(50));
    if (w == RolloutRequest::Wait::kGroup) {
      message.Clear();
      ToProto(group, &message);
      if (!writer->Write(message)) {
        engine_->Cancel(req);
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
    } else if (w == RolloutRequest::Wait::kDone) {
      return ToGrpcStatus(req->status());
    } else if (ctx->IsCancelled()) {
      engine_->Cancel(req);
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    }
  }
}

grpc::Status RolloutServiceImpl::UpdateWeights(grpc::ServerContext* ctx,
                                               grpc::ServerReader<rollout::WeightChunk>* reader,
                                               rollout::UpdateWeightsResponse* response) {
  WeightAssembler assembler(engine_->num_params(), engine_->layout_fingerprint(),
                            engine_->newest_version());
  assembler.Reuse(engine_->TakeSpareParams());
  rollout::WeightChunk chunk;
  while (reader->Read(&chunk)) {
    absl::Status s = assembler.Add(chunk);
    if (!s.ok()) return ToGrpcStatus(s);
  }
  if (ctx->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::ABORTED, "weight update: stream cancelled; not applied");
  }
  uint64_t version = 0;
  auto params = assembler.Finish(&version);
  if (!params.ok()) return ToGrpcStatus(params.status());
  const int64_t bytes = assembler.bytes_received();
  absl::Status s = engine_->StageWeights(version, std::move(*params));
  if (!s.ok()) return ToGrpcStatus(s);
  response->set_version(version);
  response->set_bytes_received(static_cast<uint64_t>(bytes));
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::UpdateWeightsIpc(grpc::ServerContext*,
                                                  const rollout::IpcWeightUpdate* request,
                                                  rollout::UpdateWeightsResponse* response) {
  if (request->machine_id() != comm::MachineId()) {
    return ToGrpcStatus(absl::FailedPreconditionError(absl::StrCat(
        "UpdateWeightsIpc: the handles come from another machine (", request->machine_id(),
        ", this is ", comm::MachineId(), "); send the weights over UpdateWeights")));
  }
  if (request->num_params() != static_cast<uint64_t>(engine_->num_params()) ||
      request->layout_fingerprint() != engine_->layout_fingerprint()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("UpdateWeightsIpc: weights of ", request->num_params(), " parameters, layout ",
                     request->layout_fingerprint(), "; this server serves ", engine_->num_params(),
                     ", layout ", engine_->layout_fingerprint(), " (another model?)")));
  }
  if (!(request->timeout_s() > 0) || !std::isfinite(request->timeout_s())) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("UpdateWeightsIpc: timeout_s ", request->timeout_s(), " must be > 0")));
  }
  if (engine_->device() != Device::kCuda) {
    return ToGrpcStatus(absl::FailedPreconditionError(
        "UpdateWeightsIpc: this server's engine runs on the CPU; send the weights over "
        "UpdateWeights"));
  }
  // The engine's GPU is this process's device 0 (EngineOptions has no other).
  auto bf16 = comm::IpcBuffer::Import(request->bf16_handle(), 0);
  if (!bf16.ok()) return ToGrpcStatus(WithContext(bf16.status(), "UpdateWeightsIpc: bf16 weights"));
  auto f32 = comm::IpcBuffer::Import(request->f32_handle(), 0);
  if (!f32.ok()) return ToGrpcStatus(WithContext(f32.status(), "UpdateWeightsIpc: fp32 weights"));
  const CudaModel::WeightBuffers src{bf16->data(), bf16->size(), f32->data(), f32->size(),
                                     request->master()};
  // Sizes checked here, not at the swap: a wrong one must be this call's error, not a device fault.
  if (absl::Status sized =
          CudaModel::CheckWeightBuffers(ParamLayout::Build(engine_->config()), src);
      !sized.ok()) {
    return ToGrpcStatus(WithContext(sized, "UpdateWeightsIpc"));
  }
  const uint64_t version = request->version();
  absl::Status s = engine_->StageDeviceWeights(version, src);
  if (!s.ok()) return ToGrpcStatus(s);
  // The handles close when this returns; the engine no longer reads them once this wait is over.
  s = engine_->WaitDeviceWeights(version, absl::Now() + absl::Seconds(request->timeout_s()));
  if (!s.ok()) return ToGrpcStatus(s);
  response->set_version(version);
  response->set_bytes_received(static_cast<uint64_t>(src.bf16_bytes + src.f32_bytes));
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::GetStatus(grpc::ServerContext*, const rollout::StatusRequest*,
                                           rollout::StatusResponse* response) {
  ToProto(engine_->GetStatus(), response);
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::JoinWeightGroup(grpc::ServerContext*,
                                                 const rollout::JoinWeightGroupRequest* request,
                                                 rollout::JoinWeightGroupResponse* response) {
  if (request->backend() != "nccl" && !(custom_factory_ && request->backend() == "local")) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("JoinWeightGroup: backend \"", request->backend(), "\" is not nccl")));
  }
  if (request->backend() == "nccl" && !comm::NcclUsable()) {
    return ToGrpcStatus(absl::UnavailableError(
        "JoinWeightGroup: this worker has no NCCL or no CUDA device; it takes weights over the "
        "UpdateWeights stream"));
  }
  absl::Status s = group_.Join(*request);
  if (!s.ok()) return ToGrpcStatus(s);
  response->set_weight_version(engine_->newest_version());
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::BeginWeightUpdate(grpc::ServerContext*,
                                                   const rollout::WeightManifest* request,
                                                   rollout::BeginWeightUpdateResponse* response) {
  auto r = group_.Begin(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::EndWeightUpdate(grpc::ServerContext* ctx,
                                                 const rollout::EndWeightUpdateRequest* request,
                                                 rollout::UpdateWeightsResponse* response) {
  // Bounded by the client's deadline (at most a day when it set none).
  const auto left = ctx->deadline() - std::chrono::system_clock::now();
  const absl::Duration wait =
      std::clamp(absl::FromChrono(left), absl::ZeroDuration(), absl::Hours(24));
  auto r = group_.End(request->version(), wait);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartRolloutServer(grpc::Service* service,
                                                                 const std::string& host, int port,
                                                                 int* selected_port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port ", port, " is not in [0, 65535]"));
  }
  const std::string address = host.find(':') != std::string::npos
                                  ? absl::StrCat("[", host, "]:", port)
                                  : absl::StrCat(host, ":", port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), selected_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxWeightChunkBytes + (1 << 20)));
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *selected_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  return server;
}

}  // namespace grpo
