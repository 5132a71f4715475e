// The GRPO training loop (see trainer.h).
#include "learner/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/nccl_communicator.h"
#include "common/log.h"
#include "common/status.h"
#include "learner/eval.h"
#include "learner/grpo.h"
#include "learner/random.h"
#include "model/checkpoint.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Stream keys: which random choice of a step a SplitMix64 stream feeds.
constexpr uint64_t kKeySampling = 1;
constexpr uint64_t kKeyShuffle = 2;

uint64_t StreamKey(int64_t step, uint64_t what, uint64_t sub) {
  return (static_cast<uint64_t>(step) << 24) ^ (what << 16) ^ sub;
}

}  // namespace

struct Trainer::Sample {
  int64_t group = 0;
  const std::vector<int32_t>* prompt = nullptr;  // the group's prompt ids
  const Completion* completion = nullptr;
  double reward = 0;
  double advantage = 0;
  double mask = 1;                     // 0: overlong-filtered
  std::vector<double> old_lp, ref_lp;  // (C) once computed
};

struct Trainer::Group {
  const Example* example = nullptr;
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  std::vector<Completion> completions;
  std::vector<RewardOutput> rewards;
  std::vector<std::string> texts;
};

std::string Trainer::checkpoint_root() const {
  return (fs::path(config_.output_dir) / "checkpoints").string();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(LearnerConfig config,
                                                         TrainerOptions options) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->config_ = std::move(config);
  t->options_ = std::move(options);
  const LearnerConfig& c = t->config_;
  ASSIGN_OR_RETURN(t->policy_, LoadModel(c.model));
  t->tokenizer_path_ =
      c.tokenizer.empty() ? (fs::path(c.model) / "tokenizer.json").string() : c.tokenizer;
  if (!fs::exists(t->tokenizer_path_)) {
    return absl::NotFoundError(absl::StrCat("tokenizer ", t->tokenizer_path_,
                                            " not found; set \"tokenizer\" in the config"));
  }
  ASSIGN_OR_RETURN(t->tokenizer_, Tokenizer::FromFile(t->tokenizer_path_));
  if (t->tokenizer_->vocab_size() > t->policy_->config().vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer ", t->tokenizer_path_, " has ", t->tokenizer_->vocab_size(),
                     " ids but the model's vocab_size is ", t->policy_->config().vocab_size));
  }
  for (const std::string& s : c.rollout.stop_tokens) {
    auto id = t->tokenizer_->TokenToId(s);
    if (!id) {
      return absl::InvalidArgumentError(
          absl::StrCat("rollout.stop_tokens: '", s, "' is not a token of ", t->tokenizer_path_));
    }
    t->stop_ids_.push_back(*id);
  }
  if (c.algorithm.loss.kl_coef > 0) {
    ASSIGN_OR_RETURN(t->reference_, Model<float>::Create(t->policy_->config()));
    std::copy_n(t->policy_->params(), t->policy_->num_params(), t->reference_->params());
  }
  if (!c.eval.path.empty()) {
    DatasetConfig ec;
    ec.path = c.eval.path;
    ec.shuffle = false;
    ASSIGN_OR_RETURN(Dataset eval_ds, Dataset::Load(ec));
    t->eval_dataset_ = std::make_unique<Dataset>(std::move(eval_ds));
  }
  ASSIGN_OR_RETURN(Dataset ds, Dataset::Load(c.data));
  t->dataset_ = std::make_unique<Dataset>(std::move(ds));
  ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::Create(c.chat_template));
  t->template_ = std::make_unique<ChatTemplate>(std::move(tmpl));
  ASSIGN_OR_RETURN(RewardSetConfig rcfg, RewardSetConfig::FromJson(c.reward));
  ASSIGN_OR_RETURN(RewardSet rset, RewardSet::Create(rcfg));
  t->rewards_ = std::make_unique<RewardSet>(std::move(rset));

  {
    // In-process engines (local workers, held-out evaluation) decode here.
    ASSIGN_OR_RETURN(t->local_device_,
                     ResolveConfigDevice(c.rollout.local_device, "config 'rollout.local_device'"));
    if (t->local_device_ == Device::kCuda && c.rollout.deterministic) {
      GRPO_LOG(INFO, "rollout.local_device auto: the engines stay on the CPU (deterministic)");
      t->local_device_ = Device::kCpu;
    }
  }
  // The learner's device: decided here because the weight transport depends on it.
  ASSIGN_OR_RETURN(Device learner_device, ResolveConfigDevice(c.device, "config 'device'"));
  if (learner_device == Device::kCuda && c.rollout.deterministic) {
    GRPO_LOG(INFO, "device auto: the learner stays on the CPU (rollout.deterministic)");
    learner_device = Device::kCpu;
  }
  WeightSyncSetup sync_setup;
  sync_setup.learner_cuda = learner_device == Device::kCuda;
  sync_setup.engines_cuda = t->local_device_ == Device::kCuda;
  sync_setup.nccl_usable = comm::NcclUsable();
  if (!t->options_.workers.empty()) {
    t->workers_ = std::move(t->options_.workers);
  } else if (!c.rollout.workers.empty()) {
    sync_setup.remote_workers = true;
    for (const std::string& address : c.rollout.workers) {
      ASSIGN_OR_RETURN(auto w,
                       RemoteRolloutWorker::Connect(address, absl::Seconds(c.rollout.timeout_s)));
      t->workers_.push_back(std::move(w));
    }
  } else {
    // KV pool per in-process engine: room for its share of a step's groups at full length (so
    // nothing queues), at least one whole group, at most the engine's default 256 MiB unless one
    // group needs more (beyond that, groups wait their turn). A group's samples share its
    // prompt's rows (rollout/engine.h): prompt + G x max_new rows.
    const int64_t row_bytes = KvBytesPerToken(t->policy_->config(), sizeof(float));
    const int64_t group_bytes =
        (c.rollout.max_prompt_tokens + c.rollout.group_size * c.rollout.max_new_tokens) * row_bytes;
    const int64_t share = (c.rollout.prompts_per_step + c.rollout.local_workers - 1) /
                          c.rollout.local_workers * group_bytes;
    const int64_t budget = std::max(group_bytes, std::min(share, int64_t{256} << 20));
    sync_setup.in_process_engines = true;
    for (int64_t i = 0; i < c.rollout.local_workers; ++i) {
      ASSIGN_OR_RETURN(auto w, LocalRolloutWorker::Create(*t->policy_, absl::StrCat("local", i),
                                                          budget, t->local_device_));
      t->workers_.push_back(std::move(w));
    }
  }
  if (c.rollout.deterministic) {
    // Batch-invariant kernels: the learner's logprobs equal the rollout's bit for bit.
    t->policy_->set_batch_invariant(true);
    if (t->reference_ != nullptr) t->reference_->set_batch_invariant(true);
  }
  t->alive_.assign(t->workers_.size(), true);
  {
    WeightPublisherOptions wo;
    wo.config = c.weight_sync;
    std::string why;
    wo.config.transport = ResolveWeightTransport(c.weight_sync, sync_setup, &why);
    GRPO_LOG(INFO, "weight_sync.transport %s: %s (%s)", c.weight_sync.transport,
             wo.config.transport, why);
    wo.deterministic = c.rollout.deterministic;
    wo.timeout_s = c.rollout.timeout_s;
    if (wo.config.transport == "ipc") {
      // Read at each Publish, after the optimizer step (policy_dev_ is made further down).
      Trainer* tp = t.get();
      wo.device_weights = [tp]() -> absl::StatusOr<const CudaModel*> {
        if (tp->policy_dev_ == nullptr) return absl::FailedPreconditionError("no learner model");
        return tp->policy_dev_->DeviceWeights();
      };
    }
    ASSIGN_OR_RETURN(t->publisher_, WeightPublisher::Create(std::move(wo)));
  }
  t->optimizer_ = std::make_unique<AdamW>(t->policy_->num_params(), c.optimizer);

  int64_t resume_step = -1;
  if (t->options_.resume) {
    const std::vector<std::string> all = ListCheckpoints(t->checkpoint_root());
    if (all.empty()) {
      return absl::NotFoundError(
          absl::StrCat("--resume: no checkpoint under ", t->checkpoint_root()));
    }
    TrainerState st;
    RETURN_IF_ERROR(LoadCheckpoint(all.back(), t->policy_.get(), t->reference_.get(),
                                   t->optimizer_.get(), &st));
    if (st.seed != c.seed) {
      return absl::InvalidArgumentError(absl::StrCat("--resume: checkpoint ", all.back(),
                                                     " was made with seed ", st.seed,
                                                     " but the config has seed ", c.seed));
    }
    RETURN_IF_ERROR(WithContext(t->dataset_->Restore(st.dataset), all.back()));
    t->step_ = st.step;
    t->weight_version_ = st.weight_version;
    resume_step = st.step;
    GRPO_LOG(INFO, "resumed from %s (step %d)", all.back(), static_cast<int>(st.step));
  }
  // bf16 weights: the policy becomes bf16-valued (AdamW keeps the fp32 master) before any rollout
  // or forward, and so does the reference, so that the KL starts at 0 on the same weights.
  t->optimizer_->BindWeights(t->policy_->params());
  if (t->optimizer_->bf16_weights() && t->reference_ != nullptr) {
    RoundToBf16InPlace(t->reference_->params(), t->reference_->num_params());
  }
  // After the resume: the replicas copy the policy and optimizer state as they are now.
  ASSIGN_OR_RETURN(
      t->dp_, LocalDataParallel::Create(t->policy_.get(), t->optimizer_.get(), c.data_parallel));
  {
    const Device device = learner_device;
    ASSIGN_OR_RETURN(t->policy_dev_, DeviceModel::Create(t->policy_.get(), device));
    if (t->reference_ != nullptr) {
      ASSIGN_OR_RETURN(t->reference_dev_, DeviceModel::Create(t->reference_.get(), device));
    }
    if (device == Device::kCuda) RETURN_IF_ERROR(t->dp_->set_device_model(t->policy_dev_.get()));
    GRPO_LOG(INFO, "learner forward/backward on %s", DeviceName(device));
  }
  ASSIGN_OR_RETURN(MetricsWriter mw, MetricsWriter::Open(c.output_dir, c.tensorboard, resume_step));
  t->metrics_ = std::make_unique<MetricsWriter>(std::move(mw));
  // Every worker starts from the learner's current weights, under a version newer than any it
  // has seen (workers outlive learner restarts).
  for (size_t w = 0; w < t->workers_.size(); ++w) {
    auto v = t->workers_[w]->NewestVersion();
    if (!v.ok()) {
      GRPO_LOG(WARNING, "rollout worker %s is not answering, dropping it: %s",
               t->workers_[w]->name(), v.status().ToString());
      t->alive_[w] = false;
      continue;
    }
    t->weight_version_ = std::max<int64_t>(t->weight_version_, static_cast<int64_t>(*v));
  }
  std::map<std::string, double> ignored;
  RETURN_IF_ERROR(t->PushWeights(&ignored));
  return t;
}

