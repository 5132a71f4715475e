// The rollout engine (rollout/engine.h): request validation, admission with a KV pool, group
// prefill and forking, continuous-batching decode, stop conditions, weight swaps.
#include "rollout/engine.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/huge_pages.h"
#include "common/log.h"
#include "common/status.h"
#include "rollout/decode_model.h"
#include "rollout/sampling.h"
#include "rollout/weights.h"

namespace grpo {

// ---- RolloutRequest ----

RolloutRequest::Wait RolloutRequest::Next(GroupResult* group, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !ready_.empty() || finished_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (!ready_.empty()) {
    *group = std::move(ready_.front());
    ready_.pop_front();
    return Wait::kGroup;
  }
  return finished_ ? Wait::kDone : Wait::kTimeout;
}

absl::Status RolloutRequest::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

void RolloutRequest::Deliver(GroupResult group) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  ready_.push_back(std::move(group));
  if (++delivered_ == num_groups_) finished_ = true;
}

void RolloutRequest::Finish(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  finished_ = true;
  status_ = std::move(status);
}

// ---- engine state ----

absl::Status EngineOptions::Validate() const {
  if (kv_budget_bytes <= 0) return absl::InvalidArgumentError("kv budget must be > 0 bytes");
  if (max_batch < 1) return absl::InvalidArgumentError("max_batch must be >= 1");
  return absl::OkStatus();
}

struct Engine::Group {
  std::shared_ptr<RolloutRequest> request;
  std::shared_ptr<const SamplingParams> sampling;  // shared by the request's groups
  int32_t prompt_index = 0;
  uint64_t prompt_id = 0;
  std::vector<int32_t> prompt;
  uint64_t version = 0;
  std::vector<Completion> completions;  // (G)
  int64_t num_finished = 0;
  std::vector<std::vector<int32_t>> prompt_routing;  // per MoE layer (P, K)
  std::vector<Sequence*> seqs;                       // (G) while running; owned by Work::running
  // Shared prompt (DecodeModel::SharePrefix): samples 1.. read the prompt from sample 0's rows,
  // so those rows stay allocated until every sample is released: `holders` counts the samples
  // not yet released, and sample 0's rows wait in held_* once it is released before the others.
  bool shared_prompt = false;
  int64_t holders = 0;
  int64_t held_offset = 0, held_rows = 0;
};

struct Engine::Sequence {
  Group* group = nullptr;  // owned by Work::groups
  int32_t sample_index = 0;
  int64_t slot = -1;
  int64_t kv_offset = 0, kv_rows = 0;
  int32_t last_token = 0;
  // Finished sampling, but its last token still has to go through the model once for its
  // routing (return_routing): fed in the next decode step, then finished.
  bool routing_pending = false;
  std::vector<std::vector<int32_t>> routing;  // per MoE layer (completion tokens, K)
};

// KV rows one sample of a group takes: sample 0 holds the prompt and its completion; with a
// shared prompt the others hold only their completions.
int64_t SampleRows(int64_t prompt, int64_t max_new, int64_t sample, bool shared_prompt) {
  return sample == 0 || !shared_prompt ? prompt + max_new : max_new;
}

// KV rows a whole group takes.
int64_t GroupRows(int64_t prompt, int64_t max_new, int64_t group_size, bool shared_prompt) {
  return shared_prompt ? prompt + group_size * max_new : group_size * (prompt + max_new);
}

// First-fit allocator of contiguous row ranges in the KV arena.
class RowAllocator {
 public:
  explicit RowAllocator(int64_t rows) { free_[0] = rows; }
  // Start row, or -1 when no free range is long enough.
  int64_t Alloc(int64_t n) {
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < n) continue;
      const int64_t start = it->first, left = it->second - n;
      free_.erase(it);
      if (left > 0) free_[start + n] = left;
      return start;
    }
    return -1;
  }
  void Free(int64_t start, int64_t n) {
    auto next = free_.lower_bound(start);
    if (next != free_.end() && start + n == next->first) {
      n += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == start) {
        prev->second += n;
        return;
      }
    }
    free_[start] = n;
  }

 private:
  std::map<int64_t, int64_t> free_;  // start -> length
};

