#include "comm/local_communicator.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/match.h"

using grpo::comm::Communicator;
using grpo::comm::LocalGroup;

namespace {

// Runs fn(rank, comm) on `world` threads, one per rank.
template <typename Fn>
void OnRanks(int world, Fn fn) {
  auto group = LocalGroup::Create(world);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < world; ++r) comms.push_back(group->Rank(r));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { fn(r, *comms[r]); });
  for (auto& t : threads) t.join();
}

}  // namespace

TEST_CASE("local all-reduce sums in rank order, identically on every rank", "[comm]") {
  constexpr int kWorld = 3;
  constexpr int64_t kN = 1001;
  std::vector<std::vector<float>> data(kWorld, std::vector<float>(kN));
  for (int r = 0; r < kWorld; ++r)
    for (int64_t i = 0; i < kN; ++i) data[r][i] = (r == 0 ? 1e8f : 1.0f) + 0.25f * i + r;
  std::vector<float> expect(kN);
  for (int64_t i = 0; i < kN; ++i) expect[i] = (data[0][i] + data[1][i]) + data[2][i];
  std::vector<absl::Status> st(kWorld);
  OnRanks(kWorld,
          [&](int r, Communicator& c) { st[r] = c.AllReduceSum(data[r].data(), kN, absl::Seconds(20)); });
  for (int r = 0; r < kWorld; ++r) {
    REQUIRE(st[r].ok());
    REQUIRE(std::memcmp(data[r].data(), expect.data(), kN * sizeof(float)) == 0);
  }
}

TEST_CASE("local broadcast, barrier and many collectives in a row", "[comm]") {
  constexpr int kWorld = 4;
  std::vector<std::vector<uint8_t>> buf(kWorld, std::vector<uint8_t>(257));
  for (int r = 0; r < kWorld; ++r)
    for (size_t i = 0; i < buf[r].size(); ++i) buf[r][i] = static_cast<uint8_t>(r * 31 + i);
  std::vector<float> sums(kWorld, 0);
  std::vector<absl::Status> st(kWorld);
  OnRanks(kWorld, [&](int r, Communicator& c) {
    REQUIRE(c.rank() == r);
    REQUIRE(c.world_size() == kWorld);
    st[r] = c.Broadcast(buf[r].data(), 257, 2, absl::Seconds(20));
    for (int i = 0; i < 200 && st[r].ok(); ++i) {
      float v = static_cast<float>(r + i);
      st[r] = c.AllReduceSum(&v, 1, absl::Seconds(20));
      sums[r] += v;
      if (st[r].ok() && i % 50 == 0) st[r] = c.Barrier(absl::Seconds(20));
    }
  });
  float expect = 0;
  for (int i = 0; i < 200; ++i) expect += static_cast<float>(0 + 1 + 2 + 3 + 4 * i);
  for (int r = 0; r < kWorld; ++r) {
    REQUIRE(st[r].ok());
    REQUIRE(buf[r] == buf[2]);
    REQUIRE(sums[r] == expect);
  }
  REQUIRE(buf[0][0] == 62);
}

TEST_CASE("local collective: a dead peer times out, then every rank sees ABORTED", "[comm]") {
  auto group = LocalGroup::Create(3);
  auto c0 = group->Rank(0), c1 = group->Rank(1), c2 = group->Rank(2);
  absl::Status s1;
  std::thread t([&] {
    float v = 1;
    // Rank 1 waits long; rank 0's short deadline aborts the group and releases it.
    s1 = c1->AllReduceSum(&v, 1, absl::Seconds(60));
  });
  float v = 1;
  absl::Status s0 = c0->AllReduceSum(&v, 1, absl::Milliseconds(200));  // rank 2 never comes
  t.join();
  REQUIRE(s0.code() == absl::StatusCode::kDeadlineExceeded);
  // The error names who never came (rank 2), not the rank that was merely waiting (1).
  INFO(s0.message());
  CHECK(absl::StrContains(s0.message(), "for rank 2, which never came"));
  REQUIRE(s1.code() == absl::StatusCode::kAborted);
  CHECK(absl::StrContains(s1.message(), "rank 2"));
  REQUIRE(c2->aborted());
  REQUIRE(c2->Barrier(absl::Seconds(1)).code() == absl::StatusCode::kAborted);
}

TEST_CASE("local collective: mismatched calls and Abort()", "[comm]") {
  auto group = LocalGroup::Create(2);
  auto c0 = group->Rank(0), c1 = group->Rank(1);
  absl::Status s1;
  std::thread t([&] {
    float v[4] = {};
    s1 = c1->AllReduceSum(v, 4, absl::Seconds(20));
  });
  float v[3] = {};
  absl::Status s0 = c0->AllReduceSum(v, 3, absl::Seconds(20));
  t.join();
  // Both see the mismatch (or one sees it and the other the abort it caused).
  REQUIRE(!s0.ok());
  REQUIRE(!s1.ok());
  REQUIRE((s0.code() == absl::StatusCode::kInvalidArgument ||
           s1.code() == absl::StatusCode::kInvalidArgument));
  REQUIRE(c0->aborted());

  auto g2 = LocalGroup::Create(2);
  auto d0 = g2->Rank(0), d1 = g2->Rank(1);
  std::thread t2([&] { s1 = d1->Barrier(absl::Seconds(60)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  d0->Abort();
  t2.join();
  REQUIRE(s1.code() == absl::StatusCode::kAborted);
  REQUIRE(d0->Broadcast(v, 4, 5, absl::Seconds(1)).code() == absl::StatusCode::kInvalidArgument);
}
