// The collective weight-sync protocol (rollout/weight_sync.h, rollout/weight_receiver.h) over a
// LocalGroup: bf16 rounding, bucket plans, manifest checks, reassembly, and every way an update
// is refused (checksum, order, version, stale, layout) with the old weights still serving.
#include "rollout/weight_sync.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <thread>

#include "comm/local_communicator.h"
#include "rollout/weight_receiver.h"
#include "rollout/weights.h"
#include "tests/rollout/rollout_test_util.h"

namespace grpo {
namespace {

using comm::Communicator;
using comm::LocalGroup;

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

std::vector<float> Ramp(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * i + seed) * (1 + i % 7);
  return v;
}

// Root sends what it is given, bucket by bucket (header, then payload); the receiver runs
// ReceiveWeights on another thread. Both outcomes come back.
struct PairResult {
  absl::Status root;
  absl::StatusOr<std::vector<float>> received = absl::UnknownError("not run");
};

PairResult RunPair(const WeightManifest& manifest, const WeightTarget& target,
                   const std::vector<BucketHeader>& headers,
                   const std::vector<std::vector<uint8_t>>& payloads) {
  auto group = LocalGroup::Create(2);
  auto root = group->Rank(0);
  auto recv = group->Rank(1);
  PairResult r;
  std::thread t([&] { r.received = ReceiveWeights(recv.get(), 0, manifest, target); });
  r.root = absl::OkStatus();
  for (size_t b = 0; b < headers.size() && r.root.ok(); ++b) {
    BucketHeader h = headers[b];
    r.root = root->Broadcast(&h, sizeof(h), 0, absl::Seconds(20));
    if (r.root.ok()) {
      std::vector<uint8_t> p = payloads[b];
      r.root = root->Broadcast(p.data(), static_cast<int64_t>(p.size()), 0, absl::Seconds(20));
    }
  }
  t.join();
  return r;
}

// The honest headers and payloads of a packed update.
void Split(const PackedWeights& packed, std::vector<BucketHeader>* headers,
           std::vector<std::vector<uint8_t>>* payloads) {
  const WeightManifest& m = packed.manifest();
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    BucketHeader h;
    h.version = m.version;
    h.index = static_cast<uint32_t>(b);
    h.crc32c = m.buckets[b].crc32c;
    h.bytes = static_cast<uint64_t>(m.buckets[b].bytes);
    headers->push_back(h);
    payloads->emplace_back(packed.bucket_data(b), packed.bucket_data(b) + m.buckets[b].bytes);
  }
}

TEST_CASE("bf16: exact for representable values, round to nearest even otherwise",
          "[rollout][weight_sync]") {
  // Representable: bf16 -> fp32 -> bf16 is the identity for every non-NaN pattern.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(Bf16ToFloat(FloatToBf16(f))));
      continue;
    }
    REQUIRE(FloatToBf16(f) == h);
  }
  // Exactly halfway: ties go to the even neighbour.
  CHECK(FloatToBf16(FromBits(0x3F808000u)) == 0x3F80);  // 1 + 2^-8: between 0x3F80 and 0x3F81
  CHECK(FloatToBf16(FromBits(0x3F818000u)) == 0x3F82);  // between 0x3F81 and 0x3F82
  CHECK(FloatToBf16(FromBits(0xBF818000u)) == 0xBF82);  // sign does not matter
  // Off the midpoint: nearest.
  CHECK(FloatToBf16(FromBits(0x3F808001u)) == 0x3F81);
  CHECK(FloatToBf16(FromBits(0x3F807FFFu)) == 0x3F80);
  // Past the largest bf16: infinity, as IEEE rounding does; NaN stays NaN.
  CHECK(FloatToBf16(FromBits(0x7F7FFFFFu)) == 0x7F80);
  CHECK(std::isnan(Bf16ToFloat(FloatToBf16(FromBits(0x7F800001u)))));
  // The error of a rounded value is at most half a bf16 ulp (2^-8 relative).
  for (float x : Ramp(1000, 3)) {
    const float y = Bf16ToFloat(FloatToBf16(x));
    CHECK(std::abs(y - x) <= std::ldexp(std::abs(x), -8));
    CHECK((Bits(y) & 0xFFFFu) == 0);
  }
}

