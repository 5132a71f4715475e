// RolloutService over loopback gRPC with RolloutClient: several concurrent clients, weight
// updates (good, corrupt, interrupted, stale, wrong layout), status, and WeightAssembler alone.
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <thread>

#include "comm/cuda_ipc.h"
#include "model/cuda_model.h"
#include "proto/rollout.grpc.pb.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_service.h"
#include "rollout/weight_sync.h"
#include "rollout/weights.h"
#include "tests/rollout/rollout_test_util.h"

namespace grpo {
namespace {

using testing::MakeEngine;
using testing::MakeModel;
using testing::MustParse;
using testing::RandomTokens;

struct Loopback {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<RolloutServiceImpl> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  Loopback(const ModelConfig& c, uint64_t seed, EngineOptions options = {}) {
    engine = MakeEngine(c, seed, options);
    service = std::make_unique<RolloutServiceImpl>(engine.get());
    int port = 0;
    auto s = StartRolloutServer(service.get(), "127.0.0.1", 0, &port);
    if (!s.ok()) throw std::runtime_error(std::string(s.status().message()));
    server = std::move(*s);
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Loopback() {
    engine->Shutdown();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
};

absl::Time Soon() { return absl::Now() + absl::Seconds(60); }

TEST_CASE("CRC32C matches the standard check value", "[rollout][weights]") {
  const char* s = "123456789";
  CHECK(Crc32c(s, 9) == 0xE3069283u);
  CHECK(Crc32c(s + 4, 5, Crc32c(s, 4)) == 0xE3069283u);  // continued
  CHECK(Crc32c(s, 0) == 0u);
}

TEST_CASE("CRC32C's three-lane loop equals the bytewise definition at every size and alignment",
          "[rollout][weights]") {
  // The bytewise, table-free definition (reflected polynomial 0x82F63B78).
  auto reference = [](const unsigned char* p, size_t n, uint32_t crc) {
    uint32_t c = ~crc;
    for (size_t i = 0; i < n; ++i) {
      c ^= p[i];
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
  };
  constexpr size_t kLane = 16384;  // rollout/weights.cc: lanes of 16 KiB, blocks of 48 KiB
  std::vector<unsigned char> buf(6 * kLane + 64);
  std::mt19937_64 rng(3);
  for (auto& x : buf) x = static_cast<unsigned char>(rng());
  for (const size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, 3 * kLane - 1, 3 * kLane,
                         3 * kLane + 1, 3 * kLane + 9, 6 * kLane, 6 * kLane + 13}) {
    for (size_t off = 0; off < 8; ++off) {
      for (const uint32_t init : {0u, 0x9E3779B9u}) {
        INFO("size " << n << ", offset " << off << ", init " << init);
        CHECK(Crc32c(buf.data() + off, n, init) == reference(buf.data() + off, n, init));
      }
    }
  }
  // Continuing across a block boundary equals one pass.
  CHECK(Crc32c(buf.data() + 5000, 6 * kLane - 5000, Crc32c(buf.data(), 5000)) ==
        Crc32c(buf.data(), 6 * kLane));
}

TEST_CASE("several clients generate over loopback at once", "[rollout][service]") {
  const ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  EngineOptions opt;
  opt.max_batch = 3;  // one group of 3 at a time: the cancellation check below can see a stop
  Loopback lb(c, 20, opt);
  auto expected_engine = MakeEngine(c, 20);
  constexpr int kClients = 4;
  std::vector<std::vector<GroupResult>> got(kClients);
  std::vector<absl::Status> status(kClients);
  std::vector<std::vector<RolloutPrompt>> prompts(kClients);
  SamplingParams sp;
  sp.group_size = 3;
  sp.max_new_tokens = 10;
  sp.seed = 77;
  sp.return_routing = true;
  for (int k = 0; k < kClients; ++k) {
    for (int i = 0; i < 3; ++i) {
      prompts[k].push_back(
          {static_cast<uint64_t>(k * 10 + i), RandomTokens(3 + i + k, c.vocab_size, k * 10 + i)});
    }
  }
  std::vector<std::thread> threads;
  for (int k = 0; k < kClients; ++k) {
    threads.emplace_back([&, k] {
      auto client = RolloutClient::Connect(lb.address);
      if (!client.ok()) {
        status[k] = client.status();
        return;
      }
      status[k] = (*client)->Generate(prompts[k], sp, Soon(), [&](GroupResult&& g) {
        got[k].push_back(std::move(g));
        return absl::OkStatus();
      });
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < kClients; ++k) {
    INFO("client " << k);
    REQUIRE(status[k].ok());
    REQUIRE(got[k].size() == 3);
    auto expected = expected_engine->GenerateAll(prompts[k], sp);
    REQUIRE(expected.ok());
    for (const GroupResult& g : got[k]) {
      const GroupResult& e = (*expected)[g.prompt_index];
      CHECK(g.prompt_id == e.prompt_id);
      REQUIRE(g.completions.size() == 3);
      for (int s = 0; s < 3; ++s) {
        CHECK(g.completions[s].token_ids == e.completions[s].token_ids);
        CHECK(g.completions[s].logprobs == e.completions[s].logprobs);
        CHECK(g.completions[s].routing.expert_ids == e.completions[s].routing.expert_ids);
        CHECK(g.completions[s].finish_reason == e.completions[s].finish_reason);
      }
    }
  }
  // Bad input keeps its code and names the field through the wire.
  auto client = RolloutClient::Connect(lb.address);
  REQUIRE(client.ok());
  SamplingParams bad = sp;
  bad.group_size = 0;
  absl::Status s =
      (*client)->Generate(prompts[0], bad, Soon(), [](GroupResult&&) { return absl::OkStatus(); });
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("group_size"));
  // A callback error cancels the call and is returned.
  SamplingParams long_sp = sp;
  long_sp.max_new_tokens = 40;
  std::vector<RolloutPrompt> many;
  // Many groups, run one at a time (max_batch 3), so that the few the server may finish before
  // it sees the cancellation stay far below half of them even on a loaded machine (with 12, a
  // CI run once finished 6).
  for (int i = 0; i < 48; ++i)
    many.push_back({static_cast<uint64_t>(i), RandomTokens(4, c.vocab_size, 90 + i)});
  const int64_t tokens_before = lb.engine->GetStatus().total_tokens;
  s = (*client)->Generate(many, long_sp, Soon(),
                          [](GroupResult&&) { return absl::AbortedError("enough"); });
  CHECK(s.code() == absl::StatusCode::kAborted);
  // The server noticed the client went away and dropped the request's sequences.
  RolloutStatus st;
  for (int i = 0; i < 500; ++i) {
    st = lb.engine->GetStatus();
    if (st.running_sequences == 0 && st.queued_sequences == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(st.running_sequences == 0);
  CHECK(st.queued_sequences == 0);
  CHECK(st.kv_bytes_used == 0);
  // 48 groups x 3 x 40 tokens were asked for; the server stopped well before.
  CHECK(st.total_tokens - tokens_before < 48 * 3 * 40 / 2);
  // A dead address is UNAVAILABLE (or DEADLINE_EXCEEDED), for the learner to re-issue elsewhere.
  auto dead = RolloutClient::Connect("127.0.0.1:1");
  REQUIRE(dead.ok());
  s = (*dead)->Generate(prompts[0], sp, absl::Now() + absl::Seconds(2),
                        [](GroupResult&&) { return absl::OkStatus(); });
  CHECK((s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded));
}

// Sends chunks through the raw stub, for streams RolloutClient would never send.
grpc::Status SendChunks(const std::string& address, const std::vector<rollout::WeightChunk>& chunks,
                        bool cancel_midway = false) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = rollout::RolloutService::NewStub(channel);
  grpc::ClientContext ctx;
  rollout::UpdateWeightsResponse response;
  auto writer = stub->UpdateWeights(&ctx, &response);
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (cancel_midway && i == chunks.size() / 2) {
      ctx.TryCancel();
      break;
    }
    if (!writer->Write(chunks[i])) break;
  }
  if (!cancel_midway) writer->WritesDone();
  return writer->Finish();
}

std::vector<rollout::WeightChunk> MakeChunks(uint64_t version, const ParamLayout& layout,
                                             const std::vector<float>& params, int64_t chunk_bytes,
                                             const std::string& dtype = "f32") {
  std::vector<rollout::WeightChunk> chunks;
  std::vector<uint16_t> half(params.size());
  FloatsToBf16(params.data(), static_cast<int64_t>(params.size()), half.data());
  const bool bf16 = dtype == "bf16";
  const char* bytes = bf16 ? reinterpret_cast<const char*>(half.data())
                           : reinterpret_cast<const char*>(params.data());
  const int64_t total = static_cast<int64_t>(params.size() * (bf16 ? 2 : 4));
  for (int64_t off = 0; off < total; off += chunk_bytes) {
    const int64_t n = std::min(chunk_bytes, total - off);
    rollout::WeightChunk ch;
    ch.set_version(version);
    ch.set_dtype(dtype);
    ch.set_num_params(params.size());
    ch.set_layout_fingerprint(LayoutFingerprint(layout));
    ch.set_total_bytes(total);
    ch.set_payload_crc32c(Crc32c(bytes, total));
    ch.set_offset(off);
    ch.set_data(bytes + off, n);
    ch.set_crc32c(Crc32c(bytes + off, n));
    chunks.push_back(std::move(ch));
  }
  return chunks;
}

TEST_CASE("weight updates: only a complete verified stream is applied",
          "[rollout][service][weights]") {
  const ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  EngineOptions opt;
  opt.initial_version = 5;
  Loopback lb(c, 30, opt);
  auto client = RolloutClient::Connect(lb.address);
  REQUIRE(client.ok());
  auto new_model = MakeModel<float>(c, 31);
  const ParamLayout& layout = new_model->layout();
  const std::vector<float> params(new_model->params(),
                                  new_model->params() + new_model->num_params());
  SamplingParams sp;
  sp.group_size = 2;
  sp.max_new_tokens = 8;
  sp.seed = 3;
  const std::vector<RolloutPrompt> prompts = {{0, RandomTokens(5, c.vocab_size, 1)}};
  auto generate = [&]() {
    std::vector<GroupResult> out;
    REQUIRE((*client)
                ->Generate(prompts, sp, Soon(),
                           [&](GroupResult&& g) {
                             out.push_back(std::move(g));
                             return absl::OkStatus();
                           })
                .ok());
    return out;
  };
  const std::vector<GroupResult> before = generate();
  CHECK(before[0].completions[0].weight_version == 5);
  const int64_t chunk = 4000;  // several chunks, the last one short
  auto version_now = [&]() {
    auto st = (*client)->GetStatus(Soon());
    REQUIRE(st.ok());
    return st->weight_version;
  };

  SECTION("corrupt chunk") {
    auto chunks = MakeChunks(6, layout, params, chunk);
    chunks[2].mutable_data()->at(7) ^= 1;
    grpc::Status s = SendChunks(lb.address, chunks);
    CHECK(s.error_code() == grpc::StatusCode::DATA_LOSS);
  }
  SECTION("wrong payload checksum") {
    auto chunks = MakeChunks(6, layout, params, chunk);
    for (auto& ch : chunks) ch.set_payload_crc32c(ch.payload_crc32c() ^ 1);
    CHECK(SendChunks(lb.address, chunks).error_code() == grpc::StatusCode::DATA_LOSS);
  }
  SECTION("stream ends early") {
    auto chunks = MakeChunks(6, layout, params, chunk);
    chunks.pop_back();
    CHECK(SendChunks(lb.address, chunks).error_code() == grpc::StatusCode::ABORTED);
  }
  SECTION("stream cancelled midway") {
    auto chunks = MakeChunks(6, layout, params, chunk);
    CHECK(SendChunks(lb.address, chunks, true).error_code() == grpc::StatusCode::CANCELLED);
  }
  SECTION("gap between chunks") {
    auto chunks = MakeChunks(6, layout, params, chunk);
    chunks.erase(chunks.begin() + 1);
    CHECK(SendChunks(lb.address, chunks).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
  SECTION("stale version") {
    absl::Status s = (*client)->PushWeights(5, layout, params, Soon(), chunk);
    CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  }
  SECTION("another model's layout") {
    const ModelConfig other = MustParse(testing::TinyQwen2MoeJson());
    auto m = MakeModel<float>(other, 1);
    absl::Status s = (*client)->PushWeights(
        6, m->layout(), absl::MakeConstSpan(m->params(), m->num_params()), Soon(), chunk);
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  }
  // None of the above changed what is served.
  CHECK(version_now() == 5);
  const std::vector<GroupResult> still = generate();
  CHECK(still[0].completions[0].token_ids == before[0].completions[0].token_ids);
  CHECK(still[0].completions[0].weight_version == 5);

  // A good update is served by every later request.
  REQUIRE((*client)->PushWeights(6, layout, params, Soon(), chunk).ok());
  const std::vector<GroupResult> after = generate();
  CHECK(after[0].completions[0].weight_version == 6);
  CHECK(after[0].completions[1].weight_version == 6);
  auto expected_engine = MakeEngine(c, 31);
  auto expected = expected_engine->GenerateAll(prompts, sp);
  REQUIRE(expected.ok());
  CHECK(after[0].completions[0].token_ids == (*expected)[0].completions[0].token_ids);
  CHECK(after[0].completions[0].logprobs == (*expected)[0].completions[0].logprobs);
  auto st = (*client)->GetStatus(Soon());
  REQUIRE(st.ok());
  CHECK(st->weight_version == 6);
  {
    // fp32 weights went as f32; bf16-valued ones go as bf16 (half the bytes) and are served as
    // exactly those floats: the same completions as an engine built on them.
    int64_t sent = 0;
    REQUIRE((*client)->PushWeights(7, layout, params, Soon(), chunk, &sent).ok());
    CHECK(sent == static_cast<int64_t>(params.size()) * 4);
    std::vector<float> half = params;
    std::vector<uint16_t> bits(half.size());
    FloatsToBf16(half.data(), static_cast<int64_t>(half.size()), bits.data());
    Bf16ToFloats(bits.data(), static_cast<int64_t>(half.size()), half.data());
    REQUIRE(half != params);
    REQUIRE((*client)->PushWeights(8, layout, half, Soon(), chunk, &sent).ok());
    CHECK(sent == static_cast<int64_t>(params.size()) * 2);
    const std::vector<GroupResult> on_bf16 = generate();
    CHECK(on_bf16[0].completions[0].weight_version == 8);
    auto rounded = MakeModel<float>(c, 31);
    std::copy(half.begin(), half.end(), rounded->params());
    EngineOptions eo;
    eo.kv_budget_bytes = int64_t{4} << 20;
    auto ref = Engine::Create(std::move(rounded), nullptr, eo);
    REQUIRE(ref.ok());
    auto want = (*ref)->GenerateAll(prompts, sp);
    REQUIRE(want.ok());
    CHECK(on_bf16[0].completions[0].token_ids == (*want)[0].completions[0].token_ids);
    CHECK(on_bf16[0].completions[0].logprobs == (*want)[0].completions[0].logprobs);
    CHECK(on_bf16[0].completions[0].logprobs != after[0].completions[0].logprobs);
    (*ref)->Shutdown();
  }
  CHECK(st->num_params == new_model->num_params());
  CHECK(st->layout_fingerprint == LayoutFingerprint(layout));
  CHECK(st->model_type == "qwen3_moe");
}

// UpdateWeightsIpc (weight_sync.transport "ipc" to a server on the learner's machine): every
// refusal the server can give without a GPU, each naming what is wrong, and the weights untouched.
// The device copy itself: tests/gpu/rollout_cuda_test.cc.
TEST_CASE("UpdateWeightsIpc refuses what it cannot take and keeps serving",
          "[rollout][service][weights]") {
  const ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  EngineOptions opt;
  opt.initial_version = 2;
  Loopback lb(c, 32, opt);
  auto client = RolloutClient::Connect(lb.address);
  REQUIRE(client.ok());
  rollout::IpcWeightUpdate ok;
  ok.set_version(3);
  ok.set_num_params(static_cast<uint64_t>(lb.engine->num_params()));
  ok.set_layout_fingerprint(lb.engine->layout_fingerprint());
  ok.set_bf16_handle("not a handle");
  ok.set_f32_handle("not a handle");
  ok.set_machine_id(comm::MachineId());
  ok.set_timeout_s(30);
  auto refuses = [&](const rollout::IpcWeightUpdate& r, absl::StatusCode code,
                     const std::string& says) {
    auto got = (*client)->UpdateWeightsIpc(r, Soon());
    REQUIRE_FALSE(got.ok());
    INFO(got.status().message());
    CHECK(got.status().code() == code);
    CHECK(std::string(got.status().message()).find(says) != std::string::npos);
  };
  rollout::IpcWeightUpdate r = ok;
  r.set_machine_id("boot:some-other-machine");
  refuses(r, absl::StatusCode::kFailedPrecondition, "another machine");
  r = ok;
  r.set_num_params(r.num_params() + 1);
  refuses(r, absl::StatusCode::kInvalidArgument, "another model");
  r = ok;
  r.set_layout_fingerprint(r.layout_fingerprint() ^ 1);
  refuses(r, absl::StatusCode::kInvalidArgument, "another model");
  r = ok;
  r.set_timeout_s(0);
  refuses(r, absl::StatusCode::kInvalidArgument, "timeout_s");
  // Everything in order, but this engine is on the CPU: the learner's cue to use UpdateWeights.
  refuses(ok, absl::StatusCode::kFailedPrecondition, "runs on the CPU");
  auto st = (*client)->GetStatus(Soon());
  REQUIRE(st.ok());
  CHECK(st->weight_version == 2);
  CHECK(st->staged_version == 0);
}

// The size check UpdateWeightsIpc applies to imported buffers before staging them (a wrong size
// would otherwise surface as a device fault at the swap), on the host in any build.
TEST_CASE("CudaModel::CheckWeightBuffers wants the sizes the model config gives",
          "[rollout][weights]") {
  const ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  const ParamLayout layout = ParamLayout::Build(c);
  size_t norms = 0;
  for (const ParamTensor& t : layout.tensors) {
    if (t.is_norm || t.is_bias) norms += static_cast<size_t>(t.numel);
  }
  REQUIRE(norms > 0);
  const char dummy[2] = {};
  CudaModel::WeightBuffers b{dummy, 2 * static_cast<size_t>(layout.total), dummy + 1, 4 * norms,
                             false};
  CHECK(CudaModel::CheckWeightBuffers(layout, b).ok());
  b.master = true;  // a master copy holds every parameter
  CHECK(CudaModel::CheckWeightBuffers(layout, b).code() == absl::StatusCode::kInvalidArgument);
  b.f32_bytes = 4 * static_cast<size_t>(layout.total);
  CHECK(CudaModel::CheckWeightBuffers(layout, b).ok());
  b.bf16_bytes -= 2;
  const absl::Status short_bf16 = CudaModel::CheckWeightBuffers(layout, b);
  CHECK(short_bf16.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(short_bf16.message()).find("another model config") != std::string::npos);
  b.bf16_bytes += 2;
  b.f32 = nullptr;
  CHECK(CudaModel::CheckWeightBuffers(layout, b).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("WeightAssembler names what is wrong", "[rollout][weights]") {
  const ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto m = MakeModel<float>(c, 1);
  const std::vector<float> params(m->params(), m->params() + m->num_params());
  const uint64_t fp = LayoutFingerprint(m->layout());
  auto chunks = MakeChunks(3, m->layout(), params, 1024);
  {
    WeightAssembler a(m->num_params(), fp, 2);
    for (const auto& ch : chunks) REQUIRE(a.Add(ch).ok());
    uint64_t v = 0;
    auto p = a.Finish(&v);
    REQUIRE(p.ok());
    CHECK(v == 3);
    CHECK(*p == params);
  }
  {
    // bf16, in chunks of an odd size that split elements: widened to exactly the bf16 values.
    std::vector<float> half(params.size());
    std::vector<uint16_t> bits(params.size());
    FloatsToBf16(params.data(), static_cast<int64_t>(params.size()), bits.data());
    Bf16ToFloats(bits.data(), static_cast<int64_t>(params.size()), half.data());
    WeightAssembler a(m->num_params(), fp, 2);
    for (const auto& ch : MakeChunks(3, m->layout(), half, 1023, "bf16")) REQUIRE(a.Add(ch).ok());
    CHECK(a.bytes_received() == m->num_params() * 2);
    uint64_t v = 0;
    auto p = a.Finish(&v);
    REQUIRE(p.ok());
    CHECK(*p == half);
  }
  {
    // Into a reused buffer (the engine's spare) of garbage, of the wrong size, in f32 and bf16:
    // the result is the stream's, every element overwritten.
    for (const size_t reuse_size : {params.size(), params.size() / 2, params.size() * 2}) {
      for (const char* dtype : {"f32", "bf16"}) {
        INFO("reused buffer of " << reuse_size << " floats, " << dtype);
        std::vector<float> want = params;
        if (std::string(dtype) == "bf16") {
          std::vector<uint16_t> bits(params.size());
          FloatsToBf16(params.data(), static_cast<int64_t>(params.size()), bits.data());
          Bf16ToFloats(bits.data(), static_cast<int64_t>(params.size()), want.data());
        }
        WeightAssembler a(m->num_params(), fp, 2);
        a.Reuse(std::vector<float>(reuse_size, std::nanf("")));
        for (const auto& ch : MakeChunks(3, m->layout(), want, 1000, dtype)) {
          REQUIRE(a.Add(ch).ok());
        }
        uint64_t v = 0;
        auto p = a.Finish(&v);
        REQUIRE(p.ok());
        CHECK(*p == want);
      }
    }
  }
  {
    WeightAssembler a(m->num_params(), fp, 2);
    auto bad = chunks;
    bad[1].set_version(4);
    REQUIRE(a.Add(bad[0]).ok());
    CHECK_THAT(std::string(a.Add(bad[1]).message()),
               Catch::Contains("differ from the first chunk"));
  }
  {
    WeightAssembler a(m->num_params() + 1, fp, 2);
    CHECK_THAT(std::string(a.Add(chunks[0]).message()), Catch::Contains("num_params"));
  }
  {
    WeightAssembler a(m->num_params(), fp, 2);
    auto bad = chunks;
    bad[0].set_dtype("f16");
    CHECK_THAT(std::string(a.Add(bad[0]).message()), Catch::Contains("dtype \"f16\""));
  }
  {
    // bf16 announced with an f32-sized payload.
    WeightAssembler a(m->num_params(), fp, 2);
    auto bad = chunks;
    bad[0].set_dtype("bf16");
    CHECK_THAT(std::string(a.Add(bad[0]).message()), Catch::Contains("num_params * 2"));
  }
  {
    WeightAssembler a(m->num_params(), fp, 2);
    uint64_t v = 0;
    CHECK(a.Finish(&v).status().code() == absl::StatusCode::kAborted);
  }
}

}  // namespace
}  // namespace grpo
