// The rollout engine without a server: reproducibility under any batch composition, group
// forking, stop conditions, logprobs against the learner's forward, routing, weight swaps, KV
// budget waits, cancellation and bad input.
#include "rollout/engine.h"

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"
#include "model/tokenizer.h"
#include "rollout/sampling.h"
#include "tests/rollout/rollout_test_util.h"

namespace grpo {
namespace {

using testing::MakeEngine;
using testing::MakeModel;
using testing::MustParse;
using testing::RandomTokens;
using testing::ReferenceSample;

ModelConfig TinyMoe() { return MustParse(testing::TinyQwen3MoeJson()); }

SamplingParams Sampling(int32_t G, int32_t max_new, uint64_t seed) {
  SamplingParams sp;
  sp.group_size = G;
  sp.max_new_tokens = max_new;
  sp.seed = seed;
  return sp;
}

void RequireSameCompletion(const Completion& a, const Completion& b) {
  REQUIRE(a.token_ids == b.token_ids);
  REQUIRE(a.logprobs.size() == b.logprobs.size());
  for (size_t i = 0; i < a.logprobs.size(); ++i) {
    INFO("token " << i);
    REQUIRE(std::memcmp(&a.logprobs[i], &b.logprobs[i], sizeof(float)) == 0);  // bitwise
  }
  REQUIRE(a.finish_reason == b.finish_reason);
}

TEST_CASE("a seed gives the same completions whatever they are batched with", "[rollout][engine]") {
  const ModelConfig c = TinyMoe();
  SamplingParams sp = Sampling(3, 12, 42);
  sp.stop_token_ids = {5};
  const std::vector<RolloutPrompt> target = {{7, RandomTokens(5, c.vocab_size, 1)},
                                             {8, RandomTokens(9, c.vocab_size, 2)}};
  auto alone_engine = MakeEngine(c, 3);
  auto alone = alone_engine->GenerateAll(target, sp);
  REQUIRE(alone.ok());

  // The same request among others of different lengths and parameters, submitted together, in
  // an engine whose small batch and KV budget force joins and leaves mid-generation.
  EngineOptions opt;
  opt.max_batch = 7;
  opt.kv_budget_bytes = 2 * 2 * 2 * 6 * 4 * 120;  // 120 tokens
  auto busy = MakeEngine(c, 3, opt);
  std::vector<std::shared_ptr<RolloutRequest>> others;
  for (int i = 0; i < 4; ++i) {
    SamplingParams o = Sampling(1 + i % 3, 3 + 4 * i, 100 + i);
    o.temperature = 0.5f + 0.3f * i;
    auto r = busy->Submit(
        {{static_cast<uint64_t>(i), RandomTokens(2 + 3 * i, c.vocab_size, 50 + i)}}, o);
    REQUIRE(r.ok());
    others.push_back(*r);
  }
  auto batched = busy->GenerateAll(target, sp);
  REQUIRE(batched.ok());
  for (size_t p = 0; p < target.size(); ++p) {
    for (int i = 0; i < sp.group_size; ++i) {
      INFO("prompt " << p << " sample " << i);
      RequireSameCompletion((*alone)[p].completions[i], (*batched)[p].completions[i]);
    }
  }
  for (auto& r : others) {
    GroupResult g;
    while (r->Next(&g, absl::Seconds(5)) != RolloutRequest::Wait::kDone) {
    }
    REQUIRE(r->status().ok());
  }
}

TEST_CASE("group forking equals sampling each sample alone", "[rollout][engine]") {
  const ModelConfig c = TinyMoe();
  auto ref = MakeModel<float>(c, 4);
  auto engine = MakeEngine(c, 4);
  for (const bool deterministic : {false, true}) {
    SamplingParams sp = Sampling(4, 10, 9);
    sp.temperature = 0.8f;
    sp.deterministic = deterministic;
    const std::vector<int32_t> prompt = RandomTokens(6, c.vocab_size, 11);
    auto groups = engine->GenerateAll({{123, prompt}}, sp);
    REQUIRE(groups.ok());
    REQUIRE((*groups)[0].completions.size() == 4);
    for (int32_t i = 0; i < 4; ++i) {
      INFO("sample " << i << " deterministic " << deterministic);
      RequireSameCompletion((*groups)[0].completions[i], ReferenceSample(*ref, prompt, 123, i, sp));
    }
    // The samples differ from each other (their streams are independent).
    CHECK((*groups)[0].completions[0].token_ids != (*groups)[0].completions[1].token_ids);
  }
}

TEST_CASE("stop tokens and max_new_tokens end completions", "[rollout][engine][stop]") {
  const ModelConfig c = TinyMoe();
  auto engine = MakeEngine(c, 5);
  SamplingParams sp = Sampling(8, 20, 3);
  sp.stop_token_ids = {1, 2, 3, 4, 5, 6, 7, 8};
  auto groups = engine->GenerateAll({{0, RandomTokens(4, c.vocab_size, 3)}}, sp);
  REQUIRE(groups.ok());
  int num_stop = 0, num_length = 0;
  for (const Completion& comp : (*groups)[0].completions) {
    REQUIRE(!comp.token_ids.empty());
    REQUIRE(comp.logprobs.size() == comp.token_ids.size());
    for (size_t i = 0; i + 1 < comp.token_ids.size(); ++i) {
      REQUIRE((comp.token_ids[i] < 1 || comp.token_ids[i] > 8));  // no stop token before the end
    }
    const int32_t last = comp.token_ids.back();
    if (comp.finish_reason == FinishReason::kStop) {
      ++num_stop;
      CHECK(comp.stop_token_id == last);
      CHECK((last >= 1 && last <= 8));
    } else {
      ++num_length;
      REQUIRE(comp.finish_reason == FinishReason::kLength);
      CHECK(comp.token_ids.size() == 20);
      CHECK(comp.stop_token_id == -1);
    }
  }
  CHECK(num_stop > 0);  // 8 of 37 ids stop: most of 8 samples of 20 tokens hit one
}

TEST_CASE("stop strings end a completion at the token that completes the match",
          "[rollout][engine][stop]") {
  // The toy tokenizer: ids 0..255 are bytes, so a model over its vocabulary writes text.
  nlohmann::json j = testing::TinyQwen3MoeJson();
  j["vocab_size"] = 263;
  const ModelConfig c = MustParse(j);
  auto tok = Tokenizer::FromJson(ToyTokenizerJson(), "toy");
  REQUIRE(tok.ok());
  auto decoder = Tokenizer::FromJson(ToyTokenizerJson(), "toy");
  auto engine = MakeEngine(c, 6, {}, std::move(*tok));
  // Find stop strings that some samples produce: first, sample freely and take a 1- and a
  // 2-byte piece from the middle of a completion.
  SamplingParams free_sp = Sampling(6, 12, 8);
  auto free_run = engine->GenerateAll({{1, RandomTokens(3, 256, 5)}}, free_sp);
  REQUIRE(free_run.ok());
  const std::vector<int32_t>& ids = (*free_run)[0].completions[0].token_ids;
  auto text = (*decoder)->Decode(absl::MakeConstSpan(ids).subspan(4, 2));
  REQUIRE(text.ok());
  SamplingParams sp = free_sp;
  sp.stop_strings = {*text};
  auto run = engine->GenerateAll({{1, RandomTokens(3, 256, 5)}}, sp);
  REQUIRE(run.ok());
  int num_stop = 0;
  for (const Completion& comp : (*run)[0].completions) {
    auto full = (*decoder)->Decode(comp.token_ids);
    REQUIRE(full.ok());
    auto before =
        (*decoder)->Decode(absl::MakeConstSpan(comp.token_ids).first(comp.token_ids.size() - 1));
    REQUIRE(before.ok());
    if (comp.finish_reason == FinishReason::kStop) {
      ++num_stop;
      CHECK(comp.stop_string == *text);
      CHECK(full->find(*text) != std::string::npos);
      CHECK(before->find(*text) == std::string::npos);  // the last token completed it
    } else {
      CHECK(full->find(*text) == std::string::npos);
    }
  }
  CHECK(num_stop >= 1);  // sample 0 wrote it at tokens 4..5 with the same seed
  // Without a tokenizer, stop strings are refused.
  auto bare = MakeEngine(c, 6);
  auto refused = bare->Submit({{1, {1, 2}}}, sp);
  REQUIRE(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(refused.status().message()).find("stop_strings") != std::string::npos);
}

// The learner's logprobs of prompt + completion, at the completion's positions.
std::vector<float> LearnerLogprobs(Model<float>& model, const std::vector<int32_t>& prompt,
                                   const std::vector<int32_t>& completion, float temperature,
                                   bool batch_invariant) {
  TokenBatch batch;
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), completion.begin(), completion.end());
  batch.Add(seq);
  ForwardOptions fo;
  fo.temperature = temperature;
  ForwardResult<float> r;
  model.set_batch_invariant(batch_invariant);
  REQUIRE(model.Forward(batch, fo, &r).ok());
  model.set_batch_invariant(false);
  return std::vector<float>(r.logprobs.begin() + prompt.size() - 1, r.logprobs.end() - 1);
}