TEST_CASE("bucket plans cover the parameters whatever the bucket size", "[rollout][weight_sync]") {
  auto check = [](int64_t n, WeightDtype d, int64_t bucket_bytes, size_t want_buckets,
                  int64_t want_last) {
    const auto plan = PlanBuckets(n, d, bucket_bytes);
    REQUIRE(plan.size() == want_buckets);
    int64_t next = 0;
    for (const WeightBucketInfo& b : plan) {
      CHECK(b.offset == next);
      CHECK(b.bytes == b.num_params * WeightDtypeBytes(d));
      CHECK(b.bytes <= std::max<int64_t>(bucket_bytes, WeightDtypeBytes(d)));
      next += b.num_params;
    }
    CHECK(next == n);
    CHECK(plan.back().num_params == want_last);
  };
  check(1000, WeightDtype::kF32, 300, 14, 25);   // 75 per bucket, 13 full + 25
  check(1000, WeightDtype::kF32, 302, 14, 25);   // rounded down to whole values
  check(1000, WeightDtype::kBf16, 300, 7, 100);  // 150 per bucket
  check(1000, WeightDtype::kF32, 4000, 1, 1000);
  check(1000, WeightDtype::kF32, 1 << 20, 1, 1000);
  check(5, WeightDtype::kF32, 1, 5, 1);  // smaller than a value: one value per bucket
}

