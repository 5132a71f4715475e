// The RolloutService (proto/rollout.proto): a thin gRPC layer over the Engine (rollout/engine.h),
// which tests can also drive without a server.
//  - Generate: submits to the engine and streams each group as it completes. The handler thread
//    (gRPC's sync pool) only waits on the request's queue and writes; it notices a client that
//    went away (failed write, or ctx cancelled, checked every 50 ms) and cancels the request, so
//    the engine frees its sequences at its next step.
//  - UpdateWeights: feeds chunks to a WeightAssembler; only a complete, verified stream is staged
//    (Engine::StageWeights); any error leaves the serving weights untouched.
//  - UpdateWeightsIpc: the learner's device weights by CUDA IPC handle (same machine, engine on a
//    GPU), staged as a device source (Engine::StageDeviceWeights) and waited for, so the handles
//    are closed only once the engine no longer reads them (Engine::WaitDeviceWeights).
//  - GetStatus: Engine::GetStatus.
//  - JoinWeightGroup / BeginWeightUpdate / EndWeightUpdate: the collective weight sync, handed to
//    a WeightGroupMember (rollout/weight_receiver.h), whose own thread joins and receives.
// Status codes are converted in one place (ToGrpcStatus).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "proto/rollout.grpc.pb.h"
#include "rollout/engine.h"
#include "rollout/weight_receiver.h"

namespace grpo {

class RolloutServiceImpl final : public rollout::RolloutService::Service {
 public:
  // `factory` makes the communicator of a JoinWeightGroup. Null (the default): NCCL, and only
  // backend "nccl" is accepted; tests pass a factory over a LocalGroup's ranks (backend "local").
  explicit RolloutServiceImpl(Engine* engine, CommunicatorFactory factory = nullptr)
      : engine_(engine),
        custom_factory_(factory != nullptr),
        group_(engine, factory != nullptr ? std::move(factory) : NcclCommunicatorFactory()) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const rollout::GenerateRequest* request,
                        grpc::ServerWriter<rollout::GroupResult>* writer) override;
  grpc::Status UpdateWeights(grpc::ServerContext* ctx,
                             grpc::ServerReader<rollout::WeightChunk>* reader,
                             rollout::UpdateWeightsResponse* response) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const rollout::StatusRequest* request,
                         rollout::StatusResponse* response) override;
  grpc::Status JoinWeightGroup(grpc::ServerContext* ctx,
                               const rollout::JoinWeightGroupRequest* request,
                               rollout::JoinWeightGroupResponse* response) override;
  grpc::Status BeginWeightUpdate(grpc::ServerContext* ctx, const rollout::WeightManifest* request,
                                 rollout::BeginWeightUpdateResponse* response) override;
  grpc::Status EndWeightUpdate(grpc::ServerContext* ctx,
                               const rollout::EndWeightUpdateRequest* request,
                               rollout::UpdateWeightsResponse* response) override;
  grpc::Status UpdateWeightsIpc(grpc::ServerContext* ctx, const rollout::IpcWeightUpdate* request,
                                rollout::UpdateWeightsResponse* response) override;

 private:
  Engine* engine_;  // not owned
  bool custom_factory_;
  WeightGroupMember group_;
};

// Builds and starts a gRPC server (insecure credentials) for `service` on host:port (0 = any free
// port; *selected_port gets the bound one), with a receive limit that fits the largest weight
// chunk. The service must outlive the server.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartRolloutServer(grpc::Service* service,
                                                                 const std::string& host, int port,
                                                                 int* selected_port);

}  // namespace grpo