TEST_CASE("rollout logprobs equal the learner's forward", "[rollout][engine][logprobs]") {
  for (const auto& family :
       {testing::TinyQwen3MoeJson(), testing::TinyQwen2MoeJson(), testing::TinyLlamaJson()}) {
    const ModelConfig c = MustParse(family);
    INFO(c.model_type);
    auto learner = MakeModel<float>(c, 7);
    auto engine = MakeEngine(c, 7);
    for (const float temperature : {1.0f, 0.7f}) {
      SamplingParams sp = Sampling(3, 24, 13);
      sp.temperature = temperature;
      // Long prompts: the learner's forward takes its blocked attention and GEMM paths there.
      const std::vector<RolloutPrompt> prompts = {{0, RandomTokens(20, c.vocab_size, 21)},
                                                  {1, RandomTokens(3, c.vocab_size, 22)}};
      // Default mode: the same up to rounding.
      auto groups = engine->GenerateAll(prompts, sp);
      REQUIRE(groups.ok());
      double worst = 0;
      for (size_t p = 0; p < prompts.size(); ++p) {
        for (const Completion& comp : (*groups)[p].completions) {
          const std::vector<float> lp =
              LearnerLogprobs(*learner, prompts[p].token_ids, comp.token_ids, temperature, false);
          REQUIRE(lp.size() == comp.logprobs.size());
          for (size_t i = 0; i < lp.size(); ++i) {
            REQUIRE(std::isfinite(comp.logprobs[i]));
            worst = std::max(worst, std::abs(double(lp[i]) - comp.logprobs[i]));
          }
        }
      }
      CHECK(worst <= 1e-5);
      // Deterministic mode: bitwise, against the learner's batch-invariant forward.
      sp.deterministic = true;
      groups = engine->GenerateAll(prompts, sp);
      REQUIRE(groups.ok());
      int64_t mismatches = 0, total = 0;
      for (size_t p = 0; p < prompts.size(); ++p) {
        for (const Completion& comp : (*groups)[p].completions) {
          const std::vector<float> lp =
              LearnerLogprobs(*learner, prompts[p].token_ids, comp.token_ids, temperature, true);
          for (size_t i = 0; i < lp.size(); ++i, ++total) {
            if (std::memcmp(&lp[i], &comp.logprobs[i], sizeof(float)) != 0) {
              if (mismatches++ < 5) {
                WARN("prompt " << p << " token " << i << ": rollout " << comp.logprobs[i]
                               << " learner " << lp[i]);
              }
            }
          }
        }
      }
      CHECK(total > 0);
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("greedy and truncated sampling draw from the stated distribution",
          "[rollout][sampling]") {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  std::vector<std::pair<float, int32_t>> scratch;
  // Greedy: argmax, lowest id on ties; logprob at temperature 1.
  SampledToken g = SampleFromLogits(logits.data(), 5, 0.0f, 0, 1.0f, 0.99, &scratch);
  CHECK(g.token == 1);
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  CHECK(g.logprob == Approx(3.0 - std::log(z)).margin(1e-6));
  // top_k 2 keeps ids 1 and 3 (equal logits): each has probability 1/2.
  for (double u : {0.0, 0.3, 0.49, 0.51, 0.99}) {
    SampledToken t = SampleFromLogits(logits.data(), 5, 1.0f, 2, 1.0f, u, &scratch);
    CHECK(t.token == (u < 0.5 ? 1 : 3));
    CHECK(t.logprob == Approx(std::log(0.5)).margin(1e-6));
  }
  // top_p: probabilities at T=1 are e^{1,3,2,3,-1}/z; p(1)+p(3) = 0.776..., < 0.8, so top_p 0.8
  // also keeps id 2; renormalized over {1, 3, 2}.
  const double kept = std::exp(3.0) * 2 + std::exp(2.0);
  for (double u : {0.0, 0.5, 0.95}) {
    SampledToken t = SampleFromLogits(logits.data(), 5, 1.0f, 0, 0.8f, u, &scratch);
    const double expected_p = (t.token == 2 ? std::exp(2.0) : std::exp(3.0)) / kept;
    CHECK((t.token == 1 || t.token == 2 || t.token == 3));
    CHECK(t.logprob == Approx(std::log(expected_p)).margin(1e-6));
  }
  CHECK(SampleFromLogits(logits.data(), 5, 1.0f, 0, 0.8f, 0.999, &scratch).token == 2);
  // Sampling frequencies follow the distribution (u spread evenly over [0, 1)).
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 1000; ++i) {
    counts[SampleFromLogits(logits.data(), 5, 2.0f, 0, 1.0f, (i + 0.5) / 1000, &scratch).token]++;
  }
  double zt = 0;
  for (float l : logits) zt += std::exp(l / 2.0);
  for (int v = 0; v < 5; ++v) {
    CHECK(counts[v] / 1000.0 == Approx(std::exp(logits[v] / 2.0) / zt).margin(0.002));
  }
}

TEST_CASE("greedy picks the first maximum over a long vocabulary", "[rollout][sampling]") {
  // The vectorized argmax scans 16 logits at a time: maxima at the start, inside and across
  // 16-blocks and in the tail (V not a multiple of 16) must all give the lowest id.
  const int64_t V = 1003;
  std::vector<std::pair<float, int32_t>> scratch;
  for (const std::vector<int64_t>& at : std::vector<std::vector<int64_t>>{
           {0}, {15, 16}, {17, 40, 999}, {1002}, {995, 1002}, {500, 31}}) {
    std::vector<float> logits(V);
    for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>(std::sin(0.11 * v));
    for (int64_t a : at) logits[a] = 5.0f;
    const int64_t want = *std::min_element(at.begin(), at.end());
    const SampledToken g = SampleFromLogits(logits.data(), V, 0.0f, 0, 1.0f, 0.5, &scratch);
    CHECK(g.token == want);
    double z = 0;
    for (float l : logits) z += std::exp(double(l) - 5.0);
    CHECK(g.logprob == Approx(-std::log(z)).margin(1e-5));
    // The learner's bits: LogprobForward at temperature 1 on the same row.
    float lp = 0;
    const int32_t target = g.token;
    cpu::LogprobForward<float>(&lp, nullptr, nullptr, logits.data(), &target, 1, V, 1.0f);
    CHECK(std::memcmp(&lp, &g.logprob, sizeof(float)) == 0);
  }
  // All -inf but one NaN-free entry: still that entry.
  std::vector<float> logits(40, -std::numeric_limits<float>::infinity());
  logits[33] = 0.0f;
  CHECK(SampleFromLogits(logits.data(), 40, 0.0f, 0, 1.0f, 0.5, &scratch).token == 33);
  // NaNs are passed over; with nothing above -inf, the first -inf is the answer.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> odd(40, nan);
  odd[21] = 2.0f;
  odd[37] = 2.0f;
  CHECK(SampleFromLogits(odd.data(), 40, 0.0f, 0, 1.0f, 0.5, &scratch).token == 21);
  odd.assign(40, nan);
  odd[19] = -std::numeric_limits<float>::infinity();
  odd[30] = -std::numeric_limits<float>::infinity();
  CHECK(SampleFromLogits(odd.data(), 40, 0.0f, 0, 1.0f, 0.5, &scratch).token == 19);
  // A maximum of zero in both signs, the +0 first in its lane's order but later in the row.
  std::vector<float> zeros(40, -1.0f);
  zeros[18] = -0.0f;
  zeros[2] = 0.0f;
  zeros[35] = 0.0f;
  CHECK(SampleFromLogits(zeros.data(), 40, 0.0f, 0, 1.0f, 0.5, &scratch).token == 2);
}

TEST_CASE("RowLogprob with the row's max is LogprobForward's lp, bitwise", "[rollout][sampling]") {
  const int64_t V = 3001;  // chunks of 1024 and a tail
  std::vector<float> logits(V);
  for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>(std::sin(0.73 * v) * 6.0);
  for (const float tau : {1.0f, 0.6f}) {
    for (const int32_t target : {0, 1234, 3000}) {
      float want = 0;
      cpu::LogprobForward<float>(&want, nullptr, nullptr, logits.data(), &target, 1, V, tau);
      const float got = cpu::RowLogprob(logits.data(), V, tau, cpu::RowMax(logits.data(), V),
                                        target);
      INFO("tau " << tau << " target " << target);
      CHECK(std::memcmp(&want, &got, sizeof(float)) == 0);
    }
  }
}

TEST_CASE("untruncated sampling inverts the CDF across chunks", "[rollout][sampling]") {
  // V 2500 spans three of the sampler's chunks of 1024; every draw must land where the exact CDF
  // (double) puts u, up to float rounding of the weights.
  const int64_t V = 2500;
  std::vector<float> logits(V);
  for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>(std::sin(0.37 * v) * 4.0);
  std::vector<std::pair<float, int32_t>> scratch;
  const double tau = 0.7;
  double mx = -1e30;
  for (float l : logits) mx = std::max<double>(mx, l);
  std::vector<double> cdf(V);
  double z = 0;
  for (int64_t v = 0; v < V; ++v) cdf[v] = (z += std::exp((logits[v] - mx) / tau));
  for (double& c : cdf) c /= z;
  for (int i = 0; i < 2000; ++i) {
    const double u = (i + 0.5) / 2000;
    const SampledToken t = SampleFromLogits(logits.data(), V, 0.7f, 0, 1.0f, u, &scratch);
    INFO("u " << u << " token " << t.token);
    REQUIRE(t.token >= 0);
    REQUIRE(t.token < V);
    CHECK((t.token == 0 ? 0.0 : cdf[t.token - 1]) <= u + 1e-5);
    CHECK(u <= cdf[t.token] + 1e-5);
    const double p = (cdf[t.token] - (t.token == 0 ? 0.0 : cdf[t.token - 1]));
    CHECK(t.logprob == Approx(std::log(p)).margin(1e-4));
  }
}

TEST_CASE("sampled logprobs are bitwise the kernels' LogprobForward", "[rollout][sampling]") {
  // The sampler reuses LogprobForward's row arithmetic (SoftmaxWeights): the logprob it reports
  // for the token it drew must be the learner's bits, at tau 1 (no divisions) and otherwise, for
  // a vocabulary of many chunks with a partial last one.
  const int64_t V = 32003;
  std::vector<float> logits(V);
  for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>(std::sin(0.013 * v) * 6.0);
  std::vector<std::pair<float, int32_t>> scratch;
  for (const float tau : {1.0f, 0.7f, 1.3f}) {
    for (const double u : {0.001, 0.25, 0.5, 0.999}) {
      const SampledToken t = SampleFromLogits(logits.data(), V, tau, 0, 1.0f, u, &scratch);
      float want = 0;
      cpu::LogprobForward<float>(&want, nullptr, nullptr, logits.data(), &t.token, 1, V, tau);
      INFO("tau " << tau << " u " << u << " token " << t.token);
      CHECK(std::memcmp(&want, &t.logprob, sizeof(float)) == 0);
    }
  }
}

TEST_CASE("returned routing replays the learner's forward exactly", "[rollout][engine][routing]") {
  const ModelConfig c = TinyMoe();
  auto learner = MakeModel<float>(c, 8);
  auto engine = MakeEngine(c, 8);
  SamplingParams sp = Sampling(2, 9, 1);
  sp.return_routing = true;
  sp.stop_token_ids = {0, 1, 2};
  const std::vector<int32_t> prompt = RandomTokens(7, c.vocab_size, 4);
  auto groups = engine->GenerateAll({{5, prompt}}, sp);
  REQUIRE(groups.ok());
  for (const Completion& comp : (*groups)[0].completions) {
    TokenBatch batch;
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), comp.token_ids.begin(), comp.token_ids.end());
    batch.Add(seq);
    ForwardOptions fo;
    fo.record_routing = true;
    ForwardResult<float> r;
    REQUIRE(learner->Forward(batch, fo, &r).ok());
    CHECK(comp.routing.num_moe_layers == c.NumMoeLayers());
    CHECK(comp.routing.top_k == c.num_experts_per_tok);
    CHECK(comp.routing.num_tokens == static_cast<int32_t>(seq.size()));
    CHECK(comp.routing.expert_ids == r.routing);
  }
}