TEST_CASE("a manifest survives its proto and malformed ones are refused by field",
          "[rollout][weight_sync]") {
  const std::vector<float> params = Ramp(1003, 1);
  const PackedWeights packed = PackedWeights::Pack(params, 77, 4, WeightDtype::kBf16, 256, 30);
  rollout::WeightManifest p;
  ManifestToProto(packed.manifest(), &p);
  auto back = ManifestFromProto(p);
  REQUIRE(back.ok());
  CHECK(back->version == 4);
  CHECK(back->dtype == WeightDtype::kBf16);
  CHECK(back->num_params == 1003);
  CHECK(back->layout_fingerprint == 77);
  REQUIRE(back->buckets.size() == packed.manifest().buckets.size());
  for (size_t b = 0; b < back->buckets.size(); ++b) {
    CHECK(back->buckets[b].crc32c == packed.manifest().buckets[b].crc32c);
  }
  auto refused = [&](auto mutate, const std::string& says) {
    rollout::WeightManifest bad = p;
    mutate(&bad);
    auto r = ManifestFromProto(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    INFO(r.status().message());
    CHECK(std::string(r.status().message()).find(says) != std::string::npos);
  };
  refused([](rollout::WeightManifest* m) { m->set_dtype("fp8"); }, "fp8");
  refused([](rollout::WeightManifest* m) { m->mutable_buckets(2)->set_offset(3); },
          "buckets[2]: offset 3");
  refused([](rollout::WeightManifest* m) { m->mutable_buckets(1)->set_bytes(7); },
          "buckets[1]: bytes 7");
  refused([](rollout::WeightManifest* m) { m->mutable_buckets()->RemoveLast(); }, "cover");
  refused([](rollout::WeightManifest* m) { m->set_num_params(0); }, "num_params");
  refused([](rollout::WeightManifest* m) { m->set_timeout_s(0); }, "timeout_s");
}

TEST_CASE("buckets reassemble on every receiver: fp32 bitwise, bf16 rounded",
          "[rollout][weight_sync]") {
  constexpr int kWorld = 3;
  // 1003 values in buckets of 65 values (260 bytes) or 130 (bf16): sizes not multiples.
  const std::vector<float> params = Ramp(1003, 2);
  for (WeightDtype dtype : {WeightDtype::kF32, WeightDtype::kBf16}) {
    const PackedWeights packed = PackedWeights::Pack(params, 99, 7, dtype, 260, 30);
    REQUIRE(packed.manifest().buckets.size() == (dtype == WeightDtype::kF32 ? 16u : 8u));
    auto group = LocalGroup::Create(kWorld);
    std::vector<std::unique_ptr<Communicator>> comms;
    for (int r = 0; r < kWorld; ++r) comms.push_back(group->Rank(r));
    std::vector<absl::StatusOr<std::vector<float>>> got(kWorld, absl::UnknownError("not run"));
    std::vector<ReceiveStats> stats(kWorld);
    std::vector<std::thread> threads;
    for (int r = 1; r < kWorld; ++r) {
      threads.emplace_back([&, r] {
        got[r] = ReceiveWeights(comms[r].get(), 0, packed.manifest(), {1003, 99, 6}, &stats[r]);
      });
    }
    REQUIRE(BroadcastWeights(comms[0].get(), packed).ok());
    for (auto& t : threads) t.join();
    for (int r = 1; r < kWorld; ++r) {
      REQUIRE(got[r].ok());
      REQUIRE(got[r]->size() == params.size());
      CHECK(stats[r].bytes == packed.manifest().total_bytes());
      size_t bad = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        const float want =
            dtype == WeightDtype::kF32 ? params[i] : Bf16ToFloat(FloatToBf16(params[i]));
        if (Bits((*got[r])[i]) != Bits(want)) ++bad;
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("refused buckets (checksum, order, version, stale, layout) never stall the root",
          "[rollout][weight_sync]") {
  const std::vector<float> params = Ramp(600, 4);
  const PackedWeights packed = PackedWeights::Pack(params, 55, 3, WeightDtype::kF32, 400, 30);
  REQUIRE(packed.manifest().buckets.size() == 6);  // 100 values each
  const WeightTarget target{600, 55, 2};
  std::vector<BucketHeader> headers;
  std::vector<std::vector<uint8_t>> payloads;
  Split(packed, &headers, &payloads);

  SECTION("honest") {
    PairResult r = RunPair(packed.manifest(), target, headers, payloads);
    REQUIRE(r.root.ok());
    REQUIRE(r.received.ok());
    CHECK(std::memcmp(r.received->data(), params.data(), params.size() * 4) == 0);
  }
  SECTION("a flipped bit in a payload") {
    payloads[3][17] ^= 4;
    PairResult r = RunPair(packed.manifest(), target, headers, payloads);
    CHECK(r.root.ok());  // the receiver kept taking part
    CHECK(r.received.status().code() == absl::StatusCode::kDataLoss);
    CHECK(std::string(r.received.status().message()).find("bucket 3") != std::string::npos);
  }
  SECTION("buckets out of order") {
    std::swap(headers[1], headers[2]);
    std::swap(payloads[1], payloads[2]);
    PairResult r = RunPair(packed.manifest(), target, headers, payloads);
    CHECK(r.root.ok());
    CHECK(r.received.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(r.received.status().message()).find("out of order") != std::string::npos);
  }
  SECTION("a bucket of another version") {
    headers[4].version = 2;
    PairResult r = RunPair(packed.manifest(), target, headers, payloads);
    CHECK(r.root.ok());
    CHECK(r.received.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(r.received.status().message()).find("belongs to version 2") !=
          std::string::npos);
  }
  SECTION("a stale version") {
    PairResult r = RunPair(packed.manifest(), {600, 55, 3}, headers, payloads);
    CHECK(r.root.ok());
    CHECK(r.received.status().code() == absl::StatusCode::kFailedPrecondition);
  }
  SECTION("another layout") {
    PairResult r = RunPair(packed.manifest(), {600, 56, 0}, headers, payloads);
    CHECK(r.root.ok());
    CHECK(r.received.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(r.received.status().message()).find("config.json") != std::string::npos);
  }
}

// A receiver that dies mid-update: the root's broadcast times out instead of hanging.
TEST_CASE("a dead receiver makes the root's broadcast fail by its deadline",
          "[rollout][weight_sync]") {
  const std::vector<float> params = Ramp(100, 5);
  const PackedWeights packed =
      PackedWeights::Pack(params, 1, 1, WeightDtype::kF32, 100, /*timeout_s=*/0.2);
  auto group = LocalGroup::Create(2);
  auto root = group->Rank(0);
  auto recv = group->Rank(1);  // never receives
  const absl::Status s = BroadcastWeights(root.get(), packed);
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
}

// The worker side over an engine: a group member refuses a corrupt update and keeps serving the
// old weights; a good update is staged and what follows carries its version.
TEST_CASE("group member: corrupt update leaves old weights serving, good one swaps",
          "[rollout][weight_sync]") {
  const ModelConfig c = testing::MustParse(testing::TinyQwen3MoeJson());
  auto engine = testing::MakeEngine(c, 10);
  auto group = LocalGroup::Create(2);
  auto root = group->Rank(0);
  std::shared_ptr<LocalGroup> keep = group;
  WeightGroupMember member(engine.get(), [keep](const rollout::JoinWeightGroupRequest& r) {
    return absl::StatusOr<std::unique_ptr<Communicator>>(keep->Rank(r.rank()));
  });
  rollout::JoinWeightGroupRequest join;
  join.set_backend("local");
  join.set_rank(1);
  join.set_world_size(2);
  join.set_root(0);
  join.set_timeout_s(30);
  REQUIRE(member.Join(join).ok());

  SamplingParams sp;
  sp.group_size = 2;
  sp.max_new_tokens = 6;
  sp.seed = 9;
  const std::vector<RolloutPrompt> prompts = {{0, testing::RandomTokens(4, c.vocab_size, 1)}};
  auto before = engine->GenerateAll(prompts, sp);
  REQUIRE(before.ok());

  auto fresh = testing::MakeModel<float>(c, 11);
  const std::vector<float> params(fresh->params(), fresh->params() + fresh->num_params());
  const uint64_t fp = LayoutFingerprint(fresh->layout());
  auto send = [&](uint64_t version, bool corrupt, bool accepted = true) {
    const PackedWeights packed =
        PackedWeights::Pack(params, fp, version, WeightDtype::kF32, 4096, 30);
    rollout::WeightManifest proto;
    ManifestToProto(packed.manifest(), &proto);
    auto begun = member.Begin(proto);
    REQUIRE(begun.ok());
    CHECK(begun->accepted() == accepted);
    std::vector<BucketHeader> headers;
    std::vector<std::vector<uint8_t>> payloads;
    Split(packed, &headers, &payloads);
    if (corrupt) payloads.back()[0] ^= 1;
    for (size_t b = 0; b < headers.size(); ++b) {
      REQUIRE(root->Broadcast(&headers[b], sizeof(BucketHeader), 0, absl::Seconds(20)).ok());
      REQUIRE(root->Broadcast(payloads[b].data(), static_cast<int64_t>(payloads[b].size()), 0,
                              absl::Seconds(20))
                  .ok());
    }
    return member.End(version, absl::Seconds(20));
  };
  auto bad = send(1, /*corrupt=*/true);
  CHECK(bad.status().code() == absl::StatusCode::kDataLoss);
  CHECK(engine->newest_version() == 0);
  auto same = engine->GenerateAll(prompts, sp);
  REQUIRE(same.ok());
  for (size_t i = 0; i < 2; ++i) {
    CHECK((*same)[0].completions[i].weight_version == 0);
    CHECK((*same)[0].completions[i].token_ids == (*before)[0].completions[i].token_ids);
    CHECK((*same)[0].completions[i].logprobs == (*before)[0].completions[i].logprobs);
  }
  auto good = send(1, /*corrupt=*/false);
  REQUIRE(good.ok());
  CHECK(good->version() == 1);
  auto after = engine->GenerateAll(prompts, sp);
  REQUIRE(after.ok());
  // Reference: an engine built directly over the new parameters.
  auto ref_engine = testing::MakeEngine(c, 11);
  auto ref = ref_engine->GenerateAll(prompts, sp);
  REQUIRE(ref.ok());
  for (size_t i = 0; i < 2; ++i) {
    CHECK((*after)[0].completions[i].weight_version == 1);
    CHECK((*after)[0].completions[i].token_ids == (*ref)[0].completions[i].token_ids);
    CHECK((*after)[0].completions[i].logprobs == (*ref)[0].completions[i].logprobs);
  }
  // A second update of the same version is stale: refused at Begin, still drained.
  auto again = send(1, false, /*accepted=*/false);
  CHECK(again.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(member.End(7, absl::Seconds(1)).status().code() == absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace grpo
