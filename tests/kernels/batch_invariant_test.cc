// Batch-invariant mode (kernels/cpu/gemm.h BatchInvariantScope): a row's GEMM result and a query's
// attention output are bitwise independent of the other rows / queries in the call.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"

namespace grpo::cpu {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST_CASE("batch-invariant GEMM rows do not depend on M", "[kernels][batch_invariant]") {
  // N 75 and 1100: partial last panels (AVX-512: the panel form for every N).
  for (const int64_t N : {75, 1100})
    for (const int64_t K : {6, 16, 37, 512}) {
      const int64_t M_max = 70;
      const std::vector<float> A = Random(M_max * K, K), B = Random(N * K, K + 1);
      std::vector<float> full(M_max * N), part(N);
      {
        BatchInvariantScope on(true);
        LinearForward<float>(full.data(), A.data(), B.data(), nullptr, M_max, K, N);
      }
      // Row r computed alone, and inside calls of other sizes, is the same bits.
      for (const int64_t r : {0, 3, 17, 69}) {
        for (const int64_t M : {int64_t{1}, int64_t{5}, int64_t{64}}) {
          if (r >= M && M != 1) continue;
          const int64_t first = M == 1 ? r : 0;
          std::vector<float> out(M * N);
          {
            BatchInvariantScope on(true);
            LinearForward<float>(out.data(), A.data() + first * K, B.data(), nullptr, M, K, N);
          }
          const float* row = out.data() + (r - first) * N;
          INFO("N " << N << " K " << K << " row " << r << " M " << M);
          REQUIRE(std::memcmp(row, full.data() + r * N, N * sizeof(float)) == 0);
        }
      }
      // And it is a correct product (normalized error vs double).
      double err = 0, norm = 0;
      for (int64_t m = 0; m < M_max; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0;
          for (int64_t k = 0; k < K; ++k) ref += double(A[m * K + k]) * B[n * K + k];
          err += (ref - full[m * N + n]) * (ref - full[m * N + n]);
          norm += ref * ref;
        }
      }
      CHECK(norm > 0);
      CHECK(std::sqrt(err / norm) < 1e-6);
    }
  CHECK(!BatchInvariantEnabled());
}

TEST_CASE("batch-invariant attention: a query's output does not depend on the others",
          "[kernels][batch_invariant]") {
  const int64_t nh = 4, nkv = 2, hd = 16, L = 40;
  const std::vector<float> q = Random(L * nh * hd, 1), k = Random(L * nkv * hd, 2),
                           v = Random(L * nkv * hd, 3);
  std::vector<float> full(L * nh * hd), one(nh * hd);
  BatchInvariantScope on(true);
  AttnSeq<float> seq{0, L, k.data(), v.data(), L};
  AttentionForward<float>(full.data(), nullptr, q.data(), &seq, 1, nh, nkv, hd, 1.0f / 4);
  for (const int64_t p : {0, 9, 31, 39}) {
    // Decode shape: query p alone with keys 0..p (a KV cache of p + 1 rows).
    AttnSeq<float> dec{0, 1, k.data(), v.data(), p + 1};
    AttentionForward<float>(one.data(), nullptr, q.data() + p * nh * hd, &dec, 1, nh, nkv, hd,
                            1.0f / 4);
    INFO("position " << p);
    REQUIRE(std::memcmp(one.data(), full.data() + p * nh * hd, nh * hd * sizeof(float)) == 0);
  }
}


