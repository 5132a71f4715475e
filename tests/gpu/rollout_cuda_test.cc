// The rollout engine on the GPU (EngineOptions::device = kCuda) and the pooled KV cache it runs
// on, against the CPU model. Part of grpo_gpu_tests.
//
// Reference: Model<float> on the CPU with the same weights, rounded to bf16 and scaled x0.2 (a
// trained model's spread, where the GPU's bf16 GEMM inputs and K/V give errors at the bf16 scale;
// cuda_model_test.cc's "tight" tolerances, set from measured H200 runs). A wrong KV row, a fork
// that copies the wrong slot, a wrong logprob from the device sampler or a stale weight swap
// gives O(1) logprob errors and fails.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "learner/rollout_workers.h"
#include "model/cuda_model.h"
#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/rollout_service.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/model/tiny_models.h"

namespace grpo {
namespace {

using namespace grpo::testing;

std::unique_ptr<Model<float>> CpuModel(const ModelConfig& c, const std::vector<float>& params) {
  auto m = Model<float>::Create(c);
  REQUIRE(m.ok());
  std::copy(params.begin(), params.end(), (*m)->params());
  return std::move(*m);
}

// Every completion's logprobs against the CPU model's forward on prompt + completion
// (temperature 1, top-p 1, top-k off: the sampling distribution is the model's own).
void CheckAgainstCpu(Model<float>& cpu, const std::vector<RolloutPrompt>& prompts,
                     const std::vector<GroupResult>& groups, uint64_t version, int64_t G,
                     int64_t new_tokens) {
  REQUIRE(groups.size() == prompts.size());
  std::vector<float> got, ref;
  for (size_t i = 0; i < groups.size(); ++i) {
    const std::vector<int32_t>& p = prompts[i].token_ids;
    REQUIRE(static_cast<int64_t>(groups[i].completions.size()) == G);
    for (const Completion& c : groups[i].completions) {
      CHECK(c.weight_version == version);
      CHECK(c.finish_reason == FinishReason::kLength);
      REQUIRE(static_cast<int64_t>(c.token_ids.size()) == new_tokens);
      TokenBatch b;
      std::vector<int32_t> seq = p;
      seq.insert(seq.end(), c.token_ids.begin(), c.token_ids.end());
      b.Add(seq);
      ForwardResult<float> r;
      REQUIRE(cpu.Forward(b, {}, &r).ok());
      for (size_t j = 0; j < c.token_ids.size(); ++j) {
        got.push_back(c.logprobs[j]);
        ref.push_back(r.logprobs[p.size() - 1 + j]);
      }
    }
  }
  CheckClose("rollout logprobs vs cpu forward", got, ref, 0.01, 0.01);
  CHECK(NormErr("rollout logprobs vs cpu forward", got, ref) < 5e-3);
}

// The mid MoE on the GPU (a pooled cache of 3 slots over 100 rows; slots 0 and 1 hold 30 rows
// each, out of order in the pool: rows 60.. and 5..) and on the CPU, with the same weights.
struct CacheTwins {
  ModelConfig c;
  std::unique_ptr<CudaModel> gpu;
  std::unique_ptr<Model<float>> cpu;
};
CacheTwins MakeCacheTwins(uint64_t seed) {
  CacheTwins t;
  t.c = MustParse(MidQwen3MoeJson());
  const std::vector<float> params =
      ScaledBf16Params(Model<float>::Create(t.c).value()->layout(), seed, 0.2f);
  auto gpu = CudaModel::Create(t.c);
  REQUIRE(gpu.ok());
  t.gpu = std::move(*gpu);
  REQUIRE(t.gpu->SetParams(params).ok());
  t.cpu = CpuModel(t.c, params);
  REQUIRE(t.gpu->InitPooledCache(3, 100).ok());
  REQUIRE(t.gpu->AssignSlot(0, 60, 30).ok());
  REQUIRE(t.gpu->AssignSlot(1, 5, 30).ok());
  return t;
}

TEST_CASE("cuda pooled KV cache: slots at assigned rows, prefix copy, capacity",
          "[cuda][gpu][rollout]") {
  CacheTwins t = MakeCacheTwins(3);
  const ModelConfig& c = t.c;
  CudaModel* gpu = t.gpu.get();
  auto& cpu = t.cpu;
  const int64_t V = c.vocab_size;
  CHECK(gpu->AssignSlot(2, 90, 20).code() == absl::StatusCode::kInvalidArgument);
  CHECK(gpu->AssignSlot(3, 0, 1).code() == absl::StatusCode::kInvalidArgument);
  KvCache<float> cache(c, 2, 30);
  const std::vector<int32_t> prompt = {4, 77, 12, 250, 9, 31};
  std::vector<float> got(2 * V), ref(2 * V);
  REQUIRE(gpu->Extend({0}, {absl::MakeConstSpan(prompt)}, got.data()).ok());
  cpu->set_batch_invariant(true);
  REQUIRE(cpu->Extend(&cache, {0}, {absl::MakeConstSpan(prompt)}, ref.data()).ok());
  // Fork: slot 1 starts with slot 0's prompt; CopyPrefix beyond what slot 0 holds is refused.
  CHECK(gpu->CopyPrefix(0, 1, 7).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(gpu->CopyPrefix(0, 1, 6).ok());
  cache.CopyPrefix(0, 1, 6);
  CHECK(gpu->cache_length(1) == 6);
  // Both slots continue with different tokens; each must see the prompt's K/V.
  std::vector<int32_t> a = {100}, b = {200};
  double worst = 0;
  for (int step = 0; step < 4; ++step) {
    std::vector<absl::Span<const int32_t>> feeds = {a, b};
    REQUIRE(gpu->Extend({0, 1}, feeds, got.data()).ok());
    REQUIRE(cpu->Extend(&cache, {0, 1}, feeds, ref.data()).ok());
    worst = std::max(worst, NormErr("pooled decode logits step " + std::to_string(step), got, ref));
    a = {static_cast<int32_t>((a[0] + 7) % V)};
    b = {static_cast<int32_t>((b[0] + 11) % V)};
  }
  CHECK(worst < 1e-2);
  // Capacity: slot 1 holds 10 of 30 tokens; 21 more are refused, nothing is written.
  const std::vector<int32_t> many(21, 3);
  CHECK(gpu->Extend({1}, {absl::MakeConstSpan(many)}, nullptr).code() ==
        absl::StatusCode::kResourceExhausted);
  CHECK(gpu->cache_length(1) == 10);
  // An unassigned slot has no room.
  CHECK(gpu->Extend({2}, {absl::MakeConstSpan(a)}, nullptr).code() ==
        absl::StatusCode::kResourceExhausted);
}

TEST_CASE("cuda pooled KV cache: a prompt shared in place decodes as its copy does",
          "[cuda][gpu][rollout]") {
  CacheTwins t = MakeCacheTwins(4);
  const ModelConfig& c = t.c;
  CudaModel* gpu = t.gpu.get();
  auto& cpu = t.cpu;
  const int64_t V = c.vocab_size;
  // Slot 0 prefills the prompt; slot 1 gets a copy, slot 2 reads it in place and owns 10 rows.
  REQUIRE(gpu->AssignSlot(2, 40, 10).ok());
  const std::vector<int32_t> prompt = {4, 77, 12, 250, 9, 31};
  std::vector<float> got(3 * V), ref(V);
  REQUIRE(gpu->Extend({0}, {absl::MakeConstSpan(prompt)}, got.data()).ok());
  CHECK(gpu->SharePrefix(0, 2, 7).code() == absl::StatusCode::kInvalidArgument);
  CHECK(gpu->SharePrefix(0, 0, 6).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(gpu->CopyPrefix(0, 1, 6).ok());
  REQUIRE(gpu->SharePrefix(0, 2, 6).ok());
  CHECK(gpu->cache_length(2) == 6);
  CHECK(gpu->SharePrefix(0, 2, 6).code() == absl::StatusCode::kInvalidArgument);  // not empty
  CHECK(gpu->SharePrefix(2, 1, 3).code() == absl::StatusCode::kInvalidArgument);  // src shares
  CHECK(gpu->CopyPrefix(2, 1, 3).code() == absl::StatusCode::kInvalidArgument);
  // Slots 1 and 2 get the same tokens (slot 0 others, writing its own rows after the prompt):
  // their logits must agree, and match the CPU model's on prompt + tokens.
  KvCache<float> cache(c, 1, 30);
  cpu->set_batch_invariant(true);
  REQUIRE(cpu->Extend(&cache, {0}, {absl::MakeConstSpan(prompt)}, ref.data()).ok());
  std::vector<int32_t> a = {100}, b = {200};
  double worst_pair = 0, worst_cpu = 0;
  for (int step = 0; step < 4; ++step) {
    std::vector<absl::Span<const int32_t>> feeds = {a, b, b};
    REQUIRE(gpu->Extend({0, 1, 2}, feeds, got.data()).ok());
    REQUIRE(cpu->Extend(&cache, {0}, {absl::MakeConstSpan(b)}, ref.data()).ok());
    const std::vector<float> copy(got.begin() + V, got.begin() + 2 * V);
    const std::vector<float> shared(got.begin() + 2 * V, got.end());
    const std::string s = " step " + std::to_string(step);
    worst_pair = std::max(worst_pair, NormErr("shared vs copied prompt" + s, shared, copy));
    worst_cpu = std::max(worst_cpu, NormErr("shared prompt vs cpu" + s, shared, ref));
    a = {static_cast<int32_t>((a[0] + 7) % V)};
    b = {static_cast<int32_t>((b[0] + 11) % V)};
  }
  CHECK(worst_pair < 1e-6);
  CHECK(worst_cpu < 1e-2);
  // Capacity: 6 shared + 10 own; slot 2 holds 10, so 7 more are refused and 6 fit.
  const std::vector<int32_t> seven(7, 3), six(6, 3);
  CHECK(gpu->Extend({2}, {absl::MakeConstSpan(seven)}, nullptr).code() ==
        absl::StatusCode::kResourceExhausted);
  CHECK(gpu->cache_length(2) == 10);
  REQUIRE(gpu->Extend({2}, {absl::MakeConstSpan(six)}, nullptr).ok());
  CHECK(gpu->cache_length(2) == 16);
}

// Several rollout engines in one process (rollout.local_workers > 1 on cuda) drive one GPU from
// their own threads. The kernels' scratch (attention sequence tables, grouped-GEMM pointer arrays)
// is per host thread: shared, one thread could rewrite a table that the other's queued kernel has
// yet to read. Two models with different weights, slots and lengths decode at the same time and
// must give the logits each gives alone. Sequence tables differ between the two (2 slots of
// growing lengths against 1), so a shared table would be read with the wrong rows.
struct DecodeRun {
  std::unique_ptr<CudaModel> gpu;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<float>> logits;  // per step, (slots, V)

  // Returns the first error instead of asserting: Catch2 assertions are not thread-safe.
  absl::Status Run(int steps) {
    const int64_t n = static_cast<int64_t>(prompts.size());
    for (int64_t s = 0; s < n; ++s) gpu->ResetSlot(s);
    logits.clear();
    std::vector<int64_t> slots(n);
    for (int64_t s = 0; s < n; ++s) slots[s] = s;
    std::vector<std::vector<int32_t>> feeds = prompts;
    const int64_t V = gpu->config().vocab_size;
    for (int step = 0; step < steps; ++step) {
      std::vector<absl::Span<const int32_t>> spans(feeds.begin(), feeds.end());
      std::vector<float> out(n * V);
      RETURN_IF_ERROR(gpu->Extend(slots, spans, out.data()));
      for (int64_t s = 0; s < n; ++s) {
        feeds[s] = {static_cast<int32_t>((step * 31 + s * 7 + 5) % V)};
      }
      logits.push_back(std::move(out));
    }
    return absl::OkStatus();
  }
};

TEST_CASE("two cuda models decoding from two threads at once give what each gives alone",
          "[cuda][gpu][rollout]") {
  const ModelConfig c = MustParse(MidQwen3MoeJson());
  const ParamLayout layout = ParamLayout::Build(c);
  DecodeRun runs[2];
  for (int i = 0; i < 2; ++i) {
    auto gpu = CudaModel::Create(c, {.master_weights = false});
    REQUIRE(gpu.ok());
    runs[i].gpu = std::move(*gpu);
    REQUIRE(runs[i].gpu->SetParams(ScaledBf16Params(layout, 40 + i, 0.5f)).ok());
  }
  runs[0].prompts = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {250, 3}};
  runs[1].prompts = {{7, 7, 100, 42, 9}};
  const int kSteps = 40;
  REQUIRE(runs[0].gpu->InitCache(2, 64).ok());
  REQUIRE(runs[1].gpu->InitCache(1, 64).ok());
  std::vector<std::vector<float>> alone[2];
  for (int i = 0; i < 2; ++i) {
    REQUIRE(runs[i].Run(kSteps).ok());
    alone[i] = runs[i].logits;
  }
  for (int round = 0; round < 3; ++round) {
    absl::Status other_status;
    std::thread other([&] { other_status = runs[1].Run(kSteps); });
    const absl::Status status = runs[0].Run(kSteps);
    other.join();
    INFO(status.ToString() << " / " << other_status.ToString());
    REQUIRE(status.ok());
    REQUIRE(other_status.ok());
    for (int i = 0; i < 2; ++i) {
      double worst = 0;
      for (int step = 0; step < kSteps; ++step) {
        worst = std::max(worst,
                         NormErr("concurrent decode logits", runs[i].logits[step], alone[i][step]));
      }
      INFO("model " << i << ", round " << round);
      CHECK(worst < 1e-6);
    }
  }
}

TEST_CASE(
    "rollout engine on cuda: groups, device and host sampling, weight swap, deterministic refused",
    "[cuda][gpu][rollout]") {
  const ModelConfig c = MustParse(MidQwen3MoeJson());
  auto model = Model<float>::Create(c);
  REQUIRE(model.ok());
  const std::vector<float> w0 = ScaledBf16Params((*model)->layout(), 11, 0.2f);
  std::copy(w0.begin(), w0.end(), (*model)->params());
  EngineOptions options;
  options.device = Device::kCuda;
  options.kv_budget_bytes = int64_t{4} << 20;
  options.max_batch = 16;
  auto engine = Engine::Create(std::move(*model), nullptr, options);
  INFO(engine.status().ToString());
  REQUIRE(engine.ok());
  CHECK((*engine)->device() == Device::kCuda);

  const std::vector<RolloutPrompt> prompts = {
      {1, {5, 9, 100, 3, 250}}, {2, {1, 2, 3, 4, 5, 6, 7, 8, 9}}, {3, {42, 17}}};
  SamplingParams sp;
  sp.group_size = 4;
  sp.temperature = 1.0f;
  sp.max_new_tokens = 10;
  sp.seed = 7;
  auto groups = (*engine)->GenerateAll(prompts, sp);
  REQUIRE(groups.ok());
  auto cpu = CpuModel(c, w0);
  CheckAgainstCpu(*cpu, prompts, *groups, 0, 4, 10);  // sampled on the device (untruncated)
  // top_k = V truncates nothing but sends the rows to the host sampler; temperature 0 is greedy
  // on the device, reporting temperature-1 logprobs. Both must match the CPU forward too.
  SamplingParams host_sp = sp;
  host_sp.top_k = static_cast<int32_t>(c.vocab_size);
  auto host_groups = (*engine)->GenerateAll(prompts, host_sp);
  REQUIRE(host_groups.ok());
  CheckAgainstCpu(*cpu, prompts, *host_groups, 0, 4, 10);
  SamplingParams greedy = sp;
  greedy.temperature = 0;
  auto greedy_groups = (*engine)->GenerateAll(prompts, greedy);
  REQUIRE(greedy_groups.ok());
  CheckAgainstCpu(*cpu, prompts, *greedy_groups, 0, 4, 10);

  // deterministic needs batch-invariant kernels: refused, naming the way out.
  SamplingParams det = sp;
  det.deterministic = true;
  auto refused = (*engine)->Submit(prompts, det);
  REQUIRE(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(refused.status().message()).find("--device cpu") != std::string::npos);

  // A weight update: later completions report version 1 and match the new weights.
  std::vector<float> w1 = w0;
  for (float& x : w1) x *= 0.75f;
  w1 = RoundBf16(w1);
  REQUIRE((*engine)->StageWeights(1, w1).ok());
  auto after = (*engine)->GenerateAll(prompts, sp);
  REQUIRE(after.ok());
  auto cpu1 = CpuModel(c, w1);
  CheckAgainstCpu(*cpu1, prompts, *after, 1, 4, 10);
  CHECK((*engine)->GetStatus().weight_version == 1);

  // weight_sync.transport "ipc": version 2 copied device to device from a learner-like
  // CudaModel (no fp32 masters, like DeviceModel's). The engine must then generate what the CPU
  // model with those weights gives, and keep doing so after the source changes (the copy is the
  // engine's own once WaitApplied returns).
  std::vector<float> w2 = w0;
  for (float& x : w2) x *= 1.25f;
  w2 = RoundBf16(w2);
  auto source = CudaModel::Create(c, {.master_weights = false});
  REQUIRE(source.ok());
  REQUIRE((*source)->SetParams(w2).ok());
  CHECK((*engine)->StageDeviceWeights(1, source->get()).code() ==
        absl::StatusCode::kFailedPrecondition);  // not newer than the serving version
  REQUIRE((*engine)->StageDeviceWeights(2, source->get()).ok());
  REQUIRE((*engine)->WaitApplied(2, absl::Now() + absl::Seconds(60)).ok());
  REQUIRE((*source)->SetParams(w0).ok());  // the learner's next upload: must not reach the engine
  auto via_device = (*engine)->GenerateAll(prompts, sp);
  REQUIRE(via_device.ok());
  auto cpu2 = CpuModel(c, w2);
  CheckAgainstCpu(*cpu2, prompts, *via_device, 2, 4, 10);
  CHECK((*engine)->GetStatus().weight_version == 2);

  // The same to a rollout server (weight_sync.transport "ipc" to grpo train's rollout service on
  // the learner's GPU): version 3 as CUDA IPC handles over loopback gRPC (UpdateWeightsIpc). In
  // one process the handles resolve to the learner's own pointers, so this covers the protocol,
  // the staging and the copy; cudaIpcOpenMemHandle itself is comm_test's.
  std::vector<float> w3 = w0;
  for (float& x : w3) x *= 0.5f;
  w3 = RoundBf16(w3);
  REQUIRE((*source)->SetParams(w3).ok());
  RolloutServiceImpl service(engine->get());
  int port = 0;
  auto server = StartRolloutServer(&service, "127.0.0.1", 0, &port);
  REQUIRE(server.ok());
  auto remote = RemoteRolloutWorker::Connect(absl::StrCat("127.0.0.1:", port), absl::Seconds(60));
  REQUIRE(remote.ok());
  CHECK((*remote)->PushDeviceWeights(**source, 2, absl::Now() + absl::Seconds(60)).code() ==
        absl::StatusCode::kFailedPrecondition);  // not newer than the serving version
  const absl::Status pushed =
      (*remote)->PushDeviceWeights(**source, 3, absl::Now() + absl::Seconds(60));
  INFO(pushed.message());
  REQUIRE(pushed.ok());
  CHECK((*remote)->last_push_bytes() == (*source)->WeightDeviceBytes());
  REQUIRE((*source)->SetParams(w0).ok());  // after the push returned: must not reach the engine
  auto via_ipc = (*engine)->GenerateAll(prompts, sp);
  REQUIRE(via_ipc.ok());
  auto cpu3 = CpuModel(c, w3);
  CheckAgainstCpu(*cpu3, prompts, *via_ipc, 3, 4, 10);
  CHECK((*engine)->GetStatus().weight_version == 3);
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace grpo