TEST_CASE("WaitApplied returns once a staged update is in the model, and checks device sources",
          "[rollout][engine][weights]") {
  const ModelConfig c = TinyMoe();
  EngineOptions opt;
  opt.initial_version = 3;
  auto engine = MakeEngine(c, 11, opt);
  REQUIRE(engine->WaitApplied(3, absl::Now()).ok());  // the initial weights count as applied
  const absl::Status late = engine->WaitApplied(4, absl::Now() + absl::Milliseconds(50));
  CHECK(late.code() == absl::StatusCode::kDeadlineExceeded);
  auto new_model = MakeModel<float>(c, 12);
  std::vector<float> params(new_model->params(), new_model->params() + new_model->num_params());
  REQUIRE(engine->StageWeights(4, params).ok());
  REQUIRE(engine->WaitApplied(4, absl::Now() + absl::Seconds(30)).ok());
  CHECK(engine->GetStatus().weight_version == 4);
  // Device-to-device updates need an engine on cuda (and a source model).
  CHECK(engine->StageDeviceWeights(5, nullptr).code() == absl::StatusCode::kInvalidArgument);
  CHECK(engine->newest_version() == 4);
}

TEST_CASE("a weight update waits for running sequences, and every completion has one version",
          "[rollout][engine][weights]") {
  const ModelConfig c = TinyMoe();
  EngineOptions opt;
  opt.initial_version = 1;
  auto engine = MakeEngine(c, 9, opt);
  auto new_model = MakeModel<float>(c, 10);
  SamplingParams sp = Sampling(2, 30, 2);
  const std::vector<RolloutPrompt> prompts = {{0, RandomTokens(4, c.vocab_size, 1)}};
  auto first = engine->Submit(prompts, sp);
  REQUIRE(first.ok());
  std::vector<float> params(new_model->params(), new_model->params() + new_model->num_params());
  REQUIRE(engine->StageWeights(2, params).ok());
  CHECK(engine->StageWeights(2, params).code() == absl::StatusCode::kFailedPrecondition);
  CHECK(engine->StageWeights(1, params).code() == absl::StatusCode::kFailedPrecondition);
  auto second = engine->GenerateAll(prompts, sp);
  REQUIRE(second.ok());
  GroupResult g;
  while ((*first)->Next(&g, absl::Seconds(5)) != RolloutRequest::Wait::kGroup) {
  }
  // The first request was admitted before the update (or, if the engine had not admitted it yet,
  // after the swap): either way each completion is all one version, and the second request,
  // submitted after StageWeights, is all version 2.
  const uint64_t v_first = g.completions[0].weight_version;
  for (const Completion& comp : g.completions) CHECK(comp.weight_version == v_first);
  for (const Completion& comp : (*second)[0].completions) CHECK(comp.weight_version == 2);
  // Version 2 completions are those of the new weights.
  auto ref = MakeModel<float>(c, 10);
  RequireSameCompletion((*second)[0].completions[1],
                        ReferenceSample(*ref, prompts[0].token_ids, 0, 1, sp));
  CHECK(engine->GetStatus().weight_version == 2);
  // The applied update's buffer is kept once for the next update to be received into.
  const std::vector<float> spare = engine->TakeSpareParams();
  CHECK(spare.size() == params.size());
  CHECK(engine->TakeSpareParams().empty());
}

