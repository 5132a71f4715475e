// Model benchmark (not a test): oneDNN SGEMM GFLOP/s as the in-run baseline, then forward+backward
// tokens/s and decode tokens/s of a model config, and how fast the GEMM parts ran relative to the
// SGEMM baseline. Validates outputs (finite logprobs, non-zero gradients) before timing.
//
// Run: build/bench/model_bench --config configs/bench_moe.json --batch 8 --seq 512 --steps 3
//      (threads: OMP_NUM_THREADS; bench/run_model_bench.sh also runs the transformers baseline)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "model/config.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/params.h"

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

// Best-of-5 GFLOP/s of one shape, the better of the NT (Linear) and NN layouts.
double SgemmGflops(int64_t M, int64_t N, int64_t K) {
  std::vector<float> A(M * K), B(N * K), C(M * N);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : A) x = u(rng);
  for (auto& x : B) x = u(rng);
  double best = 0;
  for (bool trans_b : {true, false}) {
    const int64_t ldb = trans_b ? K : N;
    grpo::cpu::Gemm<float>(false, trans_b, M, N, K, 1.f, A.data(), K, B.data(), ldb, 0.f, C.data(), N);
    for (int r = 0; r < 5; ++r) {
      auto t0 = Clock::now();
      grpo::cpu::Gemm<float>(false, trans_b, M, N, K, 1.f, A.data(), K, B.data(), ldb, 0.f,
                             C.data(), N);
      best = std::max(best, 2.0 * M * N * K / Seconds(t0, Clock::now()) / 1e9);
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int64_t B = std::atoll(Arg(argc, argv, "--batch", "8"));
  const int64_t S = std::atoll(Arg(argc, argv, "--seq", "512"));
  const int steps = std::atoi(Arg(argc, argv, "--steps", "3"));
  const int64_t prompt_len = std::atoll(Arg(argc, argv, "--prompt", "32"));
  const int64_t decode_tokens = std::atoll(Arg(argc, argv, "--decode-tokens", "64"));
  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "model_bench: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  const grpo::ModelConfig& c = *config;
  std::printf("model_bench: %s, %lld params, threads %d, batch %lld x seq %lld\n",
              config_path.c_str(), (long long)c.NumParameters(), omp_get_max_threads(),
              (long long)B, (long long)S);

  // Baseline: oneDNN SGEMM on the model's own large shapes.
  const int64_t T = B * S, H = c.hidden_size;
  const double g_attn = SgemmGflops(T, H, H);
  const double g_expert = SgemmGflops(T * c.num_experts_per_tok / std::max<int64_t>(1, c.num_experts),
                                      2 * c.moe_intermediate_size, H);
  const double g_head = SgemmGflops(std::min<int64_t>(T, 1024), c.vocab_size, H);
  const double sgemm_ref = std::max({g_attn, g_expert, g_head});
  std::printf("sgemm baseline GFLOP/s (best of NT/NN): %.1f (T x H x H), %.1f (expert), %.1f (lm_head); ref %.1f\n",
              g_attn, g_expert, g_head, sgemm_ref);

  auto model_or = grpo::Model<float>::Create(c);
  if (!model_or.ok()) return 1;
  auto& model = *model_or;
  grpo::InitParams(model->layout(), 1, 0.02f, model->params());
  std::mt19937 rng(2);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  grpo::TokenBatch batch;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> s(S);
    for (auto& t : s) t = tok(rng);
    batch.Add(s);
  }
  std::vector<float> dlp(T);
  std::normal_distribution<float> n(0, 1);
  for (auto& x : dlp) x = n(rng) / T;

  // Validate once (also the warm-up).
  grpo::ForwardOptions opt;
  opt.for_backward = true;
  grpo::ForwardResult<float> r;
  if (!model->Forward(batch, opt, &r).ok() || !model->Backward(dlp, {}).ok()) return 1;
  double gnorm = 0;
  for (int64_t i = 0; i < model->num_params(); ++i) gnorm += double(model->grads()[i]) * model->grads()[i];
  bool finite = std::all_of(r.logprobs.begin(), r.logprobs.end(), [](float x) { return std::isfinite(x); });
  std::printf("check: logprobs finite %s, grad norm %.3e %s\n", finite ? "yes" : "NO", std::sqrt(gnorm),
              gnorm > 0 && std::isfinite(gnorm) ? "ok" : "WRONG");
  if (!finite || !(gnorm > 0)) return 1;

  std::vector<double> fwd, bwd;
  grpo::cpu::ResetGemmStats();
  grpo::cpu::SetGemmStatsEnabled(true);
  for (int s = 0; s < steps; ++s) {
    model->ZeroGrads();
    auto t0 = Clock::now();
    (void)model->Forward(batch, opt, &r);
    auto t1 = Clock::now();
    (void)model->Backward(dlp, {});
    auto t2 = Clock::now();
    fwd.push_back(Seconds(t0, t1));
    bwd.push_back(Seconds(t1, t2));
  }
  grpo::cpu::SetGemmStatsEnabled(false);
  const grpo::cpu::GemmStats gs = grpo::cpu::GetGemmStats();
  const double step = Median(fwd) + Median(bwd);
  double total = 0;
  for (int s = 0; s < steps; ++s) total += fwd[s] + bwd[s];
  std::printf("forward+backward: %.3f s/step (fwd %.3f, bwd %.3f) = %.0f tokens/s\n", step,
              Median(fwd), Median(bwd), T / step);
  const double gemm_gflops = gs.flops / gs.seconds / 1e9;
  std::printf("GEMM parts: %.1f GFLOP/s over %.0f%% of step time = %.0f%% of the sgemm baseline\n",
              gemm_gflops, 100.0 * gs.seconds / total, 100.0 * gemm_gflops / sgemm_ref);
  const char* kLayouts[4] = {"NN", "NT", "TN", "TT"};
  for (int i = 0; i < 4; ++i) {
    if (gs.layout_seconds[i] == 0) continue;
    std::printf("  %s: %.1f GFLOP/step at %.1f GFLOP/s (%.2f s/step)\n", kLayouts[i],
                gs.layout_flops[i] / steps / 1e9, gs.layout_flops[i] / gs.layout_seconds[i] / 1e9,
                gs.layout_seconds[i] / steps);
  }

  // Decode: B prompts of prompt_len tokens, decode_tokens new tokens each, greedy.
  std::vector<std::vector<int32_t>> prompts(B);
  for (auto& p : prompts) {
    p.resize(prompt_len);
    for (auto& t : p) t = tok(rng);
  }
  grpo::KvCache<float> cache(c, B, prompt_len + decode_tokens);
  std::vector<int64_t> slots(B);
  std::vector<absl::Span<const int32_t>> feed(B);
  for (int64_t b = 0; b < B; ++b) {
    slots[b] = b;
    feed[b] = prompts[b];
  }
  std::vector<float> logits(B * c.vocab_size);
  auto p0 = Clock::now();
  if (!model->Extend(&cache, slots, feed, logits.data()).ok()) return 1;
  auto p1 = Clock::now();
  std::vector<int32_t> next(B);
  for (int64_t i = 0; i < decode_tokens; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      next[b] = grpo::SampleToken(logits.data() + b * c.vocab_size, c.vocab_size, 0.f, 0.0);
      feed[b] = absl::Span<const int32_t>(&next[b], 1);
    }
    if (!model->Extend(&cache, slots, feed, logits.data()).ok()) return 1;
  }
  auto p2 = Clock::now();
  std::printf("decode: prefill %.3f s, %lld steps x %lld seqs in %.3f s = %.0f tokens/s\n",
              Seconds(p0, p1), (long long)decode_tokens, (long long)B, Seconds(p1, p2),
              B * decode_tokens / Seconds(p1, p2));
  std::printf("RESULT {\"fwd_bwd_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f, "
              "\"gemm_gflops\": %.1f, \"sgemm_gflops\": %.1f, \"threads\": %d}\n",
              T / step, B * decode_tokens / Seconds(p1, p2), gemm_gflops, sgemm_ref,
              omp_get_max_threads());
  return 0;
}
