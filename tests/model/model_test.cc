// Model behaviour: KV-cache decode equals the full forward, causality, routing record / replay,
// float vs double agreement, input validation, generation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/ops.h"
#include "model/generate.h"
#include "rollout/weight_sync.h"
#include "tests/model/tiny_models.h"

namespace grpo {
namespace {

using testing::MakeModel;
using testing::MustParse;
using testing::RandomBatch;

double LogSoftmaxAt(const float* logits, int64_t V, int32_t target) {
  double mx = logits[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max<double>(mx, logits[v]);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(logits[v] - mx);
  return logits[target] - mx - std::log(s);
}

TEST_CASE("KV-cache decode gives the full forward's next-token logprobs", "[model][decode]") {
  for (const auto& j : {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson(),
                        testing::TinyLlamaJson(), testing::TinyQwen2Json()}) {
    ModelConfig c = MustParse(j);
    INFO(c.model_type);
    auto model = MakeModel<float>(c, 21);
    TokenBatch batch = RandomBatch({7, 12, 3}, c.vocab_size, 22);
    ForwardResult<float> full;
    REQUIRE(model->Forward(batch, ForwardOptions{}, &full).ok());

    // Prefill different prompt lengths per slot, then decode one token at a time, all slots
    // together, checking every next-token logprob against the full forward.
    const std::vector<int64_t> prompt = {3, 1, 2};
    KvCache<float> cache(c, 3, 16);
    std::vector<int64_t> slots = {0, 1, 2};
    std::vector<absl::Span<const int32_t>> feed;
    for (int b = 0; b < 3; ++b) feed.push_back({batch.tokens.data() + batch.offsets[b], size_t(prompt[b])});
    std::vector<float> logits(3 * c.vocab_size);
    std::vector<int64_t> done = prompt;
    double worst = 0;
    int compared = 0;
    while (!slots.empty()) {
      REQUIRE(model->Extend(&cache, slots, feed, logits.data()).ok());
      std::vector<int64_t> next_slots;
      std::vector<absl::Span<const int32_t>> next_feed;
      for (size_t j2 = 0; j2 < slots.size(); ++j2) {
        const int64_t b = slots[j2], len = batch.offsets[b + 1] - batch.offsets[b];
        const int64_t p = batch.offsets[b] + done[b] - 1;  // position whose next token we predict
        if (done[b] < len) {
          const double lp = LogSoftmaxAt(logits.data() + j2 * c.vocab_size, c.vocab_size,
                                         batch.tokens[p + 1]);
          worst = std::max(worst, std::abs(lp - full.logprobs[p]));
          ++compared;
          next_slots.push_back(b);
          next_feed.push_back({batch.tokens.data() + p + 1, 1});
          ++done[b];
        }
      }
      slots = next_slots;
      feed = next_feed;
    }
    CHECK(compared == (7 - 3) + (12 - 1) + (3 - 2));
    // fp32: different GEMM shapes round differently; logprobs are O(1), 1e-5 is ~100 ulp.
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("later tokens never change earlier logprobs", "[model][causal]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<double>(c, 31);
  TokenBatch a = RandomBatch({10, 8}, c.vocab_size, 32);
  TokenBatch b = a;
  b.tokens[6] = (b.tokens[6] + 5) % c.vocab_size;  // change token 6 of sequence 0
  b.tokens[12] = (b.tokens[12] + 3) % c.vocab_size;  // and token 2 of sequence 1
  ForwardResult<double> ra, rb;
  REQUIRE(model->Forward(a, ForwardOptions{}, &ra).ok());
  REQUIRE(model->Forward(b, ForwardOptions{}, &rb).ok());
  // Positions 0..4 of seq 0 predict tokens 1..5 and see only tokens 0..4: unchanged.
  for (int p = 0; p < 5; ++p) CHECK(std::abs(ra.logprobs[p] - rb.logprobs[p]) < 1e-12);
  for (int p = 10; p < 11; ++p) CHECK(std::abs(ra.logprobs[p] - rb.logprobs[p]) < 1e-12);
  // Position 5 predicts the changed token: its logprob must change (the test can fail).
  CHECK(std::abs(ra.logprobs[5] - rb.logprobs[5]) > 1e-6);
  CHECK(std::abs(ra.logprobs[8] - rb.logprobs[8]) > 1e-9);  // sees the changed token
}

TEST_CASE("float and double models agree", "[model]") {
  ModelConfig c = MustParse(testing::TinyQwen2MoeJson());
  auto mf = MakeModel<float>(c, 41);
  auto md = MakeModel<double>(c, 41);
  TokenBatch batch = RandomBatch({9, 4}, c.vocab_size, 42);
  ForwardResult<float> rf;
  ForwardResult<double> rd;
  ForwardOptions opt;
  opt.record_routing = true;
  REQUIRE(mf->Forward(batch, opt, &rf).ok());
  REQUIRE(md->Forward(batch, opt, &rd).ok());
  CHECK(rf.routing == rd.routing);
  for (size_t t = 0; t < rf.logprobs.size(); ++t) {
    CHECK(std::abs(rf.logprobs[t] - rd.logprobs[t]) < 1e-5);
    CHECK(std::abs(rf.entropy[t] - rd.entropy[t]) < 1e-5);
  }
}

TEST_CASE("routing record and replay", "[model][routing]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<double>(c, 51);
  TokenBatch batch = RandomBatch({8, 5}, c.vocab_size, 52);
  const int64_t T = batch.num_tokens(), K = c.num_experts_per_tok;
  ForwardOptions rec;
  rec.record_routing = true;
  ForwardResult<double> r0;
  REQUIRE(model->Forward(batch, rec, &r0).ok());
  REQUIRE(r0.routing.size() == size_t(c.NumMoeLayers() * T * K));
  for (int32_t e : r0.routing) CHECK((e >= 0 && e < c.num_experts));

  // Replaying the recorded routing reproduces the forward exactly.
  ForwardOptions rep = rec;
  rep.replay_routing = r0.routing;
  ForwardResult<double> r1;
  REQUIRE(model->Forward(batch, rep, &r1).ok());
  CHECK(r1.routing == r0.routing);
  for (int64_t t = 0; t < T; ++t) CHECK(r1.logprobs[t] == r0.logprobs[t]);

  // Replaying other experts changes the output and is reported back as the routing used.
  std::vector<int32_t> other = r0.routing;
  for (auto& e : other) e = static_cast<int32_t>((e + 2) % c.num_experts);
  rep.replay_routing = other;
  ForwardResult<double> r2;
  REQUIRE(model->Forward(batch, rep, &r2).ok());
  CHECK(r2.routing == other);
  double diff = 0;
  for (int64_t t = 0; t < T; ++t) diff += std::abs(r2.logprobs[t] - r0.logprobs[t]);
  CHECK(diff > 1e-3);

  // Bad replay input: wrong size, out-of-range id, duplicate id in one token's top-k.
  std::vector<int32_t> short_ids(other.begin(), other.end() - 1);
  rep.replay_routing = short_ids;
  CHECK(model->Forward(batch, rep, &r2).code() == absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> bad = r0.routing;
  bad[3] = static_cast<int32_t>(c.num_experts);
  rep.replay_routing = bad;
  CHECK(model->Forward(batch, rep, &r2).code() == absl::StatusCode::kInvalidArgument);
  bad = r0.routing;
  bad[1] = bad[0];
  rep.replay_routing = bad;
  CHECK(model->Forward(batch, rep, &r2).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Extend records the same routing as the full forward", "[model][routing][decode]") {
  ModelConfig c = MustParse(testing::TinyQwen2MoeJson());
  auto model = MakeModel<double>(c, 55);
  TokenBatch batch = RandomBatch({6}, c.vocab_size, 56);
  ForwardOptions rec;
  rec.record_routing = true;
  ForwardResult<double> full;
  REQUIRE(model->Forward(batch, rec, &full).ok());
  KvCache<double> cache(c, 1, 8);
  std::vector<double> logits(c.vocab_size);
  std::vector<int32_t> routing;
  std::vector<int64_t> slots = {0};
  std::vector<absl::Span<const int32_t>> feed = {batch.tokens};
  REQUIRE(model->Extend(&cache, slots, feed, logits.data(), &routing).ok());
  CHECK(routing == full.routing);
}

TEST_CASE("bad inputs are errors, not crashes", "[model]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 61);
  ForwardResult<float> r;
  TokenBatch empty;
  CHECK(model->Forward(empty, ForwardOptions{}, &r).code() == absl::StatusCode::kInvalidArgument);
  TokenBatch oov;
  oov.Add(std::vector<int32_t>{1, 2, int32_t(c.vocab_size)});
  absl::Status s = model->Forward(oov, ForwardOptions{}, &r);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find("outside the vocabulary") != std::string::npos);
  TokenBatch too_long = RandomBatch({int(c.max_position_embeddings) + 1}, c.vocab_size, 1);
  CHECK(model->Forward(too_long, ForwardOptions{}, &r).code() == absl::StatusCode::kInvalidArgument);
  // Backward without a for_backward forward.
  std::vector<float> d(3, 0.f);
  CHECK(model->Backward(d, {}).code() == absl::StatusCode::kFailedPrecondition);
  // KV cache overflow.
  KvCache<float> cache(c, 1, 4);
  std::vector<float> logits(c.vocab_size);
  std::vector<int32_t> five = {1, 2, 3, 4, 5};
  std::vector<int64_t> slots = {0};
  std::vector<absl::Span<const int32_t>> feed = {five};
  CHECK(model->Extend(&cache, slots, feed, logits.data()).code() ==
        absl::StatusCode::kResourceExhausted);
  // A cache made for another config is refused, not written out of bounds.
  KvCache<float> other(MustParse(testing::TinyLlamaJson()), 1, 8);
  std::vector<absl::Span<const int32_t>> one = {absl::MakeConstSpan(five).subspan(0, 1)};
  CHECK(model->Extend(&other, slots, one, logits.data()).code() == absl::StatusCode::kInvalidArgument);
  // Errors name the sequence and the position within it.
  TokenBatch two;
  two.Add(std::vector<int32_t>{1, 2});
  two.Add(std::vector<int32_t>{3, -4});
  absl::Status named = model->Forward(two, ForwardOptions{}, &r);
  CHECK(std::string(named.message()).find("sequence 1: token -4 at position 1") != std::string::npos);
}

TEST_CASE("generation: greedy matches argmax of the full forward, sampling is seeded", "[model][generate]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 71);
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4}, {5, 6}};
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  auto greedy = Generate(*model, prompts, opt);
  REQUIRE(greedy.ok());
  // Each greedy token must be the argmax of the full forward over prompt + generated prefix:
  // its logprob is the max over the vocabulary.
  for (size_t i = 0; i < prompts.size(); ++i) {
    REQUIRE((*greedy)[i].size() == 6);
    std::vector<int32_t> seq = prompts[i];
    seq.insert(seq.end(), (*greedy)[i].begin(), (*greedy)[i].end());
    for (size_t g = 0; g < 6; ++g) {
      // Compare the chosen token's logprob against every alternative at that position.
      const size_t p = prompts[i].size() + g - 1;
      double chosen = 0, best = -1e30;
      for (int32_t v = 0; v < c.vocab_size; ++v) {
        std::vector<int32_t> alt(seq.begin(), seq.begin() + p + 1);
        alt.push_back(v);
        TokenBatch b;
        b.Add(alt);
        ForwardResult<float> r;
        REQUIRE(model->Forward(b, ForwardOptions{}, &r).ok());
        best = std::max<double>(best, r.logprobs[p]);
        if (v == seq[p + 1]) chosen = r.logprobs[p];
      }
      CHECK(chosen >= best - 1e-5);
    }
  }
  opt.temperature = 1.0f;
  opt.seed = 9;
  auto s1 = Generate(*model, prompts, opt);
  opt.max_batch = 1;  // batching must not change samples
  auto s2 = Generate(*model, prompts, opt);
  opt.seed = 10;
  auto s3 = Generate(*model, prompts, opt);
  REQUIRE((s1.ok() && s2.ok() && s3.ok()));
  CHECK(*s1 == *s2);
  CHECK(*s1 != *s3);
  // Asking for more tokens than the model's positions fails before any work, with a reason.
  GenerateOptions too_long;
  too_long.max_new_tokens = c.max_position_embeddings;
  auto refused = Generate(*model, prompts, too_long);
  REQUIRE_FALSE(refused.ok());
  CHECK(std::string(refused.status().message()).find("max_position_embeddings") != std::string::npos);
  too_long.max_new_tokens = c.max_position_embeddings - 2;  // longest prompt is 3 tokens
  CHECK(Generate(*model, prompts, too_long).ok());
  // Stop tokens end a sequence right after they are emitted.
  opt.temperature = 0;
  opt.seed = 0;
  opt.max_batch = 64;
  opt.stop_tokens = {(*greedy)[0][1]};
  auto stopped = Generate(*model, prompts, opt);
  REQUIRE(stopped.ok());
  CHECK((*stopped)[0].size() <= 2);
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

TEST_CASE("pre-packed weights: the same bits, and dropped when the weights change",
          "[model][batch_invariant]") {
  for (const auto& j : {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson(),
                        testing::TinyLlamaJson()}) {
    ModelConfig c = MustParse(j);
    INFO(c.model_type);
    auto model = MakeModel<float>(c, 5);
    model->set_batch_invariant(true);
    const TokenBatch batch = RandomBatch({9, 1, 17}, c.vocab_size, 3);
    ForwardOptions fo;
    ForwardResult<float> plain, packed;
    REQUIRE(model->Forward(batch, fo, &plain).ok());
    if (!model->PrepackWeights()) {
      WARN("SKIPPED: pre-packed weights need an AVX-512 build");
      continue;
    }
    REQUIRE(model->prepacked());
    REQUIRE(model->Forward(batch, fo, &packed).ok());
    REQUIRE(std::memcmp(plain.logprobs.data(), packed.logprobs.data(),
                        plain.logprobs.size() * sizeof(float)) == 0);
    // Changing the weights through params() drops the packed copy, so the change is seen.
    model->params()[model->layout().lm_head] += 1.0f;
    REQUIRE(!model->prepacked());
    ForwardResult<float> changed;
    REQUIRE(model->Forward(batch, fo, &changed).ok());
    REQUIRE(std::memcmp(plain.logprobs.data(), changed.logprobs.data(),
                        plain.logprobs.size() * sizeof(float)) != 0);
  }
}

TEST_CASE("batch-invariant forward: a sequence alone and in a batch big enough to fork",
          "[model][batch_invariant]") {
  // 44 sequences, ~2300 tokens: at hidden size 16 every per-token region of LayerForward and the
  // MoE block (norms with the router, the split, the combine with the residual add) forks and
  // splits its tokens over the threads; one sequence alone (<= 60 tokens) runs them on one
  // thread. Batch invariance makes the two bitwise equal, so a thread's run computed wrong, or
  // a run left out, shows.
  std::vector<int> lengths;
  for (int i = 0; i < 44; ++i) lengths.push_back(30 + (i * 17) % 31);
  for (const auto& j : {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson(),
                        testing::TinyLlamaJson()}) {
    ModelConfig c = MustParse(j);
    INFO(c.model_type);
    auto model = MakeModel<float>(c, 8);
    model->set_batch_invariant(true);
    const TokenBatch batch = RandomBatch(lengths, c.vocab_size, 9);
    for (const bool packed : {false, true}) {
      if (packed && !model->PrepackWeights()) {
        WARN("SKIPPED: pre-packed weights need an AVX-512 build");
        continue;
      }
      INFO("pre-packed " << packed);
      ForwardResult<float> all;
      REQUIRE(model->Forward(batch, ForwardOptions{}, &all).ok());
      int64_t mismatched = 0;
      for (size_t b = 0; b < lengths.size(); ++b) {
        TokenBatch one;
        const int64_t at = batch.offsets[b];
        one.Add({batch.tokens.data() + at, static_cast<size_t>(lengths[b])});
        ForwardResult<float> alone;
        REQUIRE(model->Forward(one, ForwardOptions{}, &alone).ok());
        mismatched += std::memcmp(alone.logprobs.data(), all.logprobs.data() + at,
                                  lengths[b] * sizeof(float)) != 0;
      }
      CHECK(mismatched == 0);
    }
  }
}

TEST_CASE("batch-invariant decode of 64 slots at a width that forks: the forward's bits",
          "[model][batch_invariant][decode]") {
  // Hidden size 384 and 64 slots: a decode step's per-token regions (norms with the router, the
  // q/k/v split with RoPE and the KV append, the combine with the residual add) and its decode
  // attention all split their tokens over the threads, as in the rollout engine at batch 64. The
  // tiny models' steps run those on one thread.
  nlohmann::json j = testing::TinyQwen3MoeJson();
  j["vocab_size"] = 96;
  j["hidden_size"] = 384;
  j["num_attention_heads"] = 6;
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 64;
  j["num_experts"] = 8;
  j["num_experts_per_tok"] = 4;
  j["moe_intermediate_size"] = 64;
  j["intermediate_size"] = 96;
  const ModelConfig c = MustParse(j);
  auto model = MakeModel<float>(c, 10);
  model->set_batch_invariant(true);
  constexpr int kSlots = 64, kPrompt = 6, kSteps = 3;
  const TokenBatch batch =
      RandomBatch(std::vector<int>(kSlots, kPrompt + kSteps), c.vocab_size, 11);
  ForwardResult<float> full;
  REQUIRE(model->Forward(batch, ForwardOptions{}, &full).ok());
  // The engine's packed weights where the build has them (AVX-512); the plain form otherwise.
  (void)model->PrepackWeights();
  KvCache<float> cache(c, kSlots, kPrompt + kSteps);
  std::vector<int64_t> slots(kSlots);
  std::vector<absl::Span<const int32_t>> feed(kSlots);
  for (int b = 0; b < kSlots; ++b) {
    slots[b] = b;
    feed[b] = {batch.tokens.data() + batch.offsets[b], size_t(kPrompt)};
  }
  std::vector<float> logits(kSlots * c.vocab_size);
  int64_t mismatched = 0, compared = 0;
  for (int step = 0; step <= kSteps; ++step) {
    REQUIRE(model->Extend(&cache, slots, feed, logits.data()).ok());
    const int64_t done = kPrompt + step;  // tokens fed so far per slot
    for (int b = 0; b < kSlots; ++b) {
      const int64_t p = batch.offsets[b] + done - 1;  // the position whose next token we score
      if (done < kPrompt + kSteps) {
        float lp = 0;
        const int32_t target = batch.tokens[p + 1];
        cpu::LogprobForward<float>(&lp, nullptr, nullptr, logits.data() + b * c.vocab_size,
                                   &target, 1, c.vocab_size, 1.0f);
        mismatched += std::memcmp(&lp, &full.logprobs[p], sizeof(float)) != 0;
        ++compared;
        feed[b] = {batch.tokens.data() + p + 1, 1};
      }
    }
    if (done == kPrompt + kSteps) break;
  }
  CHECK(compared == kSlots * kSteps);
  CHECK(mismatched == 0);
}

TEST_CASE("bf16-exact weights are packed at 2 bytes with the same bits", "[model][batch_invariant]") {
  ModelConfig c = MustParse(testing::TinyQwen3MoeJson());
  auto model = MakeModel<float>(c, 6);
  model->set_batch_invariant(true);
  // Round every weight to bf16, as a bf16 checkpoint or a bf16 weight update would give.
  float* p = model->params();
  for (int64_t i = 0; i < model->num_params(); ++i) p[i] = Bf16ToFloat(FloatToBf16(p[i]));
  const TokenBatch batch = RandomBatch({9, 1, 17}, c.vocab_size, 4);
  ForwardOptions fo;
  ForwardResult<float> plain, packed, mixed;
  REQUIRE(model->Forward(batch, fo, &plain).ok());
  if (!model->PrepackWeights()) {
    WARN("SKIPPED: pre-packed weights need an AVX-512 build");
    return;
  }
  // Layer 0 (MoE): q/k/v, o, router, experts' gate-up and down; layer 1 (dense, mlp_only_layers):
  // q/k/v, o, gate-up, down; the LM head.
  CHECK(model->prepacked_bf16_weights() == 5 + 4 + 1);
  REQUIRE(model->Forward(batch, fo, &packed).ok());
  REQUIRE(std::memcmp(plain.logprobs.data(), packed.logprobs.data(),
                      plain.logprobs.size() * sizeof(float)) == 0);
  // One element off bf16 sends that weight (the LM head) to the 4-byte form; the rest stay.
  uint32_t u;
  std::memcpy(&u, model->params() + model->layout().lm_head, 4);
  u |= 1u;
  std::memcpy(model->params() + model->layout().lm_head, &u, 4);
  REQUIRE(model->Forward(batch, fo, &plain).ok());
  REQUIRE(model->PrepackWeights());
  CHECK(model->prepacked_bf16_weights() == 5 + 4);
  REQUIRE(model->Forward(batch, fo, &mixed).ok());
  REQUIRE(std::memcmp(plain.logprobs.data(), mixed.logprobs.data(),
                      plain.logprobs.size() * sizeof(float)) == 0);
}

}  // namespace
}  // namespace grpo
