// Reward-model benchmark (not a test): scored items/s on the CPU for a backbone config plus a
// one-label score head (random weights), i.e. RewardModel::Score — packing, forward to the final
// hidden state, the head. Tokenization and templating are not timed (the transformers baseline,
// bench/hf_reward_model_baseline.py, times model(input_ids) alone too).
// Validates before timing: every score finite, not all equal, and each of a few items scored
// alone equals its score in the packed batch (to 1e-4).
//
// Run: build/bench/reward_model_bench --config configs/bench_moe.json --items 32 --len 256
//      [--deterministic 1]  (batch-invariant kernels: the `model` reward's deterministic mode)
//      (threads: OMP_NUM_THREADS; bench/run_reward_model_bench.sh also runs the baseline)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "reward/reward_model.h"

namespace {

using Clock = std::chrono::steady_clock;

const char* Arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return def;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "reward_model_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int64_t num_items = std::atol(Arg(argc, argv, "--items", "32"));
  const int64_t len = std::atol(Arg(argc, argv, "--len", "256"));
  const int repeats = std::atoi(Arg(argc, argv, "--repeats", "3"));
  grpo::RewardModelBatching batching;
  batching.max_batch_tokens = std::atol(Arg(argc, argv, "--max-batch-tokens", "8192"));
  if (num_items < 1 || len < 1 || repeats < 1)
    return Fail("--items, --len, --repeats must be >= 1");

  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) return Fail(config.status().ToString());
  config->tie_word_embeddings = true;  // no LM head in a reward model
  auto backbone = grpo::Model<float>::Create(*config);
  if (!backbone.ok()) return Fail(backbone.status().ToString());
  grpo::InitParams((*backbone)->layout(), 1, 0.02f, (*backbone)->params());
  const int64_t H = config->hidden_size;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 0.02f);
  std::vector<float> head(H);
  for (float& w : head) w = normal(rng);
  const int64_t num_params = (*backbone)->num_params() + H;
  auto model = grpo::RewardModel::Create(std::move(*backbone), head, std::nullopt);
  if (!model.ok()) return Fail(model.status().ToString());
  const bool deterministic = std::atoi(Arg(argc, argv, "--deterministic", "0")) != 0;
  (*model)->set_batch_invariant(deterministic);

  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(config->vocab_size - 1));
  std::vector<std::vector<int32_t>> items(num_items, std::vector<int32_t>(len));
  for (auto& item : items)
    for (int32_t& t : item) t = tok(rng);

  // Validate (also the warm-up).
  std::vector<float> scores;
  if (auto s = (*model)->Score(items, batching, &scores); !s.ok()) return Fail(s.ToString());
  int wrong = 0;
  for (float v : scores) wrong += !std::isfinite(v);
  const auto [lo, hi] = std::minmax_element(scores.begin(), scores.end());
  if (*hi - *lo <= 0) ++wrong;
  double max_alone_diff = 0;
  for (int64_t i : {int64_t{0}, num_items / 2, num_items - 1}) {
    std::vector<float> alone;
    if (auto s = (*model)->Score({items[i]}, batching, &alone); !s.ok()) return Fail(s.ToString());
    max_alone_diff = std::max(max_alone_diff, std::fabs(double(alone[0]) - scores[i]));
  }
  if (max_alone_diff > 1e-4) ++wrong;

  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    if (auto s = (*model)->Score(items, batching, &scores); !s.ok()) return Fail(s.ToString());
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  std::printf("reward model: %s backbone + 1-label head, %.1fM params, %d threads%s\n",
              config->model_type.c_str(), num_params / 1e6, omp_get_max_threads(),
              deterministic ? ", batch-invariant kernels" : "");
  std::printf("scored %ld items x %ld tokens (max_batch_tokens %ld): median %.3f s, best %.3f s\n",
              static_cast<long>(num_items), static_cast<long>(len),
              static_cast<long>(batching.max_batch_tokens), med, times.front());
  std::printf("items/s %.2f (best %.2f), tokens/s %.0f; #wrong %d (max |alone - batched| %.2e)\n",
              num_items / med, num_items / times.front(), num_items * len / med, wrong,
              max_alone_diff);
  std::printf(
      "RESULT {\"items_per_s\": %.3f, \"items_per_s_best\": %.3f, \"wrong\": %d, "
      "\"params\": %ld}\n",
      num_items / med, num_items / times.front(), wrong, static_cast<long>(num_params));
  return wrong == 0 ? 0 : 1;
}
