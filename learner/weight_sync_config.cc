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
