// CUDA graphs: cuda::DeviceGraph on its own, and CudaModel's decode steps replayed as graphs
// against the same model launching every op (CudaModelOptions::decode_graphs off). A replay runs
// the kernels a launch would, on the same inputs, so the two must agree bitwise: logits, routing
// and sampled tokens. Part of grpo_gpu_tests.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "model/cuda_model.h"
#include "model/model.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/model/tiny_models.h"

namespace grpo {
namespace {

using namespace grpo::testing;

TEST_CASE("DeviceGraph replays what it captured on the inputs of the replay",
          "[cuda][gpu][graph]") {
  const int64_t M = 5, N = 7, K = 16;
  std::vector<float> a = Randn(M * K, 1), b = Randn(N * K, 2);
  cuda::DeviceBuffer da = Upload(a), db = Upload(b);
  cuda::DeviceBuffer a16 = Zeros<uint16_t>(M * K), b16 = Zeros<uint16_t>(N * K);
  cuda::DeviceBuffer c = Zeros<float>(M * N);
  // cast, cast, GEMM: elementwise kernels and a cuBLAS call in one graph.
  auto work = [&]() -> absl::Status {
    RETURN_IF_ERROR(cuda::CastToBf16(a16.as<uint16_t>(), da.as<float>(), M * K));
    RETURN_IF_ERROR(cuda::CastToBf16(b16.as<uint16_t>(), db.as<float>(), N * K));
    return cuda::GemmBf16(false, true, M, N, K, 1.f, a16.as<uint16_t>(), K, b16.as<uint16_t>(), K,
                          0.f, c.as<float>(), N);
  };
  auto graph = cuda::DeviceGraph::Capture(work);
  INFO(graph.status().ToString());
  REQUIRE(graph.ok());
  // Capture ran `work` once (its warm-up), and recording ran nothing more.
  const std::vector<float> warmed = Download<float>(c, M * N);
  CHECK(warmed != std::vector<float>(M * N, 0.f));
  REQUIRE(c.CopyFromHost(std::vector<float>(M * N, 0.f).data(), sizeof(float) * M * N).ok());
  for (int round = 0; round < 3; ++round) {
    a = Randn(M * K, 10 + round);
    REQUIRE(da.CopyFromHost(a.data(), sizeof(float) * a.size()).ok());
    REQUIRE((*graph)->Launch().ok());
    const std::vector<float> replayed = Download<float>(c, M * N);
    REQUIRE(work().ok());
    const std::vector<float> launched = Download<float>(c, M * N);
    CHECK(replayed == launched);
    // And it is the product of the new input (not of the one at capture).
    const std::vector<float> ar = RoundBf16(a), br = RoundBf16(b);
    double worst = 0;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += double(ar[i * K + k]) * br[j * K + k];
        worst = std::max(worst, std::abs(ref - replayed[i * N + j]));
      }
    }
    CHECK(worst < 1e-4);
  }
}

TEST_CASE("DeviceGraph refuses work it cannot capture and leaves the thread usable",
          "[cuda][gpu][graph]") {
  cuda::DeviceBuffer d = Zeros<float>(4);
  const std::vector<float> host = {1, 2, 3, 4};
  // A synchronous host copy cannot be recorded.
  auto refused = cuda::DeviceGraph::Capture(
      [&]() -> absl::Status { return cuda::CopyToDevice(d.data(), host.data(), 16); });
  CHECK(!refused.ok());
  std::printf("uncapturable work: %s\n", refused.status().ToString().c_str());
  // An error from the work itself comes back as is.
  auto failed = cuda::DeviceGraph::Capture(
      []() -> absl::Status { return absl::InvalidArgumentError("the work's own error"); });
  CHECK(failed.status().code() == absl::StatusCode::kInvalidArgument);
  // The thread is back on the default stream, with no error left behind.
  REQUIRE(cuda::CopyToDevice(d.data(), host.data(), 16).ok());
  cuda::DeviceBuffer o = Zeros<uint16_t>(4);
  REQUIRE(cuda::CastToBf16(o.as<uint16_t>(), d.as<float>(), 4).ok());
  REQUIRE(cuda::Synchronize().ok());
  CHECK(FromBf16(Download<uint16_t>(o, 4)) == host);
}

// Two models with the same weights, decode graphs on and off, driven through the same schedule.
struct Twins {
  std::unique_ptr<CudaModel> graph, eager;
  int64_t V = 0;
  bool moe = false;
  int64_t graphable_steps = 0;
  std::mt19937_64 rng{5};

