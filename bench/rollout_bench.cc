// Rollout engine benchmark (not a test): decode tokens/s of the engine at batch 1, 16 and 64 on a
// model config (greedy, prompts of --prompt random tokens), measured the way
// bench/hf_generate_baseline.py measures transformers' generate(): the time of a run making
// N + 1 tokens minus the time of a run making 1 token (the prefill and first sample), per N*B
// decoded tokens. Then time to the first finished group and to all groups for a GRPO-shaped
// request (8 prompts x G 8, temperature 1, random lengths via stop tokens). Validates first: the
// engine's logprobs against Model::Forward on the same tokens (a #wrong count, tolerance 1e-4).
//
// --weights bf16 rounds the random weights to bf16 values (still fp32 arithmetic), as a bf16
// checkpoint or a bf16 weight update gives: the engine then packs them at 2 bytes per element,
// losslessly (model.h PrepackWeights). --weights fp32 (the default) keeps arbitrary fp32 values.
//
// --device cuda runs the engine on the GPU (EngineOptions::device; bf16 weights, K/V and GEMM
// inputs). Its validation then reports the bf16-scale difference from the CPU forward and fails
// only above 0.1 (a wrong KV row or weight gives O(1)); the CPU-only "model only" line is skipped.
//
// Run: OMP_NUM_THREADS=2 build/bench/rollout_bench --config configs/bench_moe.json
//      (bench/run_rollout_bench.sh also runs the transformers baseline and prints ratios)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "rollout/engine.h"
#include "rollout/weight_sync.h"

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
const char* Arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return def;
}

