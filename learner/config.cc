// Learner config: defaults, merge, overrides, typed parsing and validation (see config.h).
#include "learner/config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_config.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/reward_set.h"

namespace grpo {
namespace {

using nlohmann::json;

// Subtrees handed whole to their own parsers (which reject unknown keys themselves).
bool IsPassThrough(const std::string& path) {
  return path == "data" || path == "chat_template" || path == "reward";
}

json MakeDefaults() {
  // clang-format off
  return json{
    {"model", ""},              // HF directory of the initial policy (required)
    {"tokenizer", ""},          // tokenizer.json; "" = <model>/tokenizer.json
    {"output_dir", ""},         // where metrics, events, samples and checkpoints go (required)
    {"seed", 0},                // all sampling, shuffling and splitting derive from (seed, step)
    {"total_steps", 1},         // GRPO steps (one rollout batch each)
    {"device", "cpu"},          // forward/backward: cpu | cuda | auto (cuda when a GPU is present
                                // and the config allows it); learner/device_model.h
    {"data", json::object()},   // DatasetConfig: {"path", "seed", "shuffle", ...}; path required
    {"chat_template", json::object()},  // ChatTemplateConfig: {"name": "chatml", ...}
    {"reward", json::object()}, // RewardSetConfig: {"rewards": [...], "failure_score": 0}
    {"rollout", {
      {"workers", json::array()},   // RolloutService addresses; [] = in-process generation
      {"local_workers", 1},         // in-process engines when workers is empty
      {"local_device", "cpu"},      // where they and held-out eval decode: cpu | cuda | auto
      {"group_size", 8},            // G completions per prompt (TRL 8; DeepSeekMath 64; R1 16)
      {"prompts_per_step", 16},     // B prompts per step
      {"temperature", 1.0},         // rollout = learner temperature (ALGORITHMS.md §10)
      {"max_new_tokens", 64},       // generation budget per completion
      {"stop_tokens", json::array()},  // token strings that end a completion (kept in it)
      {"max_prompt_tokens", 512},
      {"timeout_s", 600.0},         // deadline of one rollout call or weight push (remote workers)
      {"deterministic", false},     // batch-invariant kernels: rollout logprobs == learner's, bitwise
    }},
    {"algorithm", {
      {"advantage", "grpo"},        // grpo | dr_grpo | batch_std | rloo
      {"advantage_eps", 1e-6},      // verl 1e-6 (TRL 1e-4, Oat 1e-8)
      {"policy_loss", "ppo_clip"},  // ppo_clip | gspo
      {"clip_low", 0.2},            // eps_low (verl/TRL 0.2; GSPO 3e-4)
      {"clip_high", 0.2},           // eps_high (DAPO clip-higher 0.28; GSPO 4e-4)
      {"dual_clip", 3.0},           // PPO dual-clip c for A < 0 (verl 3.0); 0 = off
      {"kl_coef", 0.0},             // beta (DeepSeekMath 0.04, R1 0.001, DAPO/Dr.GRPO 0)
      {"kl_estimator", "k3"},       // k1 | k2 | k3
      {"entropy_coef", 0.0},
      {"aggregation", "token-mean"},  // token-mean | seq-mean-token-mean |
                                      // seq-mean-token-sum-norm | seq-mean-token-sum
      {"norm_length", 0},           // L of seq-mean-token-sum-norm; 0 = rollout.max_new_tokens
      {"mismatch", "none"},         // none | token_tis | token_mis | seq_tis | seq_mis
      {"mismatch_cap", 2.0},        // C (verl 2.0)
      {"mismatch_low", 0.5},        // MIS lower edge (TRL/verl band [0.5, 2])
      {"ppo_epochs", 1},
      {"mini_batches", 1},          // optimizer steps per epoch
      {"micro_batch_seqs", 0},      // sequences per forward/backward; 0 = whole mini-batch
      {"old_logprobs", "recompute"},  // recompute (decoupled) | rollout (bypass, lp_old = lp_roll)
      {"ref_refresh_every", 0},     // reference <- policy every N steps (R1: 400); 0 = never
      {"dynamic_sampling", false},  // DAPO: drop groups whose rewards are all equal, refill
      {"max_gen_batches", 10},      // rollout rounds per step at most (verl DAPO 10); if fewer
                                    // than B groups have signal by then, the step trains on
                                    // those (none: no update, a warning)
      {"overlong_filter", false},   // DAPO: mask completions truncated at max_new_tokens
      {"routing_replay", false},    // R3: learner forwards reuse the rollout's expert ids
      {"aux_loss_coef", 0.0},       // router load-balancing loss (HF/TRL 0.001)
    }},
    {"data_parallel", {             // learner replicas (learner/data_parallel.h)
      {"ranks", 1},                 // replicas; on the CPU they are threads of this process
                                    // (a correctness path, not a speed-up: GEMMs use every core)
      {"bucket_mb", 25.0},          // gradient all-reduce bucket in MiB (PyTorch DDP 25)
      {"timeout_s", 600.0},         // deadline of every collective between the ranks
      {"check_replicas", false},    // compare parameter hashes across ranks after every step
    }},
    {"optimizer", {
      {"lr", 1e-6}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
      {"weight_decay", 0.01},       // verl 0.01
      {"max_grad_norm", 1.0},       // <= 0 = no clipping
      {"schedule", "constant"},     // constant | cosine
      {"warmup_steps", 0}, {"warmup_init_ratio", 0.0}, {"min_lr_ratio", 0.0}, {"num_cycles", 0.5},
      {"weight_dtype", "fp32"},     // fp32 | bf16 (bf16-valued weights, fp32 master in AdamW)
    }},
    {"checkpoint", {
      {"every", 0},                 // steps between checkpoints; 0 = only at the end
      {"keep", 3},                  // newest checkpoints kept
    }},
    {"log", {
      {"samples", 2},               // completions per step written to samples.jsonl
      {"tensorboard", true},        // events.out.tfevents.* in output_dir
    }},
    {"eval", {
      {"path", ""},                 // held-out JSONL dataset; "" = no evaluation during training
      {"every", 0},                 // steps between evaluations (and after the last); 0 = never
      {"samples", 1},               // completions per prompt
      {"temperature", 0.0},         // 0 = greedy
      {"max_new_tokens", 0},        // 0 = rollout.max_new_tokens
      {"limit", 0},                 // first N rows; 0 = all
    }},
    // transport auto|grpc|collective|ipc, bucket_mb, dtype auto|fp32|bf16
    // (learner/weight_sync_config.h documents each)
    {"weight_sync", DefaultWeightSyncConfigJson()},
  };
  // clang-format on
}

absl::Status Range(bool ok, const std::string& key, const std::string& what) {
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(absl::StrCat("'", key, "' ", what));
}

}  // namespace

const json& DefaultLearnerConfigJson() {
  static const json* defaults = new json(MakeDefaults());
  return *defaults;
}

absl::Status ApplyOverride(const std::string& assignment, json* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set '", assignment, "': expected key.sub=value"));
  }
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  json value;
  auto parsed = ParseJson(text);
  value = parsed.ok() ? *parsed : json(text);
  // Walk the defaults to check the key exists; pass-through subtrees accept any sub-key.
  const json* d = &DefaultLearnerConfigJson();
  json* c = config;
  std::string path;
  const std::vector<std::string> parts = absl::StrSplit(key, '.');
  bool free = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    path = path.empty() ? parts[i] : path + "." + parts[i];
    if (!free) {
      if (!d->is_object() || !d->contains(parts[i])) {
        return absl::InvalidArgumentError(absl::StrCat("--set: unknown key '", path, "'"));
      }
      d = &(*d)[parts[i]];
      if (IsPassThrough(path)) free = true;
    }
    if (!c->is_object()) *c = json::object();
    if (i + 1 == parts.size()) {
      (*c)[parts[i]] = value;
    } else {
      c = &(*c)[parts[i]];
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LearnerConfig> ParseLearnerConfig(const json& user, const std::string& source) {
  json merged = DefaultLearnerConfigJson();
  RETURN_IF_ERROR(WithContext(MergeOverDefaults(user, &merged, IsPassThrough), source));
  ConfigReader r{merged};
  LearnerConfig c;
  c.model = r.Str("model");
  c.tokenizer = r.Str("tokenizer");
  c.output_dir = r.Str("output_dir");
  const json& seed = merged["seed"];
  if (!seed.is_number_integer() || (!seed.is_number_unsigned() && seed.get<int64_t>() < 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": 'seed' must be a non-negative integer"));
  }
  c.seed = seed.get<uint64_t>();
  c.total_steps = r.Int("total_steps");
  c.device = r.Str("device");
  if (merged["data"].empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": 'data' is required: {\"path\": \"train.jsonl\"}"));
  }
  {
    auto d = DatasetConfigFromJson(merged["data"]);
    if (!d.ok()) return WithContext(d.status(), absl::StrCat(source, ": data"));
    c.data = *d;
  }
  {
    auto t = ChatTemplateConfigFromJson(merged["chat_template"]);
    if (!t.ok()) return WithContext(t.status(), absl::StrCat(source, ": chat_template"));
    c.chat_template = *t;
  }
  {
    if (merged["reward"].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": 'reward' is required: {\"rewards\": [{\"name\": ...}]}"));
    }
    auto rs = RewardSetConfig::FromJson(merged["reward"]);
    if (!rs.ok()) return WithContext(rs.status(), absl::StrCat(source, ": reward"));
    c.reward = merged["reward"];
  }
  auto& ro = c.rollout;
  ro.workers = r.Strings("rollout.workers");
  ro.local_workers = r.Int("rollout.local_workers");
  ro.local_device = r.Str("rollout.local_device");
  ro.group_size = r.Int("rollout.group_size");
  ro.prompts_per_step = r.Int("rollout.prompts_per_step");
  ro.temperature = r.Double("rollout.temperature");
  ro.max_new_tokens = r.Int("rollout.max_new_tokens");
  ro.stop_tokens = r.Strings("rollout.stop_tokens");
  ro.max_prompt_tokens = r.Int("rollout.max_prompt_tokens");
  ro.timeout_s = r.Double("rollout.timeout_s");
  ro.deterministic = r.Bool("rollout.deterministic");
  auto& al = c.algorithm;
  al.advantage.eps = r.Double("algorithm.advantage_eps");
  auto parse_enum = [&](auto parser, const std::string& key, auto* out) -> absl::Status {
    auto v = parser(r.Str(key));
    if (!v.ok()) return WithContext(v.status(), absl::StrCat(source, ": ", key));
    *out = *v;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(
      parse_enum(ParseAdvantageEstimator, "algorithm.advantage", &al.advantage.estimator));
  RETURN_IF_ERROR(parse_enum(ParsePolicyLossType, "algorithm.policy_loss", &al.loss.policy_loss));
  RETURN_IF_ERROR(parse_enum(ParseKlEstimator, "algorithm.kl_estimator", &al.loss.kl_estimator));
  RETURN_IF_ERROR(parse_enum(ParseLossAggregation, "algorithm.aggregation", &al.loss.aggregation));
  RETURN_IF_ERROR(parse_enum(ParseMismatchCorrection, "algorithm.mismatch", &al.loss.mismatch));
  al.loss.clip_low = r.Double("algorithm.clip_low");
  al.loss.clip_high = r.Double("algorithm.clip_high");
  al.loss.dual_clip = r.Double("algorithm.dual_clip");
  al.loss.kl_coef = r.Double("algorithm.kl_coef");
  al.loss.entropy_coef = r.Double("algorithm.entropy_coef");
  al.loss.norm_length = r.Int("algorithm.norm_length");
  if (al.loss.norm_length == 0) al.loss.norm_length = ro.max_new_tokens;
  al.loss.mismatch_cap = r.Double("algorithm.mismatch_cap");
  al.loss.mismatch_low = r.Double("algorithm.mismatch_low");
  al.ppo_epochs = r.Int("algorithm.ppo_epochs");
  al.mini_batches = r.Int("algorithm.mini_batches");
  al.micro_batch_seqs = r.Int("algorithm.micro_batch_seqs");
  al.old_logprobs = r.Str("algorithm.old_logprobs");
  al.ref_refresh_every = r.Int("algorithm.ref_refresh_every");
  al.dynamic_sampling = r.Bool("algorithm.dynamic_sampling");
  al.max_gen_batches = r.Int("algorithm.max_gen_batches");
  al.overlong_filter = r.Bool("algorithm.overlong_filter");
  al.routing_replay = r.Bool("algorithm.routing_replay");
  al.aux_loss_coef = r.Double("algorithm.aux_loss_coef");
  c.data_parallel.ranks = r.Int("data_parallel.ranks");
  c.data_parallel.bucket_mb = r.Double("data_parallel.bucket_mb");
  c.data_parallel.timeout_s = r.Double("data_parallel.timeout_s");
  c.data_parallel.check_replicas = r.Bool("data_parallel.check_replicas");
  c.optimizer = ReadOptimizerConfig(r, "optimizer");
  c.checkpoint_every = r.Int("checkpoint.every");
  c.checkpoint_keep = r.Int("checkpoint.keep");
  c.log_samples = r.Int("log.samples");
  c.tensorboard = r.Bool("log.tensorboard");
  c.eval.path = r.Str("eval.path");
  c.eval.every = r.Int("eval.every");
  c.eval.samples = r.Int("eval.samples");
  c.eval.temperature = r.Double("eval.temperature");
  c.eval.max_new_tokens = r.Int("eval.max_new_tokens");
  c.eval.limit = r.Int("eval.limit");
  c.weight_sync = ReadWeightSyncConfig(r, "weight_sync");
  if (!r.status.ok()) return WithContext(r.status, source);
  RETURN_IF_ERROR(WithContext(c.Validate(), source));
  return c;
}

