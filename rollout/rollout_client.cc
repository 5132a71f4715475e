// RolloutClient (rollout/rollout_client.h): a thin wrapper over the generated stub.
#include "rollout/rollout_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cpu/gemm.h"
#include "proto/rollout.grpc.pb.h"
#include "rollout/convert.h"
#include "rollout/weight_sync.h"
#include "rollout/weights.h"

namespace grpo {

struct RolloutClient::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<rollout::RolloutService::Stub> stub;
};

namespace {

absl::Status FromGrpc(const std::string& address, const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("rollout ", address, ": ", s.error_message()));
}

std::chrono::system_clock::time_point ToChrono(absl::Time t) { return absl::ToChronoTime(t); }

}  // namespace

RolloutClient::RolloutClient(std::string address, std::unique_ptr<Impl> impl)
    : address_(std::move(address)), impl_(std::move(impl)) {}
RolloutClient::~RolloutClient() = default;

absl::StatusOr<std::unique_ptr<RolloutClient>> RolloutClient::Connect(const std::string& address) {
  if (address.empty()) return absl::InvalidArgumentError("rollout client: empty address");
  auto impl = std::make_unique<Impl>();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // a group of long completions with routing can be large
  args.SetMaxSendMessageSize(-1);
  impl->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  impl->stub = rollout::RolloutService::NewStub(impl->channel);
  return std::unique_ptr<RolloutClient>(new RolloutClient(address, std::move(impl)));
}

absl::Status RolloutClient::Generate(absl::Span<const RolloutPrompt> prompts,
                                     const SamplingParams& sampling, absl::Time deadline,
                                     const GroupCallback& on_group) {
  rollout::GenerateRequest request;
  for (const RolloutPrompt& p : prompts) {
    rollout::Prompt* pp = request.add_prompts();
    pp->set_prompt_id(p.prompt_id);
    pp->mutable_token_ids()->Assign(p.token_ids.begin(), p.token_ids.end());
  }
  ToProto(sampling, request.mutable_sampling());
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  std::unique_ptr<grpc::ClientReader<rollout::GroupResult>> reader =
      impl_->stub->Generate(&ctx, request);
  rollout::GroupResult group;
  size_t num_groups = 0;
  absl::Status callback_status;
  while (reader->Read(&group)) {
    ++num_groups;
    callback_status = on_group(FromProto(group));
    if (!callback_status.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  if (!callback_status.ok()) {
    while (reader->Read(&group)) {
    }
    reader->Finish().ok();
    return callback_status;
  }
  RETURN_IF_ERROR(FromGrpc(address_, reader->Finish()));
  if (num_groups != prompts.size()) {
    return absl::InternalError(absl::StrCat("rollout ", address_, ": got ", num_groups,
                                            " groups for ", prompts.size(), " prompts"));
  }
  return absl::OkStatus();
}

absl::Status RolloutClient::PushWeights(uint64_t version, const ParamLayout& layout,
                                        absl::Span<const float> params, absl::Time deadline,
                                        int64_t chunk_bytes, int64_t* payload_bytes) {
  if (static_cast<int64_t>(params.size()) != layout.total) {
    return absl::InvalidArgumentError(
        absl::StrCat("push weights: ", params.size(), " params for a layout of ", layout.total));
  }
  chunk_bytes = std::clamp<int64_t>(chunk_bytes, 4, kMaxWeightChunkBytes) / 4 * 4;
  // Lossless bf16 when every value is one: half the bytes on the wire.
  std::vector<uint16_t> bf16;
  if (cpu::IsBf16Exact(params.data(), layout.total)) {
    bf16.resize(static_cast<size_t>(layout.total));
    FloatsToBf16(params.data(), layout.total, bf16.data());
  }
  const char* bytes = bf16.empty() ? reinterpret_cast<const char*>(params.data())
                                   : reinterpret_cast<const char*>(bf16.data());
  const int64_t total =
      layout.total * static_cast<int64_t>(bf16.empty() ? sizeof(float) : sizeof(uint16_t));
  if (payload_bytes != nullptr) *payload_bytes = total;
  rollout::WeightChunk chunk;
  chunk.set_version(version);
  chunk.set_dtype(bf16.empty() ? "f32" : "bf16");
  chunk.set_num_params(static_cast<uint64_t>(layout.total));
  chunk.set_layout_fingerprint(LayoutFingerprint(layout));
  chunk.set_total_bytes(static_cast<uint64_t>(total));
  chunk.set_payload_crc32c(Crc32c(bytes, static_cast<size_t>(total)));
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::UpdateWeightsResponse response;
  std::unique_ptr<grpc::ClientWriter<rollout::WeightChunk>> writer =
      impl_->stub->UpdateWeights(&ctx, &response);
  for (int64_t off = 0; off < total; off += chunk_bytes) {
    const int64_t n = std::min(chunk_bytes, total - off);
    chunk.set_offset(static_cast<uint64_t>(off));
    chunk.set_data(bytes + off, static_cast<size_t>(n));
    chunk.set_crc32c(Crc32c(bytes + off, static_cast<size_t>(n)));
    if (!writer->Write(chunk)) break;  // the server ended the call; Finish() says why
  }
  writer->WritesDone();
  return FromGrpc(address_, writer->Finish());
}

absl::StatusOr<RolloutStatus> RolloutClient::GetStatus(absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::StatusResponse response;
  RETURN_IF_ERROR(
      FromGrpc(address_, impl_->stub->GetStatus(&ctx, rollout::StatusRequest(), &response)));
  return FromProto(response);
}

absl::StatusOr<rollout::JoinWeightGroupResponse> RolloutClient::JoinWeightGroup(
    const rollout::JoinWeightGroupRequest& request, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::JoinWeightGroupResponse response;
  RETURN_IF_ERROR(FromGrpc(address_, impl_->stub->JoinWeightGroup(&ctx, request, &response)));
  return response;
}

absl::StatusOr<rollout::BeginWeightUpdateResponse> RolloutClient::BeginWeightUpdate(
    const rollout::WeightManifest& manifest, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::BeginWeightUpdateResponse response;
  RETURN_IF_ERROR(FromGrpc(address_, impl_->stub->BeginWeightUpdate(&ctx, manifest, &response)));
  return response;
}

absl::StatusOr<rollout::UpdateWeightsResponse> RolloutClient::EndWeightUpdate(uint64_t version,
                                                                              absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::EndWeightUpdateRequest request;
  request.set_version(version);
  rollout::UpdateWeightsResponse response;
  RETURN_IF_ERROR(FromGrpc(address_, impl_->stub->EndWeightUpdate(&ctx, request, &response)));
  return response;
}

absl::StatusOr<rollout::UpdateWeightsResponse> RolloutClient::UpdateWeightsIpc(
    const rollout::IpcWeightUpdate& request, absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(ToChrono(deadline));
  rollout::UpdateWeightsResponse response;
  RETURN_IF_ERROR(FromGrpc(address_, impl_->stub->UpdateWeightsIpc(&ctx, request, &response)));
  return response;
}

}  // namespace grpo