absl::Status Trainer::PushWeights(std::map<std::string, double>* m) {
  const uint64_t version = static_cast<uint64_t>(weight_version_ + 1);
  std::vector<RolloutWorker*> ws;
  for (auto& w : workers_) ws.push_back(w.get());
  RETURN_IF_ERROR(publisher_->Publish(ws, &alive_, policy_->layout(),
                                      absl::MakeConstSpan(policy_->params(), policy_->num_params()),
                                      version, m));
  weight_version_ = static_cast<int64_t>(version);
  return absl::OkStatus();
}

absl::Status Trainer::CollectGroups(std::vector<Group>* groups, std::map<std::string, double>* m) {
  const LearnerConfig& c = config_;
  const int64_t B = c.rollout.prompts_per_step, G = c.rollout.group_size;
  SamplingParams sp;
  sp.group_size = static_cast<int32_t>(G);
  sp.temperature = static_cast<float>(c.rollout.temperature);
  sp.max_new_tokens = static_cast<int32_t>(c.rollout.max_new_tokens);
  sp.stop_token_ids = stop_ids_;
  sp.return_routing = c.algorithm.routing_replay;
  sp.deterministic = c.rollout.deterministic;
  double rollout_s = 0, reward_s = 0, generated = 0, dropped = 0, reissued = 0;
  int64_t rounds = 0;
  std::vector<RewardOutput> all_outputs;  // every scored completion, for reward metrics
  while (static_cast<int64_t>(groups->size()) < B && rounds < c.algorithm.max_gen_batches) {
    const int64_t want =
        c.algorithm.dynamic_sampling ? B - static_cast<int64_t>(groups->size()) : B;
    std::vector<Group> batch(want);
    std::vector<RolloutPrompt> reqs(want);
    // One seed per rollout round; the engine keys each sample's stream by (seed, prompt_id, i).
    sp.seed =
        SplitMix64(c.seed, StreamKey(step_, kKeySampling, static_cast<uint64_t>(rounds))).Next();
    for (int64_t i = 0; i < want; ++i) {
      Group& g = batch[i];
      g.example = &dataset_->Next();
      auto text = template_->Render(g.example->prompt);
      if (!text.ok()) {
        return WithContext(text.status(), absl::StrCat("dataset row ", g.example->line));
      }
      g.prompt_text = *text;
      ASSIGN_OR_RETURN(g.prompt_ids, tokenizer_->Encode(g.prompt_text));
      if (g.prompt_ids.empty() ||
          static_cast<int64_t>(g.prompt_ids.size()) > c.rollout.max_prompt_tokens) {
        return absl::InvalidArgumentError(absl::StrCat(
            c.data.path, ":", g.example->line, ": the prompt has ", g.prompt_ids.size(),
            " tokens; it must have 1 to rollout.max_prompt_tokens = ",
            c.rollout.max_prompt_tokens));
      }
      if (static_cast<int64_t>(g.prompt_ids.size()) + c.rollout.max_new_tokens >
          policy_->config().max_position_embeddings) {
        return absl::InvalidArgumentError(absl::StrCat(
            c.data.path, ":", g.example->line, ": prompt (", g.prompt_ids.size(),
            " tokens) + rollout.max_new_tokens exceeds the model's max_position_embeddings ",
            policy_->config().max_position_embeddings));
      }
      reqs[i].prompt_id = static_cast<uint64_t>(i);
      reqs[i].token_ids = g.prompt_ids;
    }
    auto t0 = std::chrono::steady_clock::now();
    std::vector<RolloutWorker*> ws;
    for (auto& w : workers_) ws.push_back(w.get());
    // No worker generates on old weights: one that joined late or missed an update is brought
    // to the current version first (learner/weight_sync.h).
    RETURN_IF_ERROR(
        EnsureCurrentWeights(ws, &alive_, policy_->layout(),
                             absl::MakeConstSpan(policy_->params(), policy_->num_params()),
                             static_cast<uint64_t>(weight_version_))
            .status());
    DispatchStats ds;
    ASSIGN_OR_RETURN(std::vector<GroupResult> results, DispatchGroups(ws, &alive_, reqs, sp, &ds));
    rollout_s += Seconds(t0);
    reissued += static_cast<double>(ds.reissued_groups);

    t0 = std::chrono::steady_clock::now();
    std::vector<RewardInput> inputs;
    for (int64_t i = 0; i < want; ++i) {
      Group& g = batch[i];
      g.completions = std::move(results[i].completions);
      for (const Completion& comp : g.completions) {
        generated += static_cast<double>(comp.token_ids.size());
        // Special tokens (a stop token such as <|endoftext|>) are not part of the answer text.
        ASSIGN_OR_RETURN(std::string text,
                         tokenizer_->Decode(comp.token_ids, /*skip_special_tokens=*/true));
        g.texts.push_back(text);
        RewardInput in;
        in.prompt = g.prompt_text;
        in.completion = text;
        in.completion_ids = comp.token_ids;
        in.ground_truth = g.example->ground_truth;
        in.data_source = g.example->data_source;
        in.extra = g.example->extra;
        inputs.push_back(std::move(in));
      }
    }
    std::vector<RewardOutput> outs = rewards_->Score(inputs);
    reward_s += Seconds(t0);
    for (int64_t i = 0; i < want; ++i) {
      Group& g = batch[i];
      g.rewards.assign(outs.begin() + i * G, outs.begin() + (i + 1) * G);
      all_outputs.insert(all_outputs.end(), g.rewards.begin(), g.rewards.end());
      bool keep = true;
      if (c.algorithm.dynamic_sampling) {
        std::vector<double> r;
        for (const RewardOutput& o : g.rewards) r.push_back(o.score);
        keep = GroupsWithSignal(r, {G})[0];
      }
      if (!keep) {
        dropped += 1;
        continue;
      }
      if (static_cast<int64_t>(groups->size()) < B) groups->push_back(std::move(g));
    }
    ++rounds;
  }
  // Reward metrics over every completion scored this step (kept or dropped).
  double sum = 0, sq = 0, correct = 0, errors = 0;
  struct Moments {
    double sum = 0, sq = 0, count = 0;
  };
  std::map<std::string, Moments> comps;
  for (const RewardOutput& o : all_outputs) {
    sum += o.score;
    sq += o.score * o.score;
    if (o.score >= 1.0) correct += 1;
    if (!o.error.empty()) errors += 1;
    for (const auto& [k, v] : o.components) {
      comps[k].sum += v;
      comps[k].sq += v * v;
      comps[k].count += 1;
    }
  }
  const double n = std::max<double>(1, static_cast<double>(all_outputs.size()));
  const double mean = sum / n;
  (*m)["reward/mean"] = mean;
  (*m)["reward/std"] = std::sqrt(std::max(0.0, sq / n - mean * mean));
  (*m)["reward/accuracy"] = correct / n;  // share of completions scoring >= 1 (a full answer)
  (*m)["reward/errors"] = errors;
  for (const auto& [k, v] : comps) {
    const double cm = v.sum / v.count;
    (*m)["reward/" + k + "/mean"] = cm;
    (*m)["reward/" + k + "/std"] = std::sqrt(std::max(0.0, v.sq / v.count - cm * cm));
  }
  (*m)["time/rollout_s"] = rollout_s;
  (*m)["time/reward_s"] = reward_s;
  (*m)["rollout/tokens_per_s"] = rollout_s > 0 ? generated / rollout_s : 0;
  (*m)["rollout/rounds"] = static_cast<double>(rounds);
  (*m)["rollout/groups_dropped"] = dropped;
  (*m)["rollout/groups_reissued"] = reissued;
  (*m)["rollout/groups_trained"] = static_cast<double>(groups->size());
  return absl::OkStatus();
}