struct Engine::Work {
  std::unique_ptr<DecodeModel> model;  // its KV pool holds every running sequence
  std::unique_ptr<Tokenizer> tokenizer;
  RowAllocator rows;
  std::vector<int64_t> free_slots;
  std::vector<std::unique_ptr<Group>> groups;      // admitted, not yet delivered
  std::vector<std::unique_ptr<Sequence>> running;  // one per slot in use
  HugePageVector<float> logits;                    // (max_batch, V)
  std::vector<int32_t> routing;                    // (num_moe, T, K) of the last Extend
  uint64_t version = 0;

  Work(std::unique_ptr<DecodeModel> m, std::unique_ptr<Tokenizer> t, int64_t num_slots,
       int64_t pool_rows)
      : model(std::move(m)), tokenizer(std::move(t)), rows(pool_rows) {
    for (int64_t s = num_slots - 1; s >= 0; --s) free_slots.push_back(s);
  }
};

// ---- Engine ----

Engine::Engine(std::unique_ptr<DecodeModel> model, std::unique_ptr<Tokenizer> tokenizer,
               const EngineOptions& options, const ModelConfig& config, int64_t num_params,
               uint64_t fingerprint, int64_t pool_rows)
    : options_(options), config_(config), num_params_(num_params), fingerprint_(fingerprint) {
  kv_row_bytes_ = model->kv_bytes_per_token();
  shares_prefix_ = model->shares_prefix();
  max_context_ = std::min<int64_t>(config_.max_position_embeddings, pool_rows);
  work_ =
      std::make_unique<Work>(std::move(model), std::move(tokenizer), options_.max_batch, pool_rows);
  work_->logits.resize(options_.max_batch * config_.vocab_size);
  work_->version = options_.initial_version;
  version_ = options_.initial_version;
  applied_version_ = options_.initial_version;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Model<float>> model,
                                                       std::unique_ptr<Tokenizer> tokenizer,
                                                       const EngineOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (model == nullptr) return absl::InvalidArgumentError("engine: no model");
  const ModelConfig config = model->config();
  const int64_t num_params = model->num_params();
  const uint64_t fingerprint = LayoutFingerprint(model->layout());
  std::unique_ptr<DecodeModel> decode;
  if (options.device == Device::kCuda) {
    ASSIGN_OR_RETURN(decode, MakeCudaDecodeModel(std::move(model)));
  } else {
    decode = MakeCpuDecodeModel(std::move(model));
  }
  const int64_t row_bytes = decode->kv_bytes_per_token();
  const int64_t pool_rows = options.kv_budget_bytes / row_bytes;
  if (pool_rows < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv budget of ", options.kv_budget_bytes, " bytes holds fewer than 2 tokens (", row_bytes,
        " bytes per token for this model on ", decode->device(), "); raise it"));
  }
  RETURN_IF_ERROR(WithContext(decode->InitPool(options.max_batch, pool_rows),
                              absl::StrCat("rollout engine: KV pool of ", pool_rows, " tokens")));
  GRPO_LOG(INFO, "rollout engine on %s: KV pool of %d tokens (%d bytes each), batch up to %d",
           decode->device(), pool_rows, row_bytes, options.max_batch);
  std::unique_ptr<Engine> engine(new Engine(std::move(decode), std::move(tokenizer), options,
                                            config, num_params, fingerprint, pool_rows));
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<float> Engine::TakeSpareParams() {
  absl::MutexLock lock(&mu_);
  return std::move(spare_params_);
}

uint64_t Engine::newest_version() const {
  absl::MutexLock lock(&mu_);
  return std::max(version_, staged_version_);
}

absl::Status Engine::CheckStageable(uint64_t version) const {
  if (stopping_) return absl::UnavailableError("rollout engine is shutting down");
  const uint64_t newest = std::max(version_, staged_version_);
  if (version <= newest) {
    return absl::FailedPreconditionError(
        absl::StrCat("weight version ", version, " is not newer than ", newest));
  }
  return absl::OkStatus();
}

absl::Status Engine::StageWeights(uint64_t version, std::vector<float> params) {
  if (static_cast<int64_t>(params.size()) != num_params_) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage weights: ", params.size(), " params, the model has ", num_params_));
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckStageable(version));
  staged_version_ = version;
  staged_params_ = std::move(params);
  staged_device_ = {};
  return absl::OkStatus();
}

