// Data-parallel learner step benchmark (not a test): R ranks as threads over a LocalGroup
// (learner/local_data_parallel.h) on a synthetic GRPO mini-batch, three ways in the same run:
//   1. one rank on the whole mini-batch (the baseline: no collectives);
//   2. R ranks, gradients all-reduced in --bucket-mb buckets overlapped with the backward;
//   3. R ranks, one bucket holding the whole gradient: it can only start once the backward is
//      over (no overlap), the reference for what overlap hides.
// Prints per-step seconds, seconds inside all-reduces, seconds the training thread waited for them
// after its backward (exposed communication), bytes, and the ratios. Checks first (#wrong): every
// rank's parameters bitwise equal after the steps, and each DP run's first grad norm equal to the
// one-rank run's (rel 1e-4).
//
// On the CPU the ranks share the cores, so R ranks are not faster than one; what this measures is
// the communication the overlap hides. GPU ranks use NCCL through the same DataParallelStep.
//
// Run: build/bench/data_parallel_bench [--config configs/bench_moe.json --ranks 2 --groups 4
//      --group-size 2 --len 64 --steps 2 --bucket-mb 25]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "learner/local_data_parallel.h"
#include "model/config.h"
#include "model/params.h"

namespace {

using Clock = std::chrono::steady_clock;

const char* Arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}

struct Batch {
  int64_t group_size = 0;
  std::vector<std::vector<int32_t>> prompts, completions;
  std::vector<std::vector<double>> old_lp;
  std::vector<std::vector<float>> roll_lp;
  std::vector<grpo::TrainSequence> seqs;
};

struct RunResult {
  double step_s = 0, allreduce_s = 0, wait_s = 0, bytes = 0, first_grad_norm = 0;
  int wrong = 0;
};