// Packs seqs[first, last) (prompt + completion each) into *batch and, when `replay`, their
// recorded expert ids into *routing in Forward's (num_moe_layers, T, K) replay layout.
absl::Status Trainer::PackBatch(const std::vector<Sample*>& seqs, size_t first, size_t last,
                                bool replay, TokenBatch* batch,
                                std::vector<int32_t>* routing) const {
  for (size_t i = first; i < last; ++i) {
    std::vector<int32_t> toks = *seqs[i]->prompt;
    toks.insert(toks.end(), seqs[i]->completion->token_ids.begin(),
                seqs[i]->completion->token_ids.end());
    batch->Add(toks);
  }
  routing->clear();
  if (!replay) return absl::OkStatus();
  const int64_t L = policy_->config().NumMoeLayers(), K = policy_->config().num_experts_per_tok;
  const int64_t T = batch->num_tokens();
  routing->assign(L * T * K, 0);
  for (size_t i = first; i < last; ++i) {
    const RoutingData& r = seqs[i]->completion->routing;
    const int64_t b = static_cast<int64_t>(i - first);
    const int64_t n = batch->offsets[b + 1] - batch->offsets[b];
    if (r.num_moe_layers != L || r.num_tokens != n || r.top_k != K ||
        static_cast<int64_t>(r.expert_ids.size()) != L * n * K) {
      return absl::DataLossError(absl::StrCat(
          "R3: the rollout's routing for a sequence of ", n, " tokens is (", r.num_moe_layers, ", ",
          r.num_tokens, ", ", r.top_k, ") with ", r.expert_ids.size(), " ids; expected (", L, ", ",
          n, ", ", K, ") (does the worker serve the same model, with return_routing?)"));
    }
    for (int64_t l = 0; l < L; ++l) {
      std::copy_n(r.expert_ids.data() + l * n * K, n * K,
                  routing->data() + (l * T + batch->offsets[b]) * K);
    }
  }
  return absl::OkStatus();
}