absl::Status Engine::WaitApplied(uint64_t version, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return applied_version_ >= version || stopping_;
  };
  if (!mu_.AwaitWithDeadline(absl::Condition(&done), deadline)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "rollout engine: weight version ", version, " not applied by the deadline (serving ",
        applied_version_, "; running sequences finish first)"));
  }
  if (applied_version_ < version) return absl::UnavailableError("rollout engine is shutting down");
  return absl::OkStatus();
}

absl::Status Engine::StageDeviceWeights(uint64_t version, const CudaModel* src) {
  if (src == nullptr || src->num_params() != num_params_) {
    return absl::InvalidArgumentError(absl::StrCat("stage device weights: the source model has ",
                                                   src == nullptr ? 0 : src->num_params(),
                                                   " params, this one ", num_params_));
  }
  return StageDeviceWeights(version, src->weight_buffers());
}

absl::Status Engine::StageDeviceWeights(uint64_t version, const CudaModel::WeightBuffers& src) {
  if (options_.device != Device::kCuda) {
    return absl::FailedPreconditionError(
        "stage device weights: this rollout engine runs on the CPU; weights come from the host");
  }
  if (src.bf16 == nullptr || src.f32 == nullptr) {
    return absl::InvalidArgumentError("stage device weights: no source buffers");
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckStageable(version));
  staged_version_ = version;
  staged_params_.clear();
  staged_device_ = src;
  return absl::OkStatus();
}

absl::Status Engine::WaitDeviceWeights(uint64_t version, absl::Time deadline) {
  const absl::Status applied = WaitApplied(version, deadline);
  absl::MutexLock lock(&mu_);
  if (staged_version_ == version && staged_device_.bf16 != nullptr) {
    staged_version_ = 0;
    staged_device_ = {};
    GRPO_LOG(WARNING,
             "rollout engine: device weight version %d withdrawn before the swap; "
             "still serving %d",
             version, version_);
  } else {
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !copying_device_; };
    mu_.Await(absl::Condition(&done));
  }
  return applied;
}

RolloutStatus Engine::GetStatus() const {
  RolloutStatus s;
  absl::MutexLock lock(&mu_);
  s.weight_version = version_;
  s.staged_version = staged_version_;
  s.queued_sequences = queued_sequences_;
  s.running_sequences = running_;
  s.total_tokens = total_tokens_;
  s.kv_bytes_budget = options_.kv_budget_bytes / kv_row_bytes_ * kv_row_bytes_;
  s.kv_bytes_used = kv_bytes_used_;
  s.max_context = max_context_;
  s.num_params = num_params_;
  s.layout_fingerprint = fingerprint_;
  s.model_type = config_.model_type;
  s.vocab_size = static_cast<int32_t>(config_.vocab_size);
  s.device = DeviceName(options_.device);
  // Tokens of the steps that ended in the last 10 s, over the time since the window began (or
  // since the first of those steps began, when the engine was idle before): an idle engine
  // decays to 0 instead of reporting its last busy rate.
  const absl::Time now = absl::Now(), window_start = now - absl::Seconds(10);
  int64_t tokens = 0;
  absl::Time begin = now;
  for (size_t i = 1; i < recent_.size(); ++i) {
    if (recent_[i].first < window_start) continue;
    tokens += recent_[i].second;
    begin = std::min(begin, std::max(window_start, recent_[i - 1].first));
  }
  const double span = absl::ToDoubleSeconds(now - begin);
  if (tokens > 0 && span > 0) s.tokens_per_second = tokens / span;
  return s;
}

