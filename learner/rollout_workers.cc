// In-process rollout worker and the balanced dispatcher (see rollout_workers.h).
#include "learner/rollout_workers.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "learner/random.h"
#include "model/generate.h"

namespace grpo {

absl::StatusOr<std::unique_ptr<LocalRolloutWorker>> LocalRolloutWorker::Create(const ModelConfig& config,
                                                                              std::string name) {
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> model, Model<float>::Create(config));
  return std::unique_ptr<LocalRolloutWorker>(new LocalRolloutWorker(std::move(model), std::move(name)));
}

absl::Status LocalRolloutWorker::PushWeights(absl::Span<const float> params, int64_t version) {
  if (static_cast<int64_t>(params.size()) != model_->num_params()) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": pushed ", params.size(),
                                                   " parameters, the model has ", model_->num_params()));
  }
  std::copy(params.begin(), params.end(), model_->params());
  version_ = version;
  return absl::OkStatus();
}

absl::StatusOr<GroupResult> LocalRolloutWorker::GenerateGroup(const GroupRequest& req,
                                                              const SamplingParams& params) {
  const ModelConfig& c = model_->config();
  const int64_t V = c.vocab_size, K = c.num_experts_per_tok, L = c.NumMoeLayers();
  const int64_t G = req.num_samples, P = static_cast<int64_t>(req.prompt.size());
  if (G < 1 || P < 1) return absl::InvalidArgumentError("rollout: empty prompt or group");
  const bool want_routing = params.record_routing && L > 0;
  KvCache<float> cache(c, G, P + params.max_new_tokens);
  GroupResult out;
  out.group_idx = req.group_idx;
  out.completions.resize(G);
  std::vector<SplitMix64> rngs;
  for (int64_t i = 0; i < G; ++i) rngs.emplace_back(req.seed, static_cast<uint64_t>(i));
  // Per sample, per MoE layer: expert ids of every token fed so far, (tokens, K) each.
  std::vector<std::vector<std::vector<int32_t>>> routes(G, std::vector<std::vector<int32_t>>(L));
  std::vector<int32_t> routing;
  auto record = [&](const std::vector<int64_t>& slots, const std::vector<int64_t>& counts) {
    const int64_t T = static_cast<int64_t>(routing.size()) / std::max<int64_t>(1, L * K);
    int64_t off = 0;
    for (size_t j = 0; j < slots.size(); ++j) {
      for (int64_t l = 0; l < L; ++l) {
        const int32_t* src = routing.data() + (l * T + off) * K;
        routes[slots[j]][l].insert(routes[slots[j]][l].end(), src, src + counts[j] * K);
      }
      off += counts[j];
    }
  };

  std::vector<int64_t> slots(G);
  for (int64_t i = 0; i < G; ++i) slots[i] = i;
  std::vector<absl::Span<const int32_t>> feed(G, absl::Span<const int32_t>(req.prompt));
  std::vector<int64_t> counts(G, P);
  std::vector<float> logits;
  std::vector<int32_t> next(G);
  const float T = static_cast<float>(params.temperature);
  while (!slots.empty()) {
    logits.resize(slots.size() * V);
    RETURN_IF_ERROR(model_->Extend(&cache, slots, feed, logits.data(), want_routing ? &routing : nullptr));
    if (want_routing) record(slots, counts);
    std::vector<int64_t> live;
    for (size_t j = 0; j < slots.size(); ++j) {
      const int64_t i = slots[j];
      const float* z = logits.data() + j * V;
      // u in [0, 1) from the top 53 bits.
      const double u = static_cast<double>(rngs[i].Next() >> 11) * 0x1.0p-53;
      const int32_t tok = SampleToken(z, V, T, u);
      // log softmax(z / T)[tok] in fp64.
      const float mx = *std::max_element(z, z + V);
      double total = 0;
      for (int64_t v = 0; v < V; ++v) total += std::exp(double(z[v] - mx) / T);
      const double lp = double(z[tok] - mx) / T - std::log(total);
      Completion& comp = out.completions[i];
      comp.tokens.push_back(tok);
      comp.logprobs.push_back(static_cast<float>(lp));
      const bool stop = std::find(params.stop_tokens.begin(), params.stop_tokens.end(), tok) !=
                        params.stop_tokens.end();
      if (stop) continue;
      if (static_cast<int64_t>(comp.tokens.size()) >= params.max_new_tokens) {
        comp.truncated = true;
        continue;
      }
      live.push_back(i);
    }
    if (want_routing) {
      // Finished samples still need the routing of their last token: feed it once more.
      std::vector<int64_t> done;
      for (int64_t i : slots) {
        if (std::find(live.begin(), live.end(), i) == live.end()) done.push_back(i);
      }
      if (!done.empty()) {
        std::vector<absl::Span<const int32_t>> last;
        for (int64_t i : done) {
          next[i] = out.completions[i].tokens.back();
          last.emplace_back(&next[i], 1);
        }
        if (cache.length(done[0]) < cache.max_len()) {
          std::vector<float> scratch(done.size() * V);
          RETURN_IF_ERROR(model_->Extend(&cache, done, last, scratch.data(), &routing));
          record(done, std::vector<int64_t>(done.size(), 1));
        }
      }
    }
    slots = live;
    feed.clear();
    for (int64_t i : slots) {
      next[i] = out.completions[i].tokens.back();
      feed.emplace_back(&next[i], 1);
    }
    counts.assign(slots.size(), 1);
  }
  for (int64_t i = 0; i < G; ++i) {
    Completion& comp = out.completions[i];
    comp.weight_version = version_;
    if (want_routing) {
      for (int64_t l = 0; l < L; ++l) {
        comp.routing.insert(comp.routing.end(), routes[i][l].begin(), routes[i][l].end());
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<GroupResult>> LocalRolloutWorker::Generate(
    absl::Span<const GroupRequest> requests, const SamplingParams& params) {
  std::vector<GroupResult> out;
  for (const GroupRequest& r : requests) {
    ASSIGN_OR_RETURN(GroupResult g, GenerateGroup(r, params));
    out.push_back(std::move(g));
  }
  return out;
}

absl::StatusOr<std::vector<GroupResult>> DispatchGroups(absl::Span<RolloutWorker* const> workers,
                                                        std::vector<bool>* alive,
                                                        absl::Span<const GroupRequest> requests,
                                                        const SamplingParams& params,
                                                        DispatchStats* stats) {
  alive->resize(workers.size(), true);
  std::map<int64_t, GroupResult> done;
  std::vector<GroupRequest> pending(requests.begin(), requests.end());
  bool first_round = true;
  while (!pending.empty()) {
    std::vector<size_t> live;
    for (size_t w = 0; w < workers.size(); ++w) {
      if ((*alive)[w]) live.push_back(w);
    }
    if (live.empty()) {
      return absl::UnavailableError(absl::StrCat("every rollout worker failed: ",
                                                 absl::StrJoin(stats->failures, "; ")));
    }
    if (!first_round) stats->reissued_groups += static_cast<int64_t>(pending.size());
    first_round = false;
    // Contiguous, even split: worker j of n takes [j*P/n, (j+1)*P/n).
    const size_t n = live.size(), P = pending.size();
    std::vector<std::vector<GroupRequest>> parts(n);
    for (size_t j = 0; j < n; ++j) {
      parts[j].assign(pending.begin() + j * P / n, pending.begin() + (j + 1) * P / n);
    }
    std::vector<absl::StatusOr<std::vector<GroupResult>>> results(n, std::vector<GroupResult>{});
    std::vector<std::thread> threads;
    for (size_t j = 0; j < n; ++j) {
      if (parts[j].empty()) continue;
      threads.emplace_back([&, j] { results[j] = workers[live[j]]->Generate(parts[j], params); });
    }
    for (auto& t : threads) t.join();
    std::vector<GroupRequest> retry;
    for (size_t j = 0; j < n; ++j) {
      if (parts[j].empty()) continue;
      bool ok = results[j].ok();
      if (ok) {
        // A worker that answers with missing groups is as good as failed for those groups.
        std::map<int64_t, GroupResult> got;
        for (GroupResult& g : *results[j]) got[g.group_idx] = std::move(g);
        for (const GroupRequest& r : parts[j]) {
          auto it = got.find(r.group_idx);
          if (it == got.end() || static_cast<int64_t>(it->second.completions.size()) != r.num_samples) {
            ok = false;
            break;
          }
        }
        if (ok) {
          for (auto& [idx, g] : got) done[idx] = std::move(g);
          continue;
        }
        results[j] = absl::DataLossError("incomplete answer");
      }
      const std::string why = absl::StrCat(workers[live[j]]->name(), ": ", results[j].status().message());
      GRPO_LOG(WARNING, "rollout worker lost, re-issuing its %d groups: %s",
               static_cast<int>(parts[j].size()), why);
      stats->failures.push_back(why);
      (*alive)[live[j]] = false;
      retry.insert(retry.end(), parts[j].begin(), parts[j].end());
    }
    pending = std::move(retry);
  }
  std::vector<GroupResult> out;
  for (auto& [idx, g] : done) out.push_back(std::move(g));
  return out;
}

}  // namespace grpo