// Runs `model` forward over `seqs` in micro-batches; sets seq->*field to the completion tokens'
// logprobs.
absl::Status Trainer::ComputeLogprobs(DeviceModel& model, const std::vector<Sample*>& seqs,
                                      std::vector<double> Sample::*field) {
  const bool replay = config_.algorithm.routing_replay && model.host().config().NumMoeLayers() > 0;
  const size_t micro = config_.algorithm.micro_batch_seqs > 0
                           ? static_cast<size_t>(config_.algorithm.micro_batch_seqs)
                           : seqs.size();
  for (size_t first = 0; first < seqs.size(); first += micro) {
    const size_t last = std::min(seqs.size(), first + micro);
    TokenBatch batch;
    std::vector<int32_t> routing;
    RETURN_IF_ERROR(PackBatch(seqs, first, last, replay, &batch, &routing));
    ForwardOptions fo;
    fo.temperature = static_cast<float>(config_.rollout.temperature);
    fo.replay_routing = routing;
    ForwardResult<float> res;
    RETURN_IF_ERROR(model.Forward(batch, fo, &res));
    for (size_t i = first; i < last; ++i) {
      const int64_t P = static_cast<int64_t>(seqs[i]->prompt->size());
      const int64_t C = static_cast<int64_t>(seqs[i]->completion->token_ids.size());
      const int64_t base = batch.offsets[i - first];
      std::vector<double> lp(C);
      for (int64_t j = 0; j < C; ++j) lp[j] = res.logprobs[base + P - 1 + j];
      seqs[i]->*field = std::move(lp);
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::TrainOnGroups(std::vector<Group>& groups, std::map<std::string, double>* m) {
  const LearnerConfig& c = config_;
  const auto& al = c.algorithm;
  const int64_t G = c.rollout.group_size;
  const int64_t num_groups = static_cast<int64_t>(groups.size());

  // Advantages.
  std::vector<double> rewards;
  for (const Group& g : groups) {
    for (const RewardOutput& o : g.rewards) rewards.push_back(o.score);
  }
  ASSIGN_OR_RETURN(std::vector<double> adv,
                   ComputeAdvantages(rewards, std::vector<int64_t>(num_groups, G), al.advantage));
  std::vector<Sample> samples;
  double len_sum = 0, len_max = 0, truncated = 0;
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    for (int64_t j = 0; j < G; ++j) {
      Sample s;
      s.group = gi;
      s.prompt = &groups[gi].prompt_ids;
      s.completion = &groups[gi].completions[j];
      s.reward = rewards[gi * G + j];
      s.advantage = adv[gi * G + j];
      const bool truncated_here = s.completion->finish_reason == FinishReason::kLength;
      if (al.overlong_filter && truncated_here) s.mask = 0;
      const double len = static_cast<double>(s.completion->token_ids.size());
      len_sum += len;
      len_max = std::max(len_max, len);
      truncated += truncated_here ? 1 : 0;
      samples.push_back(std::move(s));
    }
  }
  const double num_samples = static_cast<double>(samples.size());
  (*m)["response_length/mean"] = len_sum / num_samples;
  (*m)["response_length/max"] = len_max;
  (*m)["response_length/clip_ratio"] = truncated / num_samples;
  std::vector<Sample*> all;
  for (Sample& s : samples) all.push_back(&s);

  auto t0 = std::chrono::steady_clock::now();
  if (al.old_logprobs == "recompute") {
    RETURN_IF_ERROR(ComputeLogprobs(*policy_dev_, all, &Sample::old_lp));
  } else {
    for (Sample* s : all) {
      s->old_lp.assign(s->completion->logprobs.begin(), s->completion->logprobs.end());
    }
  }
  (*m)["time/old_logprob_s"] = Seconds(t0);
  t0 = std::chrono::steady_clock::now();
  if (reference_ != nullptr) {
    RETURN_IF_ERROR(ComputeLogprobs(*reference_dev_, all, &Sample::ref_lp));
  }
  (*m)["time/ref_logprob_s"] = Seconds(t0);

  // PPO epochs x mini-batches of whole groups.
  t0 = std::chrono::steady_clock::now();
  const int64_t num_mini = std::min<int64_t>(al.mini_batches, num_groups);
  const int64_t steps_per_rollout = al.ppo_epochs * al.mini_batches;
  const int64_t total_opt_steps = c.total_steps * steps_per_rollout;
  LossStats stats_first;  // the first epoch's stats: the policy as sampled
  double grad_norm_sum = 0, skipped = 0, num_opt = 0, loss_sum = 0, lr_last = 0, aux_sum = 0;
  double trained_tokens = 0;
  const bool replay = al.routing_replay && policy_->config().NumMoeLayers() > 0;
  const DataParallelStats dp_before = dp_->stats();
  for (int64_t epoch = 0; epoch < al.ppo_epochs; ++epoch) {
    std::vector<int64_t> order(num_groups);
    std::iota(order.begin(), order.end(), 0);
    SplitMix64 rng(c.seed, StreamKey(step_, kKeyShuffle, static_cast<uint64_t>(epoch)));
    for (int64_t i = num_groups - 1; i > 0; --i) {
      std::swap(order[i], order[rng.Below(static_cast<uint64_t>(i) + 1)]);
    }
    for (int64_t mb = 0; mb < num_mini; ++mb) {
      std::vector<Sample*> seqs;
      for (int64_t k = mb * num_groups / num_mini; k < (mb + 1) * num_groups / num_mini; ++k) {
        for (int64_t j = 0; j < G; ++j) seqs.push_back(&samples[order[k] * G + j]);
      }
      // Whole groups per data-parallel rank; each rank's share in mini-batch order.
      std::vector<TrainSequence> train_seqs;
      for (Sample* s : seqs) {
        TrainSequence t;
        t.prompt = *s->prompt;
        t.completion = s->completion->token_ids;
        t.old_logprobs = s->old_lp;
        t.rollout_logprobs = s->completion->logprobs;
        t.ref_logprobs = s->ref_lp;
        t.routing = &s->completion->routing;
        t.advantage = s->advantage;
        t.mask = s->mask;
        train_seqs.push_back(t);
      }
      const int64_t mb_groups = static_cast<int64_t>(seqs.size()) / G;
      const int world = dp_->world_size();
      auto shard = [&](int rank) {
        const GroupRange g = AssignGroups(mb_groups, rank, world);
        return absl::MakeConstSpan(train_seqs).subspan(g.first * G, (g.last - g.first) * G);
      };
      const int64_t opt_index = step_ * steps_per_rollout + epoch * al.mini_batches + mb;
      const double lr = LearningRate(c.optimizer, opt_index, total_opt_steps);
      MiniBatchOptions mo;
      mo.loss = al.loss;
      mo.temperature = static_cast<float>(c.rollout.temperature);
      mo.micro_batch_seqs = al.micro_batch_seqs;
      mo.aux_loss_coef = al.aux_loss_coef;
      mo.routing_replay = replay;
      mo.lr = lr;
      mo.opt_step = opt_index + 1;
      // Normalizers over the whole mini-batch (all ranks) before any backward, micro-batches,
      // gradients summed over ranks, clipping and AdamW: learner/data_parallel.h.
      ASSIGN_OR_RETURN(MiniBatchResult res, dp_->Run(shard, mo));
      if (res.skipped_empty) continue;
      const OptimizerStepResult& r = res.opt;
      const double mb_loss = res.loss;
      aux_sum += res.aux_loss_sum;
      trained_tokens += res.trained_tokens;
      if (epoch == 0) stats_first.Merge(res.stats);
      if (r.skipped) {
        skipped += 1;
        GRPO_LOG(WARNING, "step %d: non-finite gradient norm, optimizer step skipped",
                 static_cast<int>(step_ + 1));
      } else {
        grad_norm_sum += r.grad_norm;
      }
      num_opt += 1;
      loss_sum += mb_loss;
      lr_last = lr;
    }
  }
  const double train_s = Seconds(t0);
  const LossStats& st = stats_first;
  (*m)["loss/total"] = num_opt > 0 ? loss_sum / num_opt : 0;
  (*m)["loss/pg"] = st.Mean(st.pg_loss_sum);
  (*m)["loss/aux"] = num_opt > 0 ? aux_sum / num_opt : 0;
  (*m)["actor/kl"] = st.Mean(st.kl_sum);
  (*m)["actor/entropy"] = st.Mean(st.entropy_sum);
  (*m)["actor/clip_fraction"] = st.Mean(st.clipped);
  (*m)["actor/dual_clip_fraction"] = st.Mean(st.dual_clipped);
  (*m)["actor/ratio_mean"] = st.Mean(st.ratio_sum);
  (*m)["actor/ratio_max"] = st.num_tokens > 0 ? st.ratio_max : 1.0;
  (*m)["actor/ratio_min"] = st.num_tokens > 0 ? st.ratio_min : 1.0;
  (*m)["actor/grad_norm"] = (num_opt - skipped) > 0 ? grad_norm_sum / (num_opt - skipped) : 0;
  (*m)["actor/skipped_steps"] = skipped;
  (*m)["actor/lr"] = lr_last;
  (*m)["mismatch/logprob_abs_diff"] =
      st.mismatch_tokens > 0 ? st.mismatch_abs_sum / st.mismatch_tokens : 0;
  if (al.loss.mismatch != MismatchCorrection::kNone) {
    (*m)["mismatch/is_weight_mean"] = st.Mean(st.is_weight_sum);
    (*m)["mismatch/rejected_fraction"] = st.Mean(st.is_rejected);
  }
  (*m)["time/train_s"] = train_s;
  if (dp_->world_size() > 1) {
    const DataParallelStats dp_now = dp_->stats();
    (*m)["data_parallel/ranks"] = dp_->world_size();
    (*m)["data_parallel/allreduce_s"] = dp_now.allreduce_s - dp_before.allreduce_s;
    (*m)["data_parallel/allreduce_wait_s"] = dp_now.allreduce_wait_s - dp_before.allreduce_wait_s;
    (*m)["data_parallel/bytes"] = dp_now.bytes_reduced - dp_before.bytes_reduced;
    (*m)["data_parallel/fence_wait_s"] = dp_now.fence_wait_s - dp_before.fence_wait_s;
  }
  (*m)["train/tokens_per_s"] = train_s > 0 ? trained_tokens / train_s : 0;
  (*m)["advantage/mean"] =
      std::accumulate(adv.begin(), adv.end(), 0.0) / static_cast<double>(adv.size());
  return absl::OkStatus();
}

absl::Status Trainer::EvaluateHeldOut(std::map<std::string, double>* m) {
  const auto t0 = std::chrono::steady_clock::now();
  EvalOptions o;
  o.samples = config_.eval.samples;
  o.temperature = config_.eval.temperature;
  o.max_new_tokens = config_.eval.max_new_tokens > 0 ? config_.eval.max_new_tokens
                                                     : config_.rollout.max_new_tokens;
  o.stop_token_ids = stop_ids_;
  o.seed = config_.seed;
  o.limit = config_.eval.limit;
  o.source = config_.eval.path;
  o.device = local_device_;
  ASSIGN_OR_RETURN(EvalResult r,
                   Evaluate(*policy_, *tokenizer_, *eval_dataset_, *template_, *rewards_, o));
  (*m)["eval/accuracy"] = r.accuracy;
  (*m)["eval/mean_reward"] = r.mean_reward;
  (*m)["eval/response_length"] = r.mean_response_tokens;
  (*m)["time/eval_s"] = Seconds(t0);
  return absl::OkStatus();
}

absl::Status Trainer::Step() {
  const auto t_step = std::chrono::steady_clock::now();
  std::map<std::string, double> m;
  std::vector<Group> groups;
  RETURN_IF_ERROR(WithContext(CollectGroups(&groups, &m), absl::StrCat("step ", step_ + 1)));
  if (groups.empty()) {
    GRPO_LOG(WARNING, "step %d: every group had equal rewards after %d rollout rounds; no update",
             static_cast<int>(step_ + 1), static_cast<int>(config_.algorithm.max_gen_batches));
  } else {
    RETURN_IF_ERROR(WithContext(TrainOnGroups(groups, &m), absl::StrCat("step ", step_ + 1)));
  }
  ++step_;
  const auto& al = config_.algorithm;
  if (reference_ != nullptr && al.ref_refresh_every > 0 && step_ % al.ref_refresh_every == 0) {
    std::copy_n(policy_->params(), policy_->num_params(), reference_->params());
    reference_dev_->ParamsChanged();
  }
  RETURN_IF_ERROR(PushWeights(&m));
  if (eval_dataset_ != nullptr && config_.eval.every > 0 &&
      (step_ % config_.eval.every == 0 || step_ == config_.total_steps)) {
    RETURN_IF_ERROR(WithContext(EvaluateHeldOut(&m), absl::StrCat("step ", step_, " eval")));
  }
  m["time/step_s"] = Seconds(t_step);
  m["rollout/workers_alive"] = static_cast<double>(std::count(alive_.begin(), alive_.end(), true));
  RETURN_IF_ERROR(metrics_->Write(step_, m));
  // Samples: the first completion of the first few groups.
  std::vector<nlohmann::json> samples;
  for (size_t i = 0; i < groups.size() && static_cast<int64_t>(i) < config_.log_samples; ++i) {
    const Group& g = groups[i];
    samples.push_back({{"prompt", g.prompt_text},
                       {"completion", g.texts[0]},
                       {"reward", g.rewards[0].score},
                       {"components", g.rewards[0].components},
                       {"ground_truth", g.example->ground_truth}});
  }
  RETURN_IF_ERROR(metrics_->WriteSamples(step_, samples));
  last_metrics_ = m;
  if (options_.console) {
    auto get = [&](const char* k) { return m.count(k) ? m.at(k) : 0.0; };
    std::fprintf(
        stderr,
        "step %lld/%lld | reward %.3f ± %.3f | acc %.3f | len %.1f | kl %.4f | "
        "clip %.3f | gnorm %.3f | lr %.2e | %.2f s (rollout %.2f, train %.2f, sync %.3f)\n",
        static_cast<long long>(step_), static_cast<long long>(config_.total_steps),
        get("reward/mean"), get("reward/std"), get("reward/accuracy"), get("response_length/mean"),
        get("actor/kl"), get("actor/clip_fraction"), get("actor/grad_norm"), get("actor/lr"),
        get("time/step_s"), get("time/rollout_s"), get("time/train_s"), get("weight_sync/seconds"));
    if (m.count("eval/accuracy")) {
      std::fprintf(stderr, "step %lld/%lld | held-out accuracy %.3f (mean reward %.3f, %.2f s)\n",
                   static_cast<long long>(step_), static_cast<long long>(config_.total_steps),
                   m.at("eval/accuracy"), m.at("eval/mean_reward"), m.at("time/eval_s"));
    }
  }
  const bool due = (config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0) ||
                   step_ == config_.total_steps;
  if (due) RETURN_IF_ERROR(SaveCheckpointNow());
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpointNow() {
  TrainerState st;
  st.step = step_;
  st.seed = config_.seed;
  st.weight_version = weight_version_;
  st.dataset = dataset_->position();
  CheckpointSaveOptions opts;
  opts.keep = config_.checkpoint_keep;
  opts.tokenizer_path = tokenizer_path_;
  opts.after_file = options_.checkpoint_fault;
  // The reference is saved only when it can differ from the initial policy.
  const Model<float>* ref = config_.algorithm.ref_refresh_every > 0 ? reference_.get() : nullptr;
  return SaveCheckpoint(checkpoint_root(), *policy_, ref, *optimizer_, st, opts);
}

absl::Status Trainer::Run() {
  while (step_ < config_.total_steps) RETURN_IF_ERROR(Step());
  return absl::OkStatus();
}

}  // namespace grpo
