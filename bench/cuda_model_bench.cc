// GPU model benchmark (not a test): measures this device's ceilings in the same run (device-to-
// device copy bandwidth, bf16 cuBLAS GEMM rate), then training tokens/s (forward + backward +
// AdamW on a packed batch) as MFU, and decode tokens/s at the given batch sizes as a fraction of
// the HBM roofline (bytes a decode step must read / measured copy bandwidth). Validates outputs
// (finite logprobs, non-zero gradients, decode tokens in range) before timing.
//
// Run: build/bench/cuda_model_bench --config configs/bench_moe.json [--train-batch 16 --seq 512
//      --train-steps 5 --decode-batches 64,256 --prompt 32 --decode-tokens 64 --decode-graphs 1]
// --decode-graphs 0 launches every op of a decode step instead of replaying a CUDA graph
// (CudaModelOptions::decode_graphs; graphs cover batches of at most 256).
//      (bench/cuda_bench.sh also runs the transformers baseline and prints the ratios)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/cuda_model.h"
#include "model/params.h"

#ifdef GRPO_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
[[maybe_unused]] double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
[[maybe_unused]] double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
[[maybe_unused]] const char* Arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}
[[maybe_unused]] int Fail(const std::string& what, const absl::Status& s) {
  std::fprintf(stderr, "cuda_model_bench: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
#ifndef GRPO_HAVE_CUDA
  std::printf("cuda_model_bench: built without CUDA; nothing to measure\n");
  return 0;
#else
  const std::string config_path = Arg(argc, argv, "--config", "configs/bench_moe.json");
  const int64_t TB = std::atoll(Arg(argc, argv, "--train-batch", "16"));
  const int64_t S = std::atoll(Arg(argc, argv, "--seq", "512"));
  const int train_steps = std::atoi(Arg(argc, argv, "--train-steps", "5"));
  const int64_t prompt = std::atoll(Arg(argc, argv, "--prompt", "32"));
  const int64_t gen = std::atoll(Arg(argc, argv, "--decode-tokens", "64"));
  std::vector<int64_t> decode_batches;
  {
    std::stringstream ss(Arg(argc, argv, "--decode-batches", "64,256"));
    std::string item;
    while (std::getline(ss, item, ',')) decode_batches.push_back(std::atoll(item.c_str()));
  }
  auto config = grpo::LoadModelConfig(config_path);
  if (!config.ok()) return Fail("config", config.status());
  const grpo::ModelConfig& c = *config;
  if (!grpo::CudaAvailable()) {
    std::printf("cuda_model_bench: no CUDA device; nothing to measure\n");
    return 0;
  }
  std::printf("cuda_model_bench: %s on %s, %lld params\n", config_path.c_str(),
              grpo::cuda::DeviceDescription(0).c_str(), (long long)c.NumParameters());
  auto bw = grpo::cuda::MeasureCopyBandwidth(size_t{2} << 30);
  if (!bw.ok()) return Fail("copy bandwidth", bw.status());
  auto peak = grpo::cuda::MeasureBf16GemmRate(8192);
  if (!peak.ok()) return Fail("gemm rate", peak.status());
  std::printf("ceilings: copy %.0f GB/s (read+write), bf16 GEMM 8192^3 %.1f TFLOP/s\n", *bw / 1e9,
              *peak / 1e12);

  const bool decode_graphs = std::atoi(Arg(argc, argv, "--decode-graphs", "1")) != 0;
  auto model_or = grpo::CudaModel::Create(c, {.decode_graphs = decode_graphs});
  if (!model_or.ok()) return Fail("create", model_or.status());
  grpo::CudaModel& model = **model_or;
  {
    std::vector<float> p(model.num_params());
    grpo::InitParams(model.layout(), 1, 0.02f, p.data());
    if (auto s = model.SetParams(p); !s.ok()) return Fail("set params", s);
  }
  const int64_t H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd, E = c.num_experts, K = c.num_experts_per_tok;
  const int64_t Im = c.moe_intermediate_size;
  std::mt19937 rng(2);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));

  // ---- Training: forward + backward + AdamW over TB sequences of S tokens. ----
  // Matmul FLOPs per token (forward, 2 per MAC): attention projections, router, K experts (or
  // the dense MLP), lm_head; plus causal attention 2*S*(S+1)*qd per sequence per layer; x3 for
  // forward + backward.
  double mm_params = 0;
  for (int64_t l = 0; l < L; ++l) {
    mm_params += (qd + 2 * kvd) * H + H * qd;
    mm_params += c.IsMoeLayer(l) ? E * H + K * 3.0 * Im * H : 3.0 * c.intermediate_size * H;
  }
  mm_params += static_cast<double>(V) * H;
  const double train_flops = 3.0 * (2.0 * mm_params * TB * S + L * TB * 2.0 * S * (S + 1) * qd);
  grpo::TokenBatch batch;
  for (int64_t b = 0; b < TB; ++b) {
    std::vector<int32_t> s(S);
    for (auto& t : s) t = tok(rng);
    batch.Add(s);
  }
  grpo::ForwardOptions fopt;
  fopt.for_backward = true;
  std::vector<float> dlp(TB * S);
  for (auto& x : dlp) x = -std::uniform_real_distribution<float>(0, 1)(rng);
  std::vector<double> step_s, fwd_s, bwd_s;
  for (int i = 0; i < train_steps + 1; ++i) {
    const auto t0 = Clock::now();
    grpo::ForwardResult<float> r;
    if (auto s = model.Forward(batch, fopt, &r); !s.ok()) return Fail("train forward", s);
    const auto tf = Clock::now();  // Forward and Backward return after the device finished
    if (auto s = model.ZeroGrads(); !s.ok()) return Fail("zero grads", s);
    if (auto s = model.Backward(dlp, {}); !s.ok()) return Fail("backward", s);
    const auto tb = Clock::now();
    if (auto s = model.AdamWStep({1e-5f, 0.9f, 0.95f, 1e-8f, 0.f}, i + 1); !s.ok()) {
      return Fail("adamw", s);
    }
    if (auto s = grpo::cuda::Synchronize(); !s.ok()) return Fail("sync", s);
    const auto t1 = Clock::now();
    if (i == 0) {  // validate once
      for (float x : r.logprobs)
        if (!std::isfinite(x)) return Fail("validate", absl::InternalError("non-finite logprob"));
      std::vector<float> g(model.num_params());
      if (auto s = model.GetGrads(absl::MakeSpan(g)); !s.ok()) return Fail("grads", s);
      double n2 = 0;
      for (float x : g) n2 += double(x) * x;
      if (!(n2 > 0) || !std::isfinite(n2)) {
        return Fail("validate", absl::InternalError("zero or non-finite gradient"));
      }
      std::printf("train: validated (grad norm %.3g); warm-up step %.3f s\n", std::sqrt(n2),
                  Seconds(t0, t1));
      continue;
    }
    step_s.push_back(Seconds(t0, t1));
    fwd_s.push_back(Seconds(t0, tf));
    bwd_s.push_back(Seconds(tf, tb));
  }
  const double train_step = Median(step_s);
  const double train_tps = TB * S / train_step;
  const double mfu = train_flops / train_step / *peak;
  std::printf(
      "train: %lld x %lld tokens, step %.4f s (median of %d), %.0f tokens/s, %.1f TFLOP/s "
      "model FLOPs, MFU %.1f%% of the measured bf16 GEMM rate\n",
      (long long)TB, (long long)S, train_step, train_steps, train_tps,
      train_flops / train_step / 1e12, 100 * mfu);
  if (grpo::cuda::OpTimingEnabled()) {
    std::printf("train: per-op device time over %d steps (GRPO_CUDA_TIMING=1, synchronized):\n%s",
                train_steps + 1, grpo::cuda::OpTimingReport().c_str());
  }
  std::printf(
      "train: split (medians) forward %.4f s, zero grads + backward %.4f s, rest (AdamW) "
      "%.4f s\n",
      Median(fwd_s), Median(bwd_s), train_step - Median(fwd_s) - Median(bwd_s));

  // ---- Decode: B slots, prefill `prompt` tokens, then `gen` greedy steps. ----
  std::string decode_json;
  for (int64_t B : decode_batches) {
    if (auto s = model.InitCache(B, prompt + gen + 1); !s.ok()) return Fail("cache", s);
    std::vector<int64_t> slots(B);
    for (int64_t b = 0; b < B; ++b) slots[b] = b;
    std::vector<std::vector<int32_t> > prompts(B, std::vector<int32_t>(prompt));
    for (auto& p : prompts)
      for (auto& t : p) t = tok(rng);
    std::vector<float> u(B, 0.5f);
    double mean_touched = 0;  // distinct experts per MoE layer per step (untimed probe)
    const int64_t replays_before = model.decode_graph_replays();
    std::vector<double> times;
    for (int rep = 0; rep < 2; ++rep) {  // rep 0: warm-up + routing probe; rep 1: timed
      for (int64_t b = 0; b < B; ++b) model.ResetSlot(b);
      std::vector<absl::Span<const int32_t> > spans(prompts.begin(), prompts.end());
      if (auto s = model.Extend(slots, spans, nullptr); !s.ok()) return Fail("prefill", s);
      std::vector<int32_t> next;
      if (auto s = model.Sample(0.f, 0, 1.f, u, &next); !s.ok()) return Fail("sample", s);
      if (auto s = grpo::cuda::Synchronize(); !s.ok()) return Fail("sync", s);
      const auto t0 = Clock::now();
      int64_t probe_layers = 0;
      for (int64_t step = 0; step < gen; ++step) {
        std::vector<std::vector<int32_t> > one(B);
        for (int64_t b = 0; b < B; ++b) one[b] = {next[b]};
        std::vector<absl::Span<const int32_t> > sp(one.begin(), one.end());
        std::vector<int32_t> routing;
        const bool probe = rep == 0 && step % 8 == 0 && E > 0;
        if (auto s = model.Extend(slots, sp, nullptr, probe ? &routing : nullptr); !s.ok()) {
          return Fail("decode", s);
        }
        if (probe) {
          const int64_t nmoe = c.NumMoeLayers();
          for (int64_t l = 0; l < nmoe; ++l) {
            std::set<int32_t> used(routing.begin() + l * B * K, routing.begin() + (l + 1) * B * K);
            mean_touched += static_cast<double>(used.size());
            ++probe_layers;
          }
        }
        if (auto s = model.Sample(0.f, 0, 1.f, u, &next); !s.ok()) return Fail("sample", s);
        for (int32_t t : next)
          if (t < 0 || t >= V) return Fail("validate", absl::InternalError("token out of range"));
      }
      const auto t1 = Clock::now();
      if (rep == 0 && probe_layers > 0) mean_touched /= probe_layers;
      if (rep == 1) times.push_back(Seconds(t0, t1));
    }
    const int64_t replays = model.decode_graph_replays() - replays_before;
    const double step_time = times[0] / gen;
    const double tps = B * gen / times[0];
    // Bytes one decode step must read: every non-expert weight, the touched experts, lm_head,
    // B embedding rows, and the K/V cache at the mean length (prompt + gen/2).
    double bytes = 0;
    for (int64_t l = 0; l < L; ++l) {
      bytes += 2.0 * ((qd + 2 * kvd) * H + H * qd + 2 * H + (c.qk_norm ? 2 * hd : 0));
      if (c.IsMoeLayer(l)) {
        bytes += 2.0 * (E * H + mean_touched * 3.0 * Im * H);
      } else {
        bytes += 2.0 * 3.0 * c.intermediate_size * H;
      }
    }
    bytes += 2.0 * (V * H + H + B * H);
    bytes += L * B * (prompt + gen / 2.0) * kvd * 2 /*k,v*/ * 2 /*bf16*/;
    const double roofline = bytes / *bw;  // bw counts read + write; a decode step only reads
    std::printf(
        "decode B=%lld: %.0f tokens/s, step %.3f ms, %.1f MB read/step (experts touched "
        "per layer %.1f of %lld), roofline step %.3f ms -> %.1f%% of roofline; %lld of %lld "
        "steps replayed as CUDA graphs\n",
        (long long)B, tps, 1e3 * step_time, bytes / 1e6, mean_touched, (long long)E, 1e3 * roofline,
        100 * roofline / step_time, (long long)replays, (long long)(2 * gen));
    if (grpo::cuda::OpTimingEnabled()) {
      std::printf("decode B=%lld: per-op device time (2 x prefill + decode):\n%s", (long long)B,
                  grpo::cuda::OpTimingReport().c_str());
    }
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "%s\"%lld\": {\"tokens_per_s\": %.1f, \"step_ms\": %.4f, \"roofline_pct\": %.2f}",
                  decode_json.empty() ? "" : ", ", (long long)B, tps, 1e3 * step_time,
                  100 * roofline / step_time);
    decode_json += buf;
  }
  std::printf(
      "RESULT {\"copy_GBps\": %.1f, \"bf16_tflops\": %.1f, \"train_tokens_per_s\": %.1f, "
      "\"mfu_pct\": %.2f, \"decode\": {%s}}\n",
      *bw / 1e9, *peak / 1e12, train_tps, 100 * mfu, decode_json.c_str());
  return 0;
#endif
}
