// Plain rollout types <-> proto messages (rollout/convert.h).
#include "rollout/convert.h"

namespace grpo {

void ToProto(const SamplingParams& in, rollout::SamplingParams* out) {
  out->set_group_size(in.group_size);
  out->set_temperature(in.temperature);
  out->set_top_p(in.top_p);
  out->set_top_k(in.top_k);
  out->set_max_new_tokens(in.max_new_tokens);
  out->mutable_stop_token_ids()->Assign(in.stop_token_ids.begin(), in.stop_token_ids.end());
  for (const std::string& s : in.stop_strings) out->add_stop_strings(s);
  out->set_seed(in.seed);
  out->set_return_routing(in.return_routing);
  out->set_deterministic(in.deterministic);
}

SamplingParams FromProto(const rollout::SamplingParams& in) {
  SamplingParams out;
  out.group_size = in.group_size();
  out.temperature = in.temperature();
  out.top_p = in.top_p() == 0.0f ? 1.0f : in.top_p();  // proto3 cannot tell unset from 0
  out.top_k = in.top_k();
  out.max_new_tokens = in.max_new_tokens();
  out.stop_token_ids.assign(in.stop_token_ids().begin(), in.stop_token_ids().end());
  out.stop_strings.assign(in.stop_strings().begin(), in.stop_strings().end());
  out.seed = in.seed();
  out.return_routing = in.return_routing();
  out.deterministic = in.deterministic();
  return out;
}

void ToProto(const GroupResult& in, rollout::GroupResult* out) {
  out->set_prompt_id(in.prompt_id);
  out->set_prompt_index(in.prompt_index);
  for (const Completion& c : in.completions) {
    rollout::Completion* pc = out->add_completions();
    pc->set_sample_index(c.sample_index);
    pc->mutable_token_ids()->Assign(c.token_ids.begin(), c.token_ids.end());
    pc->mutable_logprobs()->Assign(c.logprobs.begin(), c.logprobs.end());
    pc->set_finish_reason(static_cast<rollout::FinishReason>(c.finish_reason));
    pc->set_stop_token_id(c.stop_token_id);
    pc->set_stop_string(c.stop_string);
    pc->set_weight_version(c.weight_version);
    if (!c.routing.expert_ids.empty()) {
      rollout::Routing* r = pc->mutable_routing();
      r->set_num_moe_layers(c.routing.num_moe_layers);
      r->set_num_tokens(c.routing.num_tokens);
      r->set_top_k(c.routing.top_k);
      r->mutable_expert_ids()->Assign(c.routing.expert_ids.begin(), c.routing.expert_ids.end());
    }
  }
}

GroupResult FromProto(const rollout::GroupResult& in) {
  GroupResult out;
  out.prompt_id = in.prompt_id();
  out.prompt_index = in.prompt_index();
  out.completions.reserve(in.completions_size());
  for (const rollout::Completion& pc : in.completions()) {
    Completion c;
    c.sample_index = pc.sample_index();
    c.token_ids.assign(pc.token_ids().begin(), pc.token_ids().end());
    c.logprobs.assign(pc.logprobs().begin(), pc.logprobs().end());
    c.finish_reason = static_cast<FinishReason>(pc.finish_reason());
    c.stop_token_id = pc.stop_token_id();
    c.stop_string = pc.stop_string();
    c.weight_version = pc.weight_version();
    if (pc.has_routing()) {
      c.routing.num_moe_layers = pc.routing().num_moe_layers();
      c.routing.num_tokens = pc.routing().num_tokens();
      c.routing.top_k = pc.routing().top_k();
      c.routing.expert_ids.assign(pc.routing().expert_ids().begin(),
                                  pc.routing().expert_ids().end());
    }
    out.completions.push_back(std::move(c));
  }
  return out;
}

void ToProto(const RolloutStatus& in, rollout::StatusResponse* out) {
  out->set_weight_version(in.weight_version);
  out->set_staged_version(in.staged_version);
  out->set_queued_sequences(in.queued_sequences);
  out->set_running_sequences(in.running_sequences);
  out->set_tokens_per_second(in.tokens_per_second);
  out->set_total_tokens(in.total_tokens);
  out->set_kv_bytes_budget(in.kv_bytes_budget);
  out->set_kv_bytes_used(in.kv_bytes_used);
  out->set_max_context(in.max_context);
  out->set_layout_fingerprint(in.layout_fingerprint);
  out->set_model_type(in.model_type);
  out->set_num_params(static_cast<uint64_t>(in.num_params));
  out->set_vocab_size(in.vocab_size);
  out->set_device(in.device);
}

RolloutStatus FromProto(const rollout::StatusResponse& in) {
  RolloutStatus out;
  out.weight_version = in.weight_version();
  out.staged_version = in.staged_version();
  out.queued_sequences = in.queued_sequences();
  out.running_sequences = in.running_sequences();
  out.tokens_per_second = in.tokens_per_second();
  out.total_tokens = in.total_tokens();
  out.kv_bytes_budget = in.kv_bytes_budget();
  out.kv_bytes_used = in.kv_bytes_used();
  out.max_context = in.max_context();
  out.layout_fingerprint = in.layout_fingerprint();
  out.model_type = in.model_type();
  out.num_params = static_cast<int64_t>(in.num_params());
  out.vocab_size = in.vocab_size();
  out.device = in.device();
  return out;
}

}  // namespace grpo
