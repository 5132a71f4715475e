// The "weight_sync" config section (learner/weight_sync_config.h).
#include "learner/weight_sync_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace grpo {

nlohmann::json DefaultWeightSyncConfigJson() {
  return {{"transport", "auto"}, {"bucket_mb", 64.0}, {"dtype", "auto"}};
}

WeightSyncConfig ReadWeightSyncConfig(ConfigReader& r, const std::string& prefix) {
  WeightSyncConfig c;
  c.transport = r.Str(prefix + ".transport");
  c.bucket_mb = r.Double(prefix + ".bucket_mb");
  c.dtype = r.Str(prefix + ".dtype");
  return c;
}

std::string ResolveWeightTransport(const WeightSyncConfig& config, const WeightSyncSetup& setup,
                                   std::string* why) {
  std::string unused;
  std::string& reason = why != nullptr ? *why : unused;
  if (config.transport != "auto") {
    reason = "set in the config";
    return config.transport;
  }
  if (setup.learner_cuda && setup.in_process_engines && setup.engines_cuda) {
    reason = "the learner and its in-process engines are on the GPU: device-to-device copies";
    return "ipc";
  }
  if (setup.learner_cuda && setup.remote_workers) {
    // NCCL takes one rank per GPU, and a rollout server on this machine may well share the
    // learner's GPU (grpo train's does), so never collective by itself. A server on this machine
    // with its engine on a GPU takes CUDA IPC handles; any other refuses once and stays on grpc.
    reason =
        "the learner is on the GPU: CUDA IPC handles to rollout servers on this machine's GPUs, "
        "grpc to the others";
    return "ipc";
  }
  if (!setup.learner_cuda) {
    reason = "the learner is on the CPU";
  } else if (setup.in_process_engines) {
    reason = "the in-process engines are on the CPU";
  } else {
    reason = "workers given by the caller";
  }
  return "grpc";
}

absl::Status WeightSyncConfig::Validate() const {
  if (transport != "auto" && transport != "grpc" && transport != "collective" &&
      transport != "ipc") {
    return absl::InvalidArgumentError(absl::StrCat("'weight_sync.transport' is \"", transport,
                                                   "\"; it must be auto, grpc, collective or ipc"));
  }
  if (!(bucket_mb > 0 && bucket_mb <= 1024) || !std::isfinite(bucket_mb)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'weight_sync.bucket_mb' is ", bucket_mb, "; it must lie in (0, 1024]"));
  }
  if (bucket_bytes() < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("'weight_sync.bucket_mb' is ", bucket_mb, "; a bucket must hold 4 bytes"));
  }
  if (dtype != "auto" && dtype != "fp32" && dtype != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("'weight_sync.dtype' is \"", dtype, "\"; it must be auto, fp32 or bf16"));
  }
  return absl::OkStatus();
}

}  // namespace grpo