absl::Status LearnerConfig::Validate() const {
  RETURN_IF_ERROR(Range(!model.empty(), "model", "is required (an HF model directory)"));
  RETURN_IF_ERROR(Range(!output_dir.empty(), "output_dir", "is required"));
  RETURN_IF_ERROR(Range(total_steps >= 1, "total_steps", "must be >= 1"));
  RETURN_IF_ERROR(Range(device == "cpu" || device == "cuda" || device == "auto", "device",
                        "must be one of cpu, cuda, auto"));
  if (device == "cuda" && rollout.deterministic) {
    return absl::InvalidArgumentError(
        "'rollout.deterministic' needs 'device' cpu: bitwise equal rollout and learner logprobs "
        "come from the CPU's batch-invariant kernels (the GPU's bf16 GEMMs agree to rounding)");
  }
  RETURN_IF_ERROR(Range(rollout.local_device == "cpu" || rollout.local_device == "cuda" ||
                            rollout.local_device == "auto",
                        "rollout.local_device", "must be one of cpu, cuda, auto"));
  if (weight_sync.transport == "ipc" && device != "cuda") {
    return absl::InvalidArgumentError(
        "'weight_sync.transport' \"ipc\" copies the learner's GPU weights device to device (into "
        "in-process engines on cuda and rollout servers on this machine's GPUs): it needs "
        "'device' \"cuda\"");
  }
  if (rollout.local_device == "cuda" && rollout.deterministic) {
    return absl::InvalidArgumentError(
        "'rollout.deterministic' needs 'rollout.local_device' cpu: the GPU engine's kernels are "
        "not batch-invariant");
  }
  RETURN_IF_ERROR(WithContext(data.Validate(), "data"));
  RETURN_IF_ERROR(WithContext(chat_template.Validate(), "chat_template"));
  const auto& ro = rollout;
  RETURN_IF_ERROR(Range(ro.local_workers >= 1 && ro.local_workers <= 64, "rollout.local_workers",
                        "must lie in [1, 64]"));
  RETURN_IF_ERROR(Range(ro.group_size >= 1 && ro.group_size <= 4096, "rollout.group_size",
                        "must lie in [1, 4096]"));
  if (ro.group_size == 1 && algorithm.advantage.estimator == AdvantageEstimator::kGrpo) {
    return absl::InvalidArgumentError(
        "'rollout.group_size' is 1 but GRPO normalizes by the std of each group, which needs >= 2 "
        "samples; set rollout.group_size >= 2 (or algorithm.advantage to rloo / dr_grpo)");
  }
  RETURN_IF_ERROR(Range(ro.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1"));
  RETURN_IF_ERROR(Range(ro.temperature > 0 && std::isfinite(ro.temperature), "rollout.temperature",
                        "must be > 0 (the learner's logprobs use the same temperature)"));
  RETURN_IF_ERROR(Range(ro.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1"));
  RETURN_IF_ERROR(Range(ro.max_prompt_tokens >= 1, "rollout.max_prompt_tokens", "must be >= 1"));
  RETURN_IF_ERROR(Range(ro.timeout_s > 0 && ro.timeout_s <= 86400, "rollout.timeout_s",
                        "must lie in (0, 86400]"));
  const auto& al = algorithm;
  RETURN_IF_ERROR(Range(al.advantage.eps >= 0 && std::isfinite(al.advantage.eps),
                        "algorithm.advantage_eps", "must be >= 0"));
  {
    absl::Status s = al.loss.Validate();
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("algorithm: ", s.message()));
  }
  RETURN_IF_ERROR(Range(al.ppo_epochs >= 1, "algorithm.ppo_epochs", "must be >= 1"));
  RETURN_IF_ERROR(Range(
      al.mini_batches >= 1 && al.mini_batches <= ro.prompts_per_step, "algorithm.mini_batches",
      "must lie in [1, rollout.prompts_per_step] (mini-batches hold whole groups)"));
  RETURN_IF_ERROR(Range(ro.prompts_per_step % al.mini_batches == 0, "algorithm.mini_batches",
                        "must divide rollout.prompts_per_step"));
  RETURN_IF_ERROR(Range(al.micro_batch_seqs >= 0, "algorithm.micro_batch_seqs", "must be >= 0"));
  RETURN_IF_ERROR(Range(al.old_logprobs == "recompute" || al.old_logprobs == "rollout",
                        "algorithm.old_logprobs", "must be recompute or rollout"));
  RETURN_IF_ERROR(Range(al.ref_refresh_every >= 0, "algorithm.ref_refresh_every", "must be >= 0"));
  RETURN_IF_ERROR(Range(al.max_gen_batches >= 1, "algorithm.max_gen_batches", "must be >= 1"));
  RETURN_IF_ERROR(Range(al.aux_loss_coef >= 0 && std::isfinite(al.aux_loss_coef),
                        "algorithm.aux_loss_coef", "must be >= 0"));
  RETURN_IF_ERROR(data_parallel.Validate("data_parallel"));
  RETURN_IF_ERROR(optimizer.Validate());
  RETURN_IF_ERROR(weight_sync.Validate());
  RETURN_IF_ERROR(Range(checkpoint_every >= 0, "checkpoint.every", "must be >= 0"));
  RETURN_IF_ERROR(Range(checkpoint_keep >= 1, "checkpoint.keep", "must be >= 1"));
  RETURN_IF_ERROR(Range(eval.every >= 0, "eval.every", "must be >= 0"));
  RETURN_IF_ERROR(Range(eval.every == 0 || !eval.path.empty(), "eval.every",
                        "needs eval.path (a held-out dataset)"));
  RETURN_IF_ERROR(
      Range(eval.samples >= 1 && eval.samples <= 1024, "eval.samples", "must be in [1, 1024]"));
  RETURN_IF_ERROR(Range(eval.temperature >= 0 && eval.temperature <= 10, "eval.temperature",
                        "must be in [0, 10]"));
  RETURN_IF_ERROR(Range(eval.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0"));
  RETURN_IF_ERROR(Range(eval.limit >= 0, "eval.limit", "must be >= 0"));
  RETURN_IF_ERROR(Range(log_samples >= 0, "log.samples", "must be >= 0"));
  return absl::OkStatus();
}

absl::StatusOr<LearnerConfig> LoadLearnerConfig(const std::string& path,
                                                const std::vector<std::string>& overrides) {
  ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  for (const std::string& o : overrides) RETURN_IF_ERROR(ApplyOverride(o, &j));
  return ParseLearnerConfig(j, path);
}

}  // namespace grpo