  Twins(const nlohmann::json& j, int64_t slots, int64_t rows_per_slot) {
    const ModelConfig c = MustParse(j);
    V = c.vocab_size;
    moe = c.num_experts > 0;
    const std::vector<float> params = ScaledBf16Params(ParamLayout::Build(c), 31, 1.f);
    auto g = CudaModel::Create(c);
    auto e = CudaModel::Create(c, {.decode_graphs = false});
    REQUIRE(g.ok());
    REQUIRE(e.ok());
    graph = std::move(*g);
    eager = std::move(*e);
    for (CudaModel* m : {graph.get(), eager.get()}) {
      REQUIRE(m->SetParams(params).ok());
      InitCache(m, slots, rows_per_slot);
    }
  }
  static void InitCache(CudaModel* m, int64_t slots, int64_t rows_per_slot) {
    REQUIRE(m->InitPooledCache(slots, slots * rows_per_slot).ok());
    for (int64_t s = 0; s < slots; ++s) {
      REQUIRE(m->AssignSlot(s, s * rows_per_slot, rows_per_slot).ok());
    }
  }
  std::vector<int32_t> Prompt(int64_t n) {
    std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(V - 1));
    std::vector<int32_t> p(n);
    for (int32_t& t : p) t = d(rng);
    return p;
  }
  // One Extend on both, compared bitwise; then one sampled token per slot (compared too).
  std::vector<int32_t> Step(const std::vector<int64_t>& slots,
                            const std::vector<std::vector<int32_t>>& feeds, bool routing,
                            const std::string& what) {
    INFO(what);
    std::vector<absl::Span<const int32_t>> spans(feeds.begin(), feeds.end());
    const int64_t B = static_cast<int64_t>(slots.size());
    std::vector<float> lg(B * V), le(B * V);
    std::vector<int32_t> rg, re;
    const int64_t before = graph->decode_graph_replays();
    REQUIRE(graph->Extend(slots, spans, lg.data(), routing ? &rg : nullptr).ok());
    REQUIRE(eager->Extend(slots, spans, le.data(), routing ? &re : nullptr).ok());
    bool decode = B <= 256;
    for (const auto& f : feeds) decode = decode && f.size() == 1;
    graphable_steps += decode;
    CHECK(graph->decode_graph_replays() == before + (decode ? 1 : 0));
    CHECK(lg == le);
    CHECK(rg == re);
    if (routing && moe) CHECK(!rg.empty());  // a dense model has no expert choices
    std::vector<float> u(B);
    std::uniform_real_distribution<float> ud(0.f, 1.f);
    for (float& x : u) x = ud(rng);
    std::vector<int32_t> tg, te;
    REQUIRE(graph->Sample(0.7f, 0, 1.f, u, &tg).ok());
    REQUIRE(eager->Sample(0.7f, 0, 1.f, u, &te).ok());
    CHECK(tg == te);
    for (int64_t s : slots) CHECK(graph->cache_length(s) == eager->cache_length(s));
    return tg;
  }
  std::vector<int32_t> Decode(const std::vector<int64_t>& slots, const std::vector<int32_t>& toks,
                              bool routing, const std::string& what) {
    std::vector<std::vector<int32_t>> feeds;
    for (int32_t t : toks) feeds.push_back({t});
    return Step(slots, feeds, routing, what);
  }
};

void CheckDecodeGraphs(const char* name, const nlohmann::json& j) {
  INFO(name);
  Twins t(j, 8, 40);
  std::vector<int64_t> four = {0, 1, 2, 3};
  std::vector<int32_t> next = t.Step(four, {t.Prompt(5), t.Prompt(9), t.Prompt(3), t.Prompt(12)},
                                     false, "prefill of four slots");
  for (int i = 0; i < 4; ++i) next = t.Decode(four, next, false, "decode, 4 slots");
  // Another batch size: a graph of its own; then the first one again.
  std::vector<int32_t> three = {next[0], next[2], next[3]};
  for (int i = 0; i < 2; ++i) three = t.Decode({0, 2, 3}, three, false, "decode, 3 slots");
  next = t.Decode(four, {three[0], next[1], three[1], three[2]}, false, "decode, 4 slots again");
  // A slot that reads slot 0's first 5 positions in place (a rollout group's shared prompt).
  for (CudaModel* m : {t.graph.get(), t.eager.get()}) REQUIRE(m->SharePrefix(0, 4, 5).ok());
  std::vector<int64_t> five = {0, 1, 2, 3, 4};
  next.push_back(next[0]);
  for (int i = 0; i < 3; ++i) next = t.Decode(five, next, false, "decode with a shared prefix");
  // A prefill beside decodes: launched, not replayed.
  for (CudaModel* m : {t.graph.get(), t.eager.get()}) m->ResetSlot(1);
  next = t.Step({0, 1, 2}, {{next[0]}, t.Prompt(4), {next[2]}}, false, "prefill beside decodes");
  // Expert choices recorded: a graph of its own, copied out after the replay.
  for (int i = 0; i < 3; ++i) next = t.Decode({0, 1, 2}, next, true, "decode recording routing");
  next = t.Decode({0, 1, 2}, next, false, "decode, 3 slots, no routing");
  // A rebuilt, larger cache (new device buffers, most likely at new addresses): graphs holding
  // the old pointers must not be replayed. Whether the addresses moved is the allocator's call,
  // so only the results are checked; the capture count says which way it went.
  const int64_t captures_before = t.graph->decode_graph_captures();
  for (CudaModel* m : {t.graph.get(), t.eager.get()}) Twins::InitCache(m, 8, 96);
  next = t.Step({5, 6}, {t.Prompt(6), t.Prompt(2)}, false, "prefill after the cache rebuild");
  for (int i = 0; i < 3; ++i) next = t.Decode({5, 6}, next, i == 1, "decode after the rebuild");
  std::printf("%s: %lld decode steps replayed, %lld graphs captured (%lld after the rebuild)\n",
              name, static_cast<long long>(t.graph->decode_graph_replays()),
              static_cast<long long>(t.graph->decode_graph_captures()),
              static_cast<long long>(t.graph->decode_graph_captures() - captures_before));
  CHECK(t.graph->decode_graph_replays() == t.graphable_steps);
  // At least B = 4, 3, 5, 2, and for MoE 3 and 2 with routing (a dense model records none);
  // more when a buffer a graph holds moved (an arena or rope table grew, the routing buffer
  // appeared, the cache rebuild).
  CHECK(t.graph->decode_graph_captures() >= (t.moe ? 6 : 4));
  CHECK(t.graph->decode_graph_captures() < t.graphable_steps);  // graphs are replayed
  CHECK(t.eager->decode_graph_replays() == 0);
}