absl::StatusOr<std::shared_ptr<RolloutRequest>> Engine::Submit(std::vector<RolloutPrompt> prompts,
                                                               const SamplingParams& sampling) {
  RETURN_IF_ERROR(sampling.Validate());
  if (sampling.deterministic && !work_->model->batch_invariant()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.deterministic: this server runs on ", work_->model->device(),
        ", whose kernels are not batch-invariant (bf16 GEMMs); run the rollout server with "
        "--device cpu for bitwise learner logprobs, or send deterministic false"));
  }
  const int64_t V = config_.vocab_size;
  for (size_t i = 0; i < sampling.stop_token_ids.size(); ++i) {
    const int32_t t = sampling.stop_token_ids[i];
    if (t < 0 || t >= V) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop_token_ids[", i, "]: ", t,
                                                     " is outside the vocabulary [0, ", V, ")"));
    }
  }
  if (!sampling.stop_strings.empty() && work_->tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        "sampling.stop_strings: this server has no tokenizer (no tokenizer.json in the model "
        "directory); use stop_token_ids");
  }
  if (sampling.group_size > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.group_size: ", sampling.group_size,
                                                   " is over the server's max batch of ",
                                                   options_.max_batch));
  }
  if (prompts.empty()) return absl::InvalidArgumentError("prompts: empty request");
  const int64_t pool_rows = options_.kv_budget_bytes / kv_row_bytes_;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t>& p = prompts[i].token_ids;
    if (p.empty()) return absl::InvalidArgumentError(absl::StrCat("prompts[", i, "]: empty"));
    for (size_t j = 0; j < p.size(); ++j) {
      if (p[j] < 0 || p[j] >= V) {
        return absl::InvalidArgumentError(absl::StrCat("prompts[", i, "].token_ids[", j,
                                                       "]: ", p[j],
                                                       " is outside the vocabulary [0, ", V, ")"));
      }
    }
    const int64_t need = static_cast<int64_t>(p.size()) + sampling.max_new_tokens;
    if (need > config_.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompts[", i, "]: ", p.size(), " tokens + max_new_tokens ", sampling.max_new_tokens,
          " exceed the model's context of ", config_.max_position_embeddings, " tokens"));
    }
    const bool shared = shares_prefix_ && sampling.group_size > 1;
    const int64_t group_rows = GroupRows(static_cast<int64_t>(p.size()), sampling.max_new_tokens,
                                         sampling.group_size, shared);
    if (group_rows > pool_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompts[", i, "]: a group of ", sampling.group_size, " samples (", p.size(),
                       " prompt tokens", shared ? ", shared," : "", " + ", sampling.max_new_tokens,
                       " new each) needs ", group_rows * kv_row_bytes_,
                       " bytes of KV cache; the server's budget is ", pool_rows * kv_row_bytes_,
                       " bytes (--kv-budget-mb)"));
    }
  }
  auto shared_sampling = std::make_shared<const SamplingParams>(sampling);
  std::shared_ptr<RolloutRequest> request(new RolloutRequest(static_cast<int64_t>(prompts.size())));
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("rollout engine is shutting down");
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto g = std::make_unique<Group>();
    g->request = request;
    g->sampling = shared_sampling;
    g->prompt_index = static_cast<int32_t>(i);
    g->prompt_id = prompts[i].prompt_id;
    g->prompt = std::move(prompts[i].token_ids);
    waiting_.push_back(std::move(g));
    queued_sequences_ += sampling.group_size;
  }
  return request;
}

