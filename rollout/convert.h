// Plain rollout types (rollout/rollout_types.h, namespace grpo) <-> proto/rollout.proto messages
// (namespace grpo::rollout), for the client and the server. Field-for-field copies; validation is
// the engine's job.
#pragma once

#include "proto/rollout.pb.h"
#include "rollout/rollout_types.h"

namespace grpo {

void ToProto(const SamplingParams& in, rollout::SamplingParams* out);
SamplingParams FromProto(const rollout::SamplingParams& in);
void ToProto(const GroupResult& in, rollout::GroupResult* out);
GroupResult FromProto(const rollout::GroupResult& in);
void ToProto(const RolloutStatus& in, rollout::StatusResponse* out);
RolloutStatus FromProto(const rollout::StatusResponse& in);

}  // namespace grpo