TEST_CASE("a KV budget smaller than the work makes groups wait, not fail",
          "[rollout][engine][kv]") {
  const ModelConfig c = TinyMoe();
  EngineOptions opt;
  // Row bytes: 2 (k, v) x 2 layers x nkv 2 x hd 6 x 4 bytes = 192; room for 40 tokens.
  opt.kv_budget_bytes = 192 * 40;
  auto engine = MakeEngine(c, 11, opt);
  SamplingParams sp = Sampling(2, 8, 4);
  std::vector<RolloutPrompt> prompts;
  for (int i = 0; i < 6; ++i)
    prompts.push_back({static_cast<uint64_t>(i), RandomTokens(10, c.vocab_size, i)});
  // Each group needs 10 prompt rows, shared by its samples, + 2 x 8: one group at a time.
  auto groups = engine->GenerateAll(prompts, sp);
  REQUIRE(groups.ok());
  auto unlimited = MakeEngine(c, 11);
  auto expected = unlimited->GenerateAll(prompts, sp);
  REQUIRE(expected.ok());
  for (int i = 0; i < 6; ++i) {
    for (int s = 0; s < 2; ++s)
      RequireSameCompletion((*groups)[i].completions[s], (*expected)[i].completions[s]);
  }
  const RolloutStatus st = engine->GetStatus();
  CHECK(st.kv_bytes_budget == 192 * 40);
  CHECK(st.kv_bytes_used == 0);
  CHECK(st.total_tokens > 0);
  CHECK(st.tokens_per_second > 0);
  // A group that can never fit is refused up front.
  auto too_big = engine->Submit({{0, RandomTokens(30, c.vocab_size, 1)}}, sp);
  REQUIRE(too_big.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(too_big.status().message()).find("kv-budget") != std::string::npos);
}