RunResult RunVariant(const grpo::ModelConfig& c, const Batch& batch, int ranks, double bucket_mb,
                     int steps) {
  RunResult out;
  auto model = grpo::Model<float>::Create(c);
  if (!model.ok()) std::abort();
  grpo::InitParams((*model)->layout(), 1, 0.02f, (*model)->params());
  grpo::OptimizerConfig oc;
  oc.lr = 1e-4;
  grpo::AdamW opt((*model)->num_params(), oc);
  grpo::DataParallelConfig dp;
  dp.ranks = ranks;
  dp.bucket_mb = bucket_mb;
  dp.timeout_s = 600;
  auto ldp = grpo::LocalDataParallel::Create(model->get(), &opt, dp);
  if (!ldp.ok()) {
    std::fprintf(stderr, "data_parallel_bench: %s\n", ldp.status().ToString().c_str());
    std::exit(1);
  }
  const int64_t num_groups = static_cast<int64_t>(batch.seqs.size()) / batch.group_size;
  auto shard = [&](int rank) {
    const grpo::GroupRange g = grpo::AssignGroups(num_groups, rank, ranks);
    return absl::MakeConstSpan(batch.seqs)
        .subspan(g.first * batch.group_size, (g.last - g.first) * batch.group_size);
  };
  grpo::MiniBatchOptions mo;
  mo.lr = oc.lr;
  std::vector<double> times;
  grpo::DataParallelStats before;
  for (int s = 0; s <= steps; ++s) {  // step 0 is the warm-up
    if (s == 1) before = (*ldp)->stats();
    mo.opt_step = s + 1;
    const auto t0 = Clock::now();
    auto r = (*ldp)->Run(shard, mo);
    if (!r.ok()) {
      std::fprintf(stderr, "data_parallel_bench: %s\n", r.status().ToString().c_str());
      std::exit(1);
    }
    if (s > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (s == 0) out.first_grad_norm = r->opt.grad_norm;
  }
  std::sort(times.begin(), times.end());
  out.step_s = times[times.size() / 2];
  const grpo::DataParallelStats after = (*ldp)->stats();
  out.allreduce_s = (after.allreduce_s - before.allreduce_s) / steps;
  out.wait_s = (after.allreduce_wait_s - before.allreduce_wait_s) / steps;
  out.bytes = (after.bytes_reduced - before.bytes_reduced) / steps;
  const grpo::Model<float>& m0 = (*ldp)->model(0);
  for (int r = 1; r < ranks; ++r) {
    if (std::memcmp((*ldp)->model(r).params(), m0.params(), m0.num_params() * sizeof(float)) != 0)
      ++out.wrong;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int ranks = std::atoi(Arg(argc, argv, "--ranks", "2"));
  const int64_t num_groups = std::atoll(Arg(argc, argv, "--groups", "4"));
  const int64_t G = std::atoll(Arg(argc, argv, "--group-size", "2"));
  const int64_t len = std::atoll(Arg(argc, argv, "--len", "64"));
  const int steps = std::max(1, std::atoi(Arg(argc, argv, "--steps", "2")));
  const double bucket_mb = std::atof(Arg(argc, argv, "--bucket-mb", "25"));
  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "data_parallel_bench: %s\n", config.status().ToString().c_str());
    return 1;
  }
  const grpo::ModelConfig& c = *config;
  std::printf("data_parallel_bench: %s, %lld params, %d ranks, %lld groups x %lld seqs x %lld "
              "tokens, bucket %.1f MiB\n",
              config_path.c_str(), static_cast<long long>(c.NumParameters()), ranks,
              static_cast<long long>(num_groups), static_cast<long long>(G),
              static_cast<long long>(len), bucket_mb);

  // Synthetic mini-batch: a prompt of len/4 tokens per group, completions of the rest; old
  // logprobs from the initial policy so the ratios start at 1 (nothing clipped).
  Batch batch;
  batch.group_size = G;
  {
    auto m = grpo::Model<float>::Create(c);
    if (!m.ok()) return 1;
    grpo::InitParams((*m)->layout(), 1, 0.02f, (*m)->params());
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
    std::normal_distribution<double> normal(0, 1);
    const int64_t P = std::max<int64_t>(1, len / 4), C = std::max<int64_t>(1, len - P);
    grpo::TokenBatch tb;
    for (int64_t g = 0; g < num_groups; ++g) {
      std::vector<int32_t> prompt(P);
      for (auto& t : prompt) t = tok(rng);
      for (int64_t j = 0; j < G; ++j) {
        std::vector<int32_t> comp(C);
        for (auto& t : comp) t = tok(rng);
        batch.prompts.push_back(prompt);
        batch.completions.push_back(comp);
        std::vector<int32_t> all = prompt;
        all.insert(all.end(), comp.begin(), comp.end());
        tb.Add(all);
      }
    }
    grpo::ForwardResult<float> res;
    if (!(*m)->Forward(tb, grpo::ForwardOptions{}, &res).ok()) return 1;
    const size_t n = batch.prompts.size();
    batch.old_lp.resize(n);
    batch.roll_lp.resize(n);
    for (size_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < C; ++j) {
        const float lp = res.logprobs[tb.offsets[i] + P - 1 + j];
        batch.old_lp[i].push_back(lp);
        batch.roll_lp[i].push_back(lp);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      grpo::TrainSequence s;
      s.prompt = batch.prompts[i];
      s.completion = batch.completions[i];
      s.old_logprobs = batch.old_lp[i];
      s.rollout_logprobs = batch.roll_lp[i];
      s.advantage = normal(rng);
      batch.seqs.push_back(s);
    }
  }

  const double whole_mb = static_cast<double>(c.NumParameters()) * 4 / (1 << 20) + 1;
  const RunResult one = RunVariant(c, batch, 1, bucket_mb, steps);
  const RunResult overlap = RunVariant(c, batch, ranks, bucket_mb, steps);
  const RunResult whole = RunVariant(c, batch, ranks, whole_mb, steps);
  auto rel = [&](double g) { return std::abs(g - one.first_grad_norm) / one.first_grad_norm; };
  const int wrong = overlap.wrong + whole.wrong + (rel(overlap.first_grad_norm) > 1e-4) +
                    (rel(whole.first_grad_norm) > 1e-4);
  std::printf("check: replicas bitwise equal, grad norm %.6e (1 rank) vs %.6e / %.6e: #wrong %d\n",
              one.first_grad_norm, overlap.first_grad_norm, whole.first_grad_norm, wrong);
  std::printf("%-28s %10s %12s %12s %10s\n", "variant", "step s", "allreduce s", "exposed s",
              "MB/step");
  auto row = [](const char* name, const RunResult& r) {
    std::printf("%-28s %10.3f %12.3f %12.3f %10.1f\n", name, r.step_s, r.allreduce_s, r.wait_s,
                r.bytes / (1 << 20));
  };
  row("1 rank (baseline)", one);
  row("R ranks, overlapped buckets", overlap);
  row("R ranks, one bucket", whole);
  std::printf("exposed all-reduce, overlapped / one bucket: %.2f\n",
              whole.wait_s > 0 ? overlap.wait_s / whole.wait_s : 0.0);
  std::printf("step time vs 1 rank: overlapped %.2fx, one bucket %.2fx\n",
              overlap.step_s / one.step_s, whole.step_s / one.step_s);
  return wrong == 0 ? 0 : 1;
}