TEST_CASE("decode steps replayed as CUDA graphs equal launched ones bitwise",
          "[cuda][gpu][graph][model]") {
  CheckDecodeGraphs("mid qwen3_moe (16 experts top-4)", MidQwen3MoeJson());
  CheckDecodeGraphs("tiny qwen3_moe (a dense layer)", TinyQwen3MoeJson());
  CheckDecodeGraphs("tiny llama (biases, nkv 1)", TinyLlamaJson());
  CheckDecodeGraphs("tiny qwen2 (qkv bias, tied)", TinyQwen2Json());
}

TEST_CASE("decode graphs stop at 256 slots", "[cuda][gpu][graph][model]") {
  // 65..256 slots take the MoE path whose expert loads stay on the device.
  Twins t(MidQwen3MoeJson(), 257, 8);
  std::vector<int64_t> slots(257);
  std::vector<std::vector<int32_t>> feeds(257);
  for (int64_t s = 0; s < 257; ++s) {
    slots[s] = s;
    feeds[s] = t.Prompt(2);
  }
  std::vector<int32_t> next = t.Step(slots, feeds, false, "prefill of 257 slots");
  for (int64_t B : {64, 65, 200, 256}) {
    std::vector<int64_t> first(slots.begin(), slots.begin() + B);
    std::vector<int32_t> nb(next.begin(), next.begin() + B);
    t.Decode(first, nb, B == 200, "decode of up to 256 slots: replayed");
  }
  next = t.Decode(slots, next, false, "decode of 257 slots: launched");
  CHECK(t.graph->decode_graph_replays() == 4);
}

// The device-load expert path (65..256 tokens) against the CPU model, with and without graphs:
// the logits of a decode step of 100 slots after prompts of 1-3 tokens.
TEST_CASE("decode of 100 slots with expert loads on the device matches the CPU model",
          "[cuda][gpu][model]") {
  const ModelConfig c = MustParse(MidQwen3MoeJson());
  const std::vector<float> params = ScaledBf16Params(ParamLayout::Build(c), 41, 1.f);
  auto cpu = Model<float>::Create(c);
  REQUIRE(cpu.ok());
  std::copy(params.begin(), params.end(), (*cpu)->params());
  const int64_t S = 100, V = c.vocab_size;
  KvCache<float> cache(c, S, 8);
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  std::vector<std::vector<int32_t>> prompts(S), step(S);
  std::vector<int64_t> slots(S);
  for (int64_t s = 0; s < S; ++s) {
    slots[s] = s;
    prompts[s].resize(1 + s % 3);
    for (int32_t& x : prompts[s]) x = tok(rng);
    step[s] = {tok(rng)};
  }
  std::vector<absl::Span<const int32_t>> ps(prompts.begin(), prompts.end()),
      ss(step.begin(), step.end());
  std::vector<float> ref(S * V);
  REQUIRE((*cpu)->Extend(&cache, slots, ps, ref.data()).ok());
  REQUIRE((*cpu)->Extend(&cache, slots, ss, ref.data()).ok());
  for (bool graphs : {true, false}) {
    INFO("decode graphs " << graphs);
    auto gpu = CudaModel::Create(c, {.decode_graphs = graphs});
    REQUIRE(gpu.ok());
    REQUIRE((*gpu)->SetParams(params).ok());
    REQUIRE((*gpu)->InitCache(S, 8).ok());
    std::vector<float> got(S * V);
    REQUIRE((*gpu)->Extend(slots, ps, got.data()).ok());
    REQUIRE((*gpu)->Extend(slots, ss, got.data()).ok());
    CHECK((*gpu)->decode_graph_replays() == (graphs ? 1 : 0));
    const double e = NormErr("decode of 100 slots", got, ref);
    std::printf("decode of 100 slots (graphs %d): logits normalized error %.3g\n", graphs, e);
    CHECK(e < 3e-2);  // the 3-slot decode test's bound
  }
}

}  // namespace
}  // namespace grpo