std::vector<grpo::RolloutPrompt> Prompts(int64_t n, int64_t len, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<grpo::RolloutPrompt> p(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i].prompt_id = static_cast<uint64_t>(i);
    for (int64_t t = 0; t < len; ++t) p[i].token_ids.push_back(static_cast<int32_t>(rng() % V));
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int64_t prompt_len = std::atoll(Arg(argc, argv, "--prompt", "32"));
  const int64_t decode_tokens = std::atoll(Arg(argc, argv, "--decode-tokens", "64"));
  const int repeats = std::atoi(Arg(argc, argv, "--repeats", "3"));
  std::vector<int64_t> batches;
  for (const char* p = Arg(argc, argv, "--batches", "1,16,64"); *p;) {
    batches.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  auto model = grpo::Model<float>::Create(*config);
  if (!model.ok()) return 1;
  grpo::InitParams((*model)->layout(), 0, 0.02f, (*model)->params());
  const std::string weights = Arg(argc, argv, "--weights", "fp32");
  if (weights == "bf16") {
    float* p = (*model)->params();
    for (int64_t i = 0; i < (*model)->num_params(); ++i) {
      p[i] = grpo::Bf16ToFloat(grpo::FloatToBf16(p[i]));  // round to nearest even
    }
  } else if (weights != "fp32") {
    std::fprintf(stderr, "--weights must be fp32 or bf16, not '%s'\n", weights.c_str());
    return 1;
  }
  // A second copy for validation (the engine owns the first).
  auto check_model = grpo::Model<float>::Create(*config);
  std::copy_n((*model)->params(), (*model)->num_params(), (*check_model)->params());
  grpo::EngineOptions options;
  options.max_batch = 64;
  options.kv_budget_bytes = int64_t{1} << 30;
  const std::string device = Arg(argc, argv, "--device", "cpu");
  if (device == "cuda") {
    options.device = grpo::Device::kCuda;
  } else if (device != "cpu") {
    std::fprintf(stderr, "--device must be cpu or cuda, not '%s'\n", device.c_str());
    return 1;
  }
  const double tol = device == "cuda" ? 0.1 : 1e-4;
  auto engine = grpo::Engine::Create(std::move(*model), nullptr, options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  const int64_t V = config->vocab_size;
  std::printf(
      "rollout_bench: %s, %lld params, %s weights, on %s, %d threads, prompt %lld, %lld decode "
      "tokens\n",
      config_path.c_str(), static_cast<long long>((*check_model)->num_params()), weights.c_str(),
      device.c_str(),
      omp_get_max_threads(), static_cast<long long>(prompt_len),
      static_cast<long long>(decode_tokens));

  // Validate: sampled completions' logprobs against the learner's forward.
  {
    grpo::SamplingParams sp;
    sp.group_size = 4;
    sp.max_new_tokens = 16;
    sp.seed = 1;
    auto groups = (*engine)->GenerateAll(Prompts(4, prompt_len, V, 9), sp);
    if (!groups.ok()) return 1;
    int64_t wrong = 0, total = 0;
    double worst = 0;
    for (const grpo::GroupResult& g : *groups) {
      const auto prompt = Prompts(4, prompt_len, V, 9)[g.prompt_index].token_ids;
      for (const grpo::Completion& c : g.completions) {
        grpo::TokenBatch batch;
        std::vector<int32_t> seq = prompt;
        seq.insert(seq.end(), c.token_ids.begin(), c.token_ids.end());
        batch.Add(seq);
        grpo::ForwardResult<float> r;
        if (!(*check_model)->Forward(batch, {}, &r).ok()) return 1;
        for (size_t i = 0; i < c.logprobs.size(); ++i, ++total) {
          const double d = std::abs(double(r.logprobs[prompt.size() - 1 + i]) - c.logprobs[i]);
          worst = std::max(worst, d);
          wrong += !(d <= tol);
        }
      }
    }
    std::printf(
        "validation: %lld logprobs vs Model::Forward, #wrong %lld (tol %g), max |diff| %.2e\n",
        static_cast<long long>(total), static_cast<long long>(wrong), tol, worst);
    if (wrong > 0) return 1;
  }

  // The model's own decode step (Model::Extend on 64 slots, no engine, no sampling; each slot fed
  // its own pseudo-random tokens, so the routing spreads over the experts as in a real decode).
  // It runs on this thread while the engine's thread pool is alive, so with 2+ threads libgomp
  // throttles its spin here (see below): compare it with the engine's step at 1 thread only.
  if (device == "cpu" && std::find(batches.begin(), batches.end(), 64) != batches.end()) {
    grpo::Model<float>& m = **check_model;
    m.set_batch_invariant(true);
    m.PrepackWeights();
    const int64_t B = 64;
    grpo::KvCache<float> cache(*config, B, prompt_len + decode_tokens + 1);
    std::vector<int64_t> slots(B);
    for (int64_t b = 0; b < B; ++b) slots[b] = b;
    const auto prompts = Prompts(B, prompt_len, V, 2);
    std::vector<absl::Span<const int32_t>> feed(B);
    for (int64_t b = 0; b < B; ++b) feed[b] = prompts[b].token_ids;
    std::vector<float> logits(B * V);
    if (!m.Extend(&cache, slots, feed, logits.data()).ok()) return 1;
    std::vector<int32_t> next(B);
    for (int64_t b = 0; b < B; ++b) feed[b] = absl::Span<const int32_t>(&next[b], 1);
    std::mt19937_64 rng(7);
    const auto t0 = Clock::now();
    const std::clock_t c0 = std::clock();
    for (int64_t i = 0; i < decode_tokens; ++i) {
      for (int32_t& t : next) t = static_cast<int32_t>(rng() % V);
      if (!m.Extend(&cache, slots, feed, logits.data()).ok()) return 1;
    }
    const double s = Seconds(t0, Clock::now()), cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
    std::printf("model only (Extend, batch 64): %.1f ms/step, %.1f CPU-ms/step\n",
                1000 * s / decode_tokens, 1000 * cpu / decode_tokens);
  }
  // The set-up above (random init, the validation forward, the model-only steps) ran OpenMP
  // regions on this thread, which keeps a thread pool of its own. `grpo rollout serve` runs no
  // region outside the engine's thread, so there the engine's team is the process's only one,
  // and libgomp spins a few ms between regions before sleeping; with a second pool alive it
  // counts more threads than cores and throttles the spin to ~100 iterations, so every region
  // wakes its worker with a futex (measured: 2-thread batch-64 steps 25-30% slower). Release this
  // thread's pool so the engine runs as in the server.
  omp_pause_resource_all(omp_pause_soft);
  std::string json = "{";
  for (const int64_t B : batches) {
    const auto prompts = Prompts(B, prompt_len, V, 2);
    grpo::SamplingParams sp;
    sp.temperature = 0;
    sp.group_size = 1;
    // Wall time, and process CPU time (all threads): on a shared machine the CPU-time figure
    // is the one that does not count time other processes took.
    auto run = [&](int64_t n, double* cpu) {
      sp.max_new_tokens = static_cast<int32_t>(n);
      const auto t0 = Clock::now();
      const std::clock_t c0 = std::clock();
      auto r = (*engine)->GenerateAll(prompts, sp);
      if (!r.ok() || (*r)[0].completions[0].token_ids.size() != static_cast<size_t>(n)) {
        std::fprintf(stderr, "generation failed\n");
        std::exit(1);
      }
      *cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
      return Seconds(t0, Clock::now());
    };
    double cpu = 0;
    run(4, &cpu);  // warm-up
    std::vector<double> first, full, first_cpu, full_cpu;
    for (int r = 0; r < repeats; ++r) {
      first.push_back(run(1, &cpu));
      first_cpu.push_back(cpu);
      full.push_back(run(decode_tokens + 1, &cpu));
      full_cpu.push_back(cpu);
    }
    const double decode_s = Median(full) - Median(first);
    const double decode_cpu = Median(full_cpu) - Median(first_cpu);
    const double tps = B * decode_tokens / decode_s, tps_cpu = B * decode_tokens / decode_cpu;
    std::printf(
        "batch %3lld: decode %.0f tok/s (%.1f ms/step), %.0f tok per CPU-s; prefill+first "
        "token %.3f s\n",
        static_cast<long long>(B), tps, 1000 * decode_s / decode_tokens, tps_cpu, Median(first));
    json += "\"decode_b" + std::to_string(B) + "\": " + std::to_string(tps) + ", ";
    json += "\"decode_cpu_b" + std::to_string(B) + "\": " + std::to_string(tps_cpu) + ", ";
  }

  // GRPO-shaped: 8 prompts x G 8, temperature 1, stop on a 1/64 share of the vocabulary.
  {
    grpo::SamplingParams sp;
    sp.group_size = 8;
    sp.max_new_tokens = static_cast<int32_t>(decode_tokens * 2);
    sp.seed = 5;
    for (int32_t t = 0; t < V; t += 64) sp.stop_token_ids.push_back(t);
    const auto t0 = Clock::now();
    auto req = (*engine)->Submit(Prompts(8, prompt_len, V, 3), sp);
    if (!req.ok()) return 1;
    grpo::GroupResult g;
    double first_group = -1;
    int64_t tokens = 0;
    while ((*req)->Next(&g, absl::Seconds(60)) == grpo::RolloutRequest::Wait::kGroup) {
      if (first_group < 0) first_group = Seconds(t0, Clock::now());
      for (const auto& c : g.completions) tokens += static_cast<int64_t>(c.token_ids.size());
    }
    const double all = Seconds(t0, Clock::now());
    std::printf(
        "8 prompts x G 8 (temperature 1, max %d new): first group after %.3f s, all after "
        "%.3f s, %lld tokens, %.0f tok/s overall\n",
        sp.max_new_tokens, first_group, all, static_cast<long long>(tokens), tokens / all);
    json += "\"first_group_s\": " + std::to_string(first_group) +
            ", \"all_groups_s\": " + std::to_string(all);
  }
  json += "}";
  std::printf("RESULT %s\n", json.c_str());
  return 0;
}
