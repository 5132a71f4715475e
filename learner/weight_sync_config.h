// The learner config's "weight_sync" section: how new weights reach the rollout workers
// (learner/weight_sync.h). Its own file so that learner/config.h stays light and the section's
// documentation sits beside its parser.
//
//   "weight_sync": {
//     "transport": "auto",  // auto | grpc | collective | ipc
//     "bucket_mb": 64,      // collective bucket size, MiB (> 0, at most 1024)
//     "dtype": "auto"       // auto | fp32 | bf16 (collective transports; grpc: see below)
//   }
//
// transport:
//   grpc        point to point: the UpdateWeights stream to remote workers, a direct staged copy
//               into in-process engines. Works everywhere. Always lossless: bf16 on the wire
//               when every weight is a bf16 value (optimizer.weight_dtype "bf16"), else fp32.
//   collective  one broadcast to all workers per bucket: in-process workers over a LocalGroup,
//               remote workers over NCCL (they join a group handed out over gRPC; needs CUDA and
//               NCCL on the learner and the workers; a worker that cannot join, or a group that
//               fails, falls back to grpc for that update).
//   ipc         the learner on a GPU ("device" "cuda", else a config error) copies its bf16 GPU
//               weights device to device, no host round trip, into in-process engines on cuda
//               (CudaModel::CopyWeightsFrom) and into rollout servers on this machine whose engine
//               is on a GPU (CUDA IPC handles, RolloutService UpdateWeightsIpc); Publish returns
//               once they serve them. Any other worker, and a copy that fails, gets grpc (a server
//               that cannot take handles says so once and stays on grpc).
//   auto        picked at start-up from where things compute (ResolveWeightTransport below),
//               logged once: ipc when the learner is on cuda and its in-process engines are too,
//               or it has remote workers; grpc otherwise. The CPU engines make fp32 point to
//               point as fast as a broadcast (one copy per worker, bench/weight_sync_bench.cc),
//               and grpc is the only path across mismatched hardware. Never collective: NCCL
//               takes one rank per GPU, and a rollout server on the learner's machine may share
//               its GPU (grpo train's services do), which the learner cannot tell; set
//               "collective" when every remote worker has a GPU of its own.
// dtype (collective):
//   fp32  bitwise the learner's parameters: rollout logprobs stay equal to the learner's.
//   bf16  half the bytes, round to nearest even; CPU receivers widen it back to fp32.
//   auto  fp32 over a LocalGroup or whenever rollout.deterministic is on; bf16 over NCCL (GPU
//         receivers) otherwise.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "common/json_config.h"
#include "nlohmann/json.hpp"

namespace grpo {

struct WeightSyncConfig {
  std::string transport = "auto";
  double bucket_mb = 64;
  std::string dtype = "auto";

  // Errors name the key ("'weight_sync.transport' is \"nccl2\"; ...").
  absl::Status Validate() const;
  int64_t bucket_bytes() const { return static_cast<int64_t>(bucket_mb * 1024 * 1024); }
};

// Where a run computes, as far as the transport cares.
struct WeightSyncSetup {
  bool learner_cuda = false;        // the learner's model is on a GPU (resolved 'device')
  bool in_process_engines = false;  // the trainer made its own engines (no rollout.workers)
  bool engines_cuda = false;        // those engines decode on a GPU ('rollout.local_device')
  bool remote_workers = false;      // rollout.workers lists servers in other processes
  bool nccl_usable = false;         // comm::NcclUsable() on the learner
};

// The transport a run uses: config.transport unless it is "auto", which becomes ipc or grpc by
// the rules above. *why (may be null) gets a phrase for the log, e.g. "the learner and
// its in-process engines share the GPU".
std::string ResolveWeightTransport(const WeightSyncConfig& config, const WeightSyncSetup& setup,
                                   std::string* why);

// The section's defaults, for DefaultLearnerConfigJson().
nlohmann::json DefaultWeightSyncConfigJson();
// Reads prefix.transport, prefix.bucket_mb, prefix.dtype from a merged config.
WeightSyncConfig ReadWeightSyncConfig(ConfigReader& r, const std::string& prefix);

}  // namespace grpo