TEST_CASE("a group's samples read their prompt's KV rows in place until the last of them is done",
          "[rollout][engine][kv]") {
  // G 4, 24 prompt tokens, up to 10 new: 24 + 4 x 10 = 64 rows with the prompt shared, 136 with
  // a copy per sample. The budget, 108 rows, refuses the copies outright and leaves 44 rows beside
  // a running group: a second group (64) starts only once the first has freed 20 more. Were
  // sample 0's rows (34) freed when it finishes while its siblings still read the prompt from
  // them, the next group would be prefilled over that prompt, and the siblings' remaining tokens
  // and logprobs would change; each is compared bitwise with sampling it alone.
  const ModelConfig c = TinyMoe();
  const int64_t row_bytes = KvBytesPerToken(c, sizeof(float));
  EngineOptions opt;
  opt.kv_budget_bytes = row_bytes * 108;
  auto engine = MakeEngine(c, 13, opt);
  auto ref = MakeModel<float>(c, 13);
  SamplingParams sp = Sampling(4, 10, 21);
  sp.temperature = 1.5f;
  for (int32_t t = 0; t < c.vocab_size; t += 6) sp.stop_token_ids.push_back(t);  // varied lengths
  std::vector<RolloutPrompt> prompts;
  for (int i = 0; i < 8; ++i) {
    prompts.push_back({static_cast<uint64_t>(100 + i), RandomTokens(24, c.vocab_size, 70 + i)});
  }
  // Rows that never came back would leave later groups waiting: a deadline, not a hang.
  const auto generate = [&](const std::vector<RolloutPrompt>& ps, const SamplingParams& s) {
    std::vector<GroupResult> out(ps.size());
    auto r = engine->Submit(ps, s);
    REQUIRE(r.ok());
    GroupResult g;
    for (size_t n = 0; n < ps.size(); ++n) {
      REQUIRE((*r)->Next(&g, absl::Seconds(30)) == RolloutRequest::Wait::kGroup);
      out[g.prompt_index] = std::move(g);
    }
    return out;
  };
  const std::vector<GroupResult> groups = generate(prompts, sp);
  int leader_first = 0;  // groups whose sample 0 finished while another sample was longer
  for (size_t p = 0; p < prompts.size(); ++p) {
    const auto& comps = groups[p].completions;
    REQUIRE(comps.size() == 4);
    size_t longest_other = 0;
    for (int32_t i = 0; i < 4; ++i) {
      INFO("prompt " << p << " sample " << i);
      const RolloutPrompt& pr = prompts[p];
      RequireSameCompletion(comps[i], ReferenceSample(*ref, pr.token_ids, pr.prompt_id, i, sp));
      if (i > 0) longest_other = std::max(longest_other, comps[i].token_ids.size());
    }
    if (comps[0].token_ids.size() < longest_other) ++leader_first;
  }
  CHECK(leader_first >= 2);  // the case above happened, more than once
  // The engine publishes its counters at the end of the iteration that delivered the last group.
  const auto kv_used_settles_at_zero = [&] {
    for (int i = 0; i < 200 && engine->GetStatus().kv_bytes_used != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return engine->GetStatus().kv_bytes_used == 0;
  };
  CHECK(kv_used_settles_at_zero());

  // A request cancelled after its first group, with others part-way through: every row must come
  // back, which a group needing the whole pool (24 + 4 x 21 = 108 rows) then shows by running.
  auto cancelled = engine->Submit(prompts, sp);
  REQUIRE(cancelled.ok());
  GroupResult first;
  REQUIRE((*cancelled)->Next(&first, absl::Seconds(30)) == RolloutRequest::Wait::kGroup);
  engine->Cancel(*cancelled);
  while ((*cancelled)->Next(&first, absl::Seconds(30)) == RolloutRequest::Wait::kGroup) {
  }
  SamplingParams whole = sp;
  whole.max_new_tokens = 21;
  CHECK(generate({{5, RandomTokens(24, c.vocab_size, 2)}}, whole)[0].completions.size() == 4);
  CHECK(kv_used_settles_at_zero());
  // The copy-per-sample size would not have been accepted at all; one row more than the shared
  // size is refused.
  SamplingParams big = sp;
  big.max_new_tokens = 22;  // 24 + 4 x 22 = 112 rows
  auto too_big = engine->Submit({{0, RandomTokens(24, c.vocab_size, 1)}}, big);
  REQUIRE(too_big.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(too_big.status().message()).find(std::to_string(112 * row_bytes)) !=
        std::string::npos);
}

TEST_CASE("cancelling a request frees its sequences", "[rollout][engine]") {
  const ModelConfig c = TinyMoe();
  auto engine = MakeEngine(c, 12);
  SamplingParams sp = Sampling(4, 40, 4);
  std::vector<RolloutPrompt> prompts;
  for (int i = 0; i < 20; ++i)
    prompts.push_back({static_cast<uint64_t>(i), RandomTokens(8, c.vocab_size, i)});
  auto r = engine->Submit(prompts, sp);
  REQUIRE(r.ok());
  engine->Cancel(*r);
  GroupResult g;
  while ((*r)->Next(&g, absl::Seconds(5)) == RolloutRequest::Wait::kGroup) {
  }
  CHECK((*r)->status().code() == absl::StatusCode::kCancelled);
  // The engine still serves, and ends with nothing reserved.
  auto after = engine->GenerateAll({{1, {1, 2, 3}}}, Sampling(1, 4, 0));
  REQUIRE(after.ok());
  for (int i = 0; i < 100 && engine->GetStatus().running_sequences > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(engine->GetStatus().kv_bytes_used == 0);
  CHECK(engine->GetStatus().queued_sequences == 0);
}

TEST_CASE("shutdown aborts running sequences and fails waiting requests", "[rollout][engine]") {
  const ModelConfig c = TinyMoe();
  EngineOptions opt;
  opt.max_batch = 2;
  auto engine = MakeEngine(c, 13, opt);
  SamplingParams sp = Sampling(2, 50, 4);
  std::vector<RolloutPrompt> prompts;
  for (int i = 0; i < 5; ++i)
    prompts.push_back({static_cast<uint64_t>(i), RandomTokens(8, c.vocab_size, i)});
  auto r = engine->Submit(prompts, sp);
  REQUIRE(r.ok());
  engine->Shutdown();
  GroupResult g;
  int aborted = 0;
  while ((*r)->Next(&g, absl::Seconds(5)) == RolloutRequest::Wait::kGroup) {
    for (const Completion& comp : g.completions)
      aborted += comp.finish_reason == FinishReason::kAbort;
  }
  CHECK((*r)->status().code() == absl::StatusCode::kUnavailable);
  CHECK(engine->Submit(prompts, sp).status().code() == absl::StatusCode::kUnavailable);
  (void)aborted;
}

TEST_CASE("bad requests are INVALID_ARGUMENT naming the field", "[rollout][engine][errors]") {
  const ModelConfig c = TinyMoe();  // vocab 37, context 64
  auto engine = MakeEngine(c, 14);
  auto expect = [&](std::vector<RolloutPrompt> prompts, SamplingParams sp,
                    const std::string& what) {
    auto r = engine->Submit(std::move(prompts), sp);
    INFO(what);
    REQUIRE(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(r.status().message()), Catch::Contains(what));
  };
  const SamplingParams ok = Sampling(2, 8, 0);
  expect({{0, {1, 37}}}, ok, "prompts[0].token_ids[1]");
  expect({{0, {1, 2}}, {1, {-1}}}, ok, "prompts[1].token_ids[0]");
  expect({{0, {}}}, ok, "prompts[0]: empty");
  expect({}, ok, "prompts: empty");
  expect({{0, RandomTokens(60, 37, 1)}}, ok, "context of 64");
  SamplingParams sp = ok;
  sp.group_size = 0;
  expect({{0, {1}}}, sp, "group_size");
  sp = ok;
  sp.top_p = 1.5f;
  expect({{0, {1}}}, sp, "top_p");
  sp = ok;
  sp.temperature = -1;
  expect({{0, {1}}}, sp, "temperature");
  sp = ok;
  sp.temperature = NAN;
  expect({{0, {1}}}, sp, "temperature");
  sp = ok;
  sp.top_k = -2;
  expect({{0, {1}}}, sp, "top_k");
  sp = ok;
  sp.max_new_tokens = 0;
  expect({{0, {1}}}, sp, "max_new_tokens");
  sp = ok;
  sp.stop_token_ids = {3, 99};
  expect({{0, {1}}}, sp, "stop_token_ids[1]");
  sp = ok;
  sp.group_size = 65;
  expect({{0, {1}}}, sp, "group_size");
}

TEST_CASE("an engine on cuda without a GPU is UNAVAILABLE, and the CPU engine says cpu",
          "[rollout][engine][errors]") {
  const ModelConfig c = TinyMoe();
  CHECK(MakeEngine(c, 1)->device() == Device::kCpu);
  if (CudaAvailable()) {
    WARN("a CUDA device is present: the GPU engine is tested in grpo_gpu_tests instead");
    return;
  }
  EngineOptions options;
  options.device = Device::kCuda;
  auto engine = Engine::Create(MakeModel<float>(c, 1), nullptr, options);
  REQUIRE(engine.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(engine.status().message()), Catch::Contains("cuda"));
}

}  // namespace
}  // namespace grpo