TEST_CASE("batch-invariant attention: chunked forward, decode, prefix chunks and packing agree",
          "[kernels][batch_invariant]") {
  // The forward runs a sequence's tokens in chunks of up to 8 that share K/V loads; decode runs
  // one token (its kv heads split over tasks when a call has few tokens); a prefix-cache chunk
  // starts its chunks mid-sequence. All must give each query the same bits, whatever else is
  // packed in the call. Shapes: g 1, 2, 3, 4; hd 64 and 16 (vector kernels) and 24 (float
  // fallback); L 37 (chunks 8 x 4 + 5, key counts across block edges).
  struct Shape {
    int64_t nh, nkv, hd;
  };
  for (const Shape sh : {Shape{8, 4, 64}, Shape{4, 4, 16}, Shape{6, 2, 16}, Shape{8, 2, 24},
                         Shape{12, 3, 64}}) {
    const int64_t nh = sh.nh, nkv = sh.nkv, hd = sh.hd, L = 37;
    const int64_t qrow = nh * hd, kvrow = nkv * hd;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // Sequence 0 (the one checked) and 24 others of 1..40 tokens packed after it: enough chunks
    // that the packed call gives each task all kv heads on a few threads.
    std::vector<int64_t> lens = {L};
    for (int64_t i = 0; i < 24; ++i) lens.push_back(1 + (i * 7) % 40);
    int64_t T = 0;
    for (int64_t n : lens) T += n;
    const std::vector<float> q = Random(T * qrow, hd + 1), k = Random(T * kvrow, hd + 2),
                             v = Random(T * kvrow, hd + 3);
    BatchInvariantScope on(true);

    std::vector<float> alone(L * qrow), alone_lse(L * nh);
    AttnSeq<float> seq{0, L, k.data(), v.data(), L};
    AttentionForward<float>(alone.data(), alone_lse.data(), q.data(), &seq, 1, nh, nkv, hd, scale);

    std::vector<AttnSeq<float>> packed;
    int64_t begin = 0;
    for (int64_t n : lens) {
      packed.push_back({begin, n, k.data() + begin * kvrow, v.data() + begin * kvrow, n});
      begin += n;
    }
    std::vector<float> all(T * qrow), all_lse(T * nh);
    AttentionForward<float>(all.data(), all_lse.data(), q.data(), packed.data(),
                            static_cast<int64_t>(packed.size()), nh, nkv, hd, scale);
    INFO("nh " << nh << " nkv " << nkv << " hd " << hd);
    REQUIRE(std::memcmp(all.data(), alone.data(), alone.size() * sizeof(float)) == 0);
    REQUIRE(std::memcmp(all_lse.data(), alone_lse.data(), alone_lse.size() * sizeof(float)) == 0);

    // Tokens 13..25 as a prefix-cache chunk (kv 26): its chunks start at 13, not at 8 or 16.
    const int64_t p0 = 13, n = 13;
    std::vector<float> part(n * qrow), part_lse(n * nh);
    AttnSeq<float> chunk{0, n, k.data(), v.data(), p0 + n};
    AttentionForward<float>(part.data(), part_lse.data(), q.data() + p0 * qrow, &chunk, 1, nh, nkv,
                            hd, scale);
    REQUIRE(std::memcmp(part.data(), alone.data() + p0 * qrow, part.size() * sizeof(float)) == 0);
    REQUIRE(std::memcmp(part_lse.data(), alone_lse.data() + p0 * nh,
                        part_lse.size() * sizeof(float)) == 0);

    // Every token decoded alone against a KV cache of p + 1 rows.
    std::vector<float> one(qrow), one_lse(nh);
    for (int64_t p = 0; p < L; ++p) {
      AttnSeq<float> dec{0, 1, k.data(), v.data(), p + 1};
      AttentionForward<float>(one.data(), one_lse.data(), q.data() + p * qrow, &dec, 1, nh, nkv,
                              hd, scale);
      INFO("position " << p);
      REQUIRE(std::memcmp(one.data(), alone.data() + p * qrow, qrow * sizeof(float)) == 0);
      REQUIRE(std::memcmp(one_lse.data(), alone_lse.data() + p * nh, nh * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("pre-packed weights give LinearForward's bits, for any shape", "[kernels][batch_invariant]") {
  if (!PackedWeightsSupported()) {
    WARN("SKIPPED: pre-packed weights need an AVX-512 build");
    return;
  }
  // N 16 (a router), 75 (a partial last panel), 1100; M across register blocks and row chunks.
  for (const int64_t N : {16, 75, 1100})
    for (const int64_t K : {7, 37, 256}) {
      const std::vector<float> W = Random(N * K, N + K);
      std::vector<float> packed(PackedWeightFloats(N, K), -1.0f);
      PackWeight(W.data(), N, K, packed.data());
      for (const int64_t M : {1, 13, 250}) {
        const std::vector<float> x = Random(M * K, M);
        std::vector<float> want(M * N), got(M * N, 7.0f);
        {
          BatchInvariantScope on(true);
          LinearForward<float>(want.data(), x.data(), W.data(), nullptr, M, K, N);
        }
        PackedLinearForward(got.data(), x.data(), packed.data(), nullptr, M, K, N);
        INFO("N " << N << " K " << K << " M " << M);
        REQUIRE(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
      }
    }
}

TEST_CASE("grouped products: packed, unpacked and per group agree bitwise",
          "[kernels][batch_invariant]") {
  // Groups of 13, 0, 1, 30 and 250 rows (empty groups and groups over a row chunk); enough work
  // that the tasks run on several threads.
  const std::vector<int64_t> rows = {13, 0, 1, 30, 250};
  std::vector<int64_t> begin = {0};
  for (int64_t r : rows) begin.push_back(begin.back() + r);
  const int64_t G = static_cast<int64_t>(rows.size()), T = begin.back();
  for (const auto& [in, out] : {std::pair<int64_t, int64_t>{256, 75}, {96, 512}}) {
    const std::vector<float> W = Random(G * out * in, in), x = Random(T * in, out);
    std::vector<float> per_group(T * out), grouped(T * out, 3.0f);
    {
      BatchInvariantScope on(true);
      for (int64_t g = 0; g < G; ++g) {
        LinearForward<float>(per_group.data() + begin[g] * out, x.data() + begin[g] * in,
                             W.data() + g * out * in, nullptr, rows[g], in, out);
      }
      GroupedLinearForward<float>(grouped.data(), x.data(), W.data(), out * in, begin.data(), G,
                                  in, out);
    }
    INFO("in " << in << " out " << out);
    REQUIRE(std::memcmp(grouped.data(), per_group.data(), grouped.size() * sizeof(float)) == 0);
    if (!PackedWeightsSupported()) continue;
    const int64_t stride = PackedWeightFloats(out, in);
    std::vector<float> packed(G * stride);
    for (int64_t g = 0; g < G; ++g)
      PackWeight(W.data() + g * out * in, out, in, packed.data() + g * stride);
    std::vector<float> from_packed(T * out, 5.0f);
    PackedGroupedLinearForward(from_packed.data(), x.data(), packed.data(), stride, begin.data(),
                               G, in, out);
    REQUIRE(std::memcmp(from_packed.data(), per_group.data(), grouped.size() * sizeof(float)) ==
            0);
    // Gathering (a MoE layer's dispatch): the rows of x scattered over a larger source, reached
    // through x_rows, give the same bits as x itself.
    const int64_t S = T + 7;
    std::vector<float> source = Random(S * in, 3);
    std::vector<int32_t> x_rows(T);
    for (int64_t r = 0; r < T; ++r) {
      x_rows[r] = static_cast<int32_t>((r * 37 + 5) % S);  // 37 is prime to S: no repeats
      std::copy_n(x.data() + r * in, in, source.data() + x_rows[r] * in);
    }
    std::vector<float> gathered(T * out, 7.0f);
    PackedGroupedLinearForward(gathered.data(), source.data(), packed.data(), stride,
                               begin.data(), G, in, out, x_rows.data());
    REQUIRE(std::memcmp(gathered.data(), per_group.data(), gathered.size() * sizeof(float)) == 0);
  }
}

}  // namespace
}  // namespace grpo::cpu