void Engine::Cancel(const std::shared_ptr<RolloutRequest>& request) {
  if (request == nullptr) return;
  request->cancelled_ = true;
  request->Finish(absl::CancelledError("request cancelled"));
  absl::MutexLock lock(&mu_);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->request == request) {
      queued_sequences_ -= (*it)->sampling->group_size;
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::vector<GroupResult>> Engine::GenerateAll(std::vector<RolloutPrompt> prompts,
                                                             const SamplingParams& sampling) {
  const size_t n = prompts.size();
  ASSIGN_OR_RETURN(std::shared_ptr<RolloutRequest> request, Submit(std::move(prompts), sampling));
  std::vector<GroupResult> out(n);
  GroupResult g;
  while (true) {
    const RolloutRequest::Wait w = request->Next(&g, absl::Seconds(1));
    if (w == RolloutRequest::Wait::kGroup) {
      out[g.prompt_index] = std::move(g);
    } else if (w == RolloutRequest::Wait::kDone) {
      break;
    }
  }
  RETURN_IF_ERROR(request->status());
  return out;
}

namespace {

// Prompt tokens prefilled in one model call (several groups' prompts share a call up to this).
constexpr int64_t kMaxPrefillTokens = 4096;

// Whether the decoded tail of `ids` contains one of `stops`; sets *matched.
bool MatchStopString(const Tokenizer& tok, const std::vector<int32_t>& ids,
                     const std::vector<std::string>& stops, std::string* matched) {
  size_t longest = 0;
  for (const std::string& s : stops) longest = std::max(longest, s.size());
  // A match that ends in the newest token lies within the last `longest` tokens (each token is
  // at least one byte); a few more cover a multi-byte character split across tokens.
  const size_t window = std::min(ids.size(), longest + 4);
  auto text = tok.Decode(absl::MakeConstSpan(ids).subspan(ids.size() - window));
  if (!text.ok()) return false;  // an id the tokenizer does not know: no text to match
  for (const std::string& s : stops) {
    if (text->find(s) != std::string::npos) {
      *matched = s;
      return true;
    }
  }
  return false;
}

}  // namespace

void Engine::Loop() {
  Work& w = *work_;
  DecodeModel& model = *w.model;
  const int64_t V = config_.vocab_size, K = config_.num_experts_per_tok;
  const int64_t num_moe = config_.NumMoeLayers();

  // Frees a sequence's slot and rows (a shared prompt's rows once no sample reads them).
  auto release = [&](Sequence* s) {
    Group* g = s->group;
    if (!g->shared_prompt) {
      w.rows.Free(s->kv_offset, s->kv_rows);
    } else {
      if (s->sample_index == 0) {
        g->held_offset = s->kv_offset;
        g->held_rows = s->kv_rows;
      } else {
        w.rows.Free(s->kv_offset, s->kv_rows);
      }
      if (--g->holders == 0) {
        w.rows.Free(g->held_offset, g->held_rows);
        g->held_rows = 0;
      }
    }
    w.free_slots.push_back(s->slot);
    s->slot = -1;
  };
  // Ends a sequence: frees its slot and rows, fills its completion, delivers a finished group.
  auto finish = [&](Sequence* s, FinishReason reason) {
    Group* g = s->group;
    Completion& c = g->completions[s->sample_index];
    if (c.finish_reason == FinishReason::kUnspecified) c.finish_reason = reason;
    c.weight_version = g->version;
    if (g->sampling->return_routing && num_moe > 0) {
      const int64_t P = static_cast<int64_t>(g->prompt.size());
      c.routing.num_moe_layers = static_cast<int32_t>(num_moe);
      c.routing.top_k = static_cast<int32_t>(K);
      // Tokens whose routing is known: the prompt and every fed completion token.
      const int64_t fed = static_cast<int64_t>(s->routing.empty() ? 0 : s->routing[0].size()) / K;
      c.routing.num_tokens = static_cast<int32_t>(P + fed);
      c.routing.expert_ids.clear();
      for (int64_t m = 0; m < num_moe; ++m) {
        c.routing.expert_ids.insert(c.routing.expert_ids.end(), g->prompt_routing[m].begin(),
                                    g->prompt_routing[m].end());
        c.routing.expert_ids.insert(c.routing.expert_ids.end(), s->routing[m].begin(),
                                    s->routing[m].end());
      }
    }
    release(s);
    if (++g->num_finished == static_cast<int64_t>(g->completions.size())) {
      GroupResult r;
      r.prompt_id = g->prompt_id;
      r.prompt_index = g->prompt_index;
      r.completions = std::move(g->completions);
      g->request->Deliver(std::move(r));
      g->request.reset();  // marks the group for removal
    }
  };
  // The uniform that draws the next token of `s` (its own stream: rollout/sampling.h).
  auto uniform = [&](const Sequence* s) {
    const Group* g = s->group;
    const int64_t step = static_cast<int64_t>(g->completions[s->sample_index].token_ids.size());
    return SampleUniform(g->sampling->seed, g->prompt_id, s->sample_index, step);
  };
  // Draws the next token of `s` from `logits` (V). Pure: runs in parallel over sequences.
  auto draw = [&](const Sequence* s, const float* logits) {
    thread_local std::vector<std::pair<float, int32_t>> scratch;
    const SamplingParams& sp = *s->group->sampling;
    return SampleFromLogits(logits, V, sp.temperature, sp.top_k, sp.top_p, uniform(s), &scratch);
  };
  // Appends a drawn token and applies the stop conditions.
  auto accept = [&](Sequence* s, const SampledToken& t) -> int64_t {
    Group* g = s->group;
    const SamplingParams& sp = *g->sampling;
    Completion& c = g->completions[s->sample_index];
    c.token_ids.push_back(t.token);
    c.logprobs.push_back(t.logprob);
    s->last_token = t.token;
    FinishReason reason = FinishReason::kUnspecified;
    if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), t.token) !=
        sp.stop_token_ids.end()) {
      reason = FinishReason::kStop;
      c.stop_token_id = t.token;
    } else if (!sp.stop_strings.empty() &&
               MatchStopString(*w.tokenizer, c.token_ids, sp.stop_strings, &c.stop_string)) {
      reason = FinishReason::kStop;
    } else if (static_cast<int64_t>(c.token_ids.size()) >= sp.max_new_tokens) {
      reason = FinishReason::kLength;
    }
    if (reason != FinishReason::kUnspecified) {
      c.finish_reason = reason;
      if (sp.return_routing && num_moe > 0) {
        s->routing_pending = true;
      } else {
        finish(s, reason);
      }
    }
    return 1;
  };
  auto drop_finished = [&]() {
    w.running.erase(std::remove_if(w.running.begin(), w.running.end(),
                                   [](const std::unique_ptr<Sequence>& s) { return s->slot < 0; }),
                    w.running.end());
    w.groups.erase(
        std::remove_if(w.groups.begin(), w.groups.end(),
                       [](const std::unique_ptr<Group>& g) { return g->request == nullptr; }),
        w.groups.end());
  };
  auto fail_group = [&](Group* g, const absl::Status& s) {
    if (g->request == nullptr) return;
    GRPO_LOG(ERROR, "rollout engine: %s", std::string(s.message()));
    g->request->Finish(absl::InternalError(absl::StrCat("rollout engine: ", s.message())));
    g->request->cancelled_ = true;
  };

  while (true) {
    std::vector<std::unique_ptr<Group>> admitted;
    std::vector<float> swap_params;        // a weight update to apply before this iteration's work
    CudaModel::WeightBuffers swap_device;  // or its device source (bf16 null: none)
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !w.running.empty() || (staged_version_ > 0) || !waiting_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) break;
      if (staged_version_ > 0 && w.running.empty()) {
        // The parameters leave the staging area here and reach the model below, outside the
        // lock (the CPU re-pack or the GPU upload takes a while), before anything is computed.
        swap_params.swap(staged_params_);
        swap_device = staged_device_;
        staged_device_ = {};
        copying_device_ = swap_device.bf16 != nullptr;
        version_ = staged_version_;
        w.version = version_;
        staged_version_ = 0;
        GRPO_LOG(INFO, "rollout engine: now serving weight version %d", version_);
      }
      // No admission while an update is staged: running sequences drain, then the swap.
      while (staged_version_ == 0 && !waiting_.empty()) {
        Group* g = waiting_.front().get();
        if (g->request->cancelled_) {
          queued_sequences_ -= g->sampling->group_size;
          waiting_.pop_front();
          continue;
        }
        const int64_t G = g->sampling->group_size;
        const int64_t P = static_cast<int64_t>(g->prompt.size());
        const bool shared = shares_prefix_ && G > 1;
        if (static_cast<int64_t>(w.free_slots.size()) < G) break;
        std::vector<int64_t> rows(G), offsets;
        for (int64_t i = 0; i < G; ++i) {
          rows[i] = SampleRows(P, g->sampling->max_new_tokens, i, shared);
          const int64_t off = w.rows.Alloc(rows[i]);
          if (off < 0) break;
          offsets.push_back(off);
        }
        if (static_cast<int64_t>(offsets.size()) < G) {
          for (size_t i = 0; i < offsets.size(); ++i) w.rows.Free(offsets[i], rows[i]);
          break;  // arrival order: later groups wait too (no starvation of large groups)
        }
        g->shared_prompt = shared;
        g->holders = shared ? G : 0;
        g->version = w.version;
        g->completions.resize(G);
        for (int64_t i = 0; i < G; ++i) {
          auto s = std::make_unique<Sequence>();
          s->group = g;
          s->sample_index = static_cast<int32_t>(i);
          s->slot = w.free_slots.back();
          w.free_slots.pop_back();
          s->kv_offset = offsets[i];
          s->kv_rows = rows[i];
          s->routing.resize(g->sampling->return_routing ? num_moe : 0);
          // Cannot fail: slot and rows come from this engine's own allocators.
          GRPO_CHECK(model.Assign(s->slot, s->kv_offset, s->kv_rows).ok());
          g->completions[i].sample_index = static_cast<int32_t>(i);
          g->seqs.push_back(s.get());
          w.running.push_back(std::move(s));
        }
        queued_sequences_ -= G;
        admitted.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
    }

    if (swap_device.bf16 != nullptr || !swap_params.empty()) {
      // Only a device fault can fail this (the CPU copy cannot); the model then holds no usable
      // weights and the GPU context is gone, so the process ends (its learner re-issues this
      // worker's groups elsewhere) rather than serve anything wrong.
      const absl::Status st = swap_device.bf16 != nullptr ? model.SetParamsFrom(swap_device)
                                                          : model.SetParams(swap_params.data());
      GRPO_CHECK_MSG(st.ok(), absl::StrCat("rollout engine: applying weight version ", w.version,
                                           ": ", st.message()));
      absl::MutexLock lock(&mu_);
      if (!swap_params.empty()) spare_params_ = std::move(swap_params);
      copying_device_ = false;
      applied_version_ = w.version;
    }

    int64_t new_tokens = 0;
    // Prefill: the admitted groups' prompts together, batch-invariant (so a prompt's KV and
    // first logits do not depend on the other prompts of the call), then fork: copy each prompt's
    // KV rows to its group's other samples; all sample from the shared logits.
    for (size_t first = 0; first < admitted.size();) {
      std::vector<Group*> chunk;
      std::vector<int64_t> slots, offsets = {0};
      std::vector<absl::Span<const int32_t>> feeds;
      bool want_routing = false;
      size_t next = first;
      for (; next < admitted.size(); ++next) {
        Group* g = admitted[next].get();
        const int64_t P = static_cast<int64_t>(g->prompt.size());
        if (!chunk.empty() && offsets.back() + P > kMaxPrefillTokens) break;
        chunk.push_back(g);
        slots.push_back(g->seqs[0]->slot);
        feeds.emplace_back(g->prompt);
        offsets.push_back(offsets.back() + P);
        want_routing |= g->sampling->return_routing && num_moe > 0;
      }
      for (size_t i = first; i < next; ++i) w.groups.push_back(std::move(admitted[i]));
      first = next;
      absl::Status st =
          model.Extend(slots, feeds, w.logits.data(), want_routing ? &w.routing : nullptr);
      if (!st.ok()) {
        for (Group* g : chunk) fail_group(g, st);
        continue;
      }
      const int64_t T = offsets.back();
      for (size_t c = 0; c < chunk.size(); ++c) {
        Group* g = chunk[c];
        const int64_t P = offsets[c + 1] - offsets[c];
        if (g->sampling->return_routing && num_moe > 0) {
          g->prompt_routing.resize(num_moe);
          for (int64_t m = 0; m < num_moe; ++m) {
            const auto row = w.routing.begin() + (m * T + offsets[c]) * K;
            g->prompt_routing[m].assign(row, row + P * K);
          }
        }
        absl::Status fork;
        for (size_t i = 1; i < g->seqs.size() && fork.ok(); ++i) {
          fork = g->shared_prompt ? model.SharePrefix(g->seqs[0]->slot, g->seqs[i]->slot, P)
                                  : model.CopyPrefix(g->seqs[0]->slot, g->seqs[i]->slot, P);
        }
        if (!fork.ok()) {
          fail_group(g, fork);
          continue;
        }
        for (Sequence* s : g->seqs) new_tokens += accept(s, draw(s, w.logits.data() + c * V));
      }
    }

    // Cancelled or failed requests: drop their sequences (no delivery).
    for (auto& s : w.running) {
      if (s->slot >= 0 && s->group->request != nullptr && s->group->request->cancelled_) {
        release(s.get());
        s->group->request.reset();
      }
    }
    // Sequences of a dropped group that were still running.
    for (auto& s : w.running) {
      if (s->slot >= 0 && s->group->request == nullptr) {
        // The other samples of a group dropped above (a delivered group has none running).
        release(s.get());
      }
    }
    drop_finished();

    // One decode step for every running sequence.
    if (!w.running.empty()) {
      const int64_t B = static_cast<int64_t>(w.running.size());
      std::vector<int64_t> slots(B);
      std::vector<absl::Span<const int32_t>> feed(B);
      bool want_routing = false;
      for (int64_t b = 0; b < B; ++b) {
        Sequence* s = w.running[b].get();
        slots[b] = s->slot;
        feed[b] = absl::Span<const int32_t>(&s->last_token, 1);
        want_routing |= !s->routing.empty();
      }
      // A model that samples on its device (the GPU) does so when every row draws untruncated
      // (top_k 0, top_p 1: GRPO's usual setting) at one temperature: the (B, V) logits then
      // never come to the host. Otherwise, and always on the CPU, the host samples.
      bool on_device = model.samples_on_device();
      float temperature = -1;
      for (int64_t b = 0; b < B && on_device; ++b) {
        const Sequence* s = w.running[b].get();
        if (s->routing_pending) continue;
        const SamplingParams& sp = *s->group->sampling;
        on_device =
            sp.top_k == 0 && sp.top_p >= 1.f && (temperature < 0 || sp.temperature == temperature);
        temperature = sp.temperature;
      }
      absl::Status st = model.Extend(slots, feed, on_device ? nullptr : w.logits.data(),
                                     want_routing ? &w.routing : nullptr);
      std::vector<SampledToken> picks(B);
      if (st.ok() && on_device) {
        std::vector<float> u(B, 0.f);
        for (int64_t b = 0; b < B; ++b) {
          if (!w.running[b]->routing_pending)
            u[b] = static_cast<float>(uniform(w.running[b].get()));
        }
        st = model.SampleOnDevice(std::max(temperature, 0.f), u, &picks);
      } else if (st.ok()) {
        // Sampling costs a few passes over V per row: spread the rows over the threads.
#pragma omp parallel for schedule(static) if (B > 1)
        for (int64_t b = 0; b < B; ++b) {
          if (!w.running[b]->routing_pending)
            picks[b] = draw(w.running[b].get(), w.logits.data() + b * V);
        }
      }
      if (!st.ok()) {
        for (auto& s : w.running) fail_group(s->group, st);
      } else {
        for (int64_t b = 0; b < B; ++b) {
          Sequence* s = w.running[b].get();
          if (!s->routing.empty()) {
            for (int64_t m = 0; m < num_moe; ++m) {
              const int32_t* r = w.routing.data() + (m * B + b) * K;
              s->routing[m].insert(s->routing[m].end(), r, r + K);
            }
          }
          if (s->routing_pending) {
            finish(s, FinishReason::kUnspecified);
          } else {
            new_tokens += accept(s, picks[b]);
          }
        }
      }
      drop_finished();
    }

    absl::MutexLock lock(&mu_);
    running_ = static_cast<int64_t>(w.running.size());
    int64_t used = 0;
    for (auto& s : w.running) used += s->kv_rows;
    for (auto& g : w.groups) used += g->held_rows;  // a shared prompt its sample 0 left
    kv_bytes_used_ = used * kv_row_bytes_;
    total_tokens_ += new_tokens;
    const absl::Time now = absl::Now();
    recent_.emplace_back(now, new_tokens);
    while (recent_.size() > 2 && now - recent_.front().first > absl::Seconds(10)) {
      recent_.pop_front();
    }
  }

  // Shutdown: running sequences end with ABORT and their groups are delivered; requests with
  // groups that never started fail with UNAVAILABLE.
  for (auto& s : w.running) {
    if (s->slot < 0 || s->group->request == nullptr) continue;
    if (s->routing_pending) {
      finish(s.get(), FinishReason::kUnspecified);
    } else {
      finish(s.get(), FinishReason::kAbort);
    }
  }
  drop_finished();
  std::deque<std::unique_ptr<Group>> waiting;
  {
    absl::MutexLock lock(&mu_);
    waiting.swap(waiting_);
    queued_sequences_ = 0;
    running_ = 0;
  }
  for (auto& g : waiting) {
    g->request->Finish(absl::UnavailableError("rollout server is shutting down"));
  }
}

}  // namespace grpo
