// Every CUDA op against its CPU twin (kernels/cpu) or a plain host loop. Part of grpo_gpu_tests
// (gpu_main.cc skips it visibly without a GPU). Metrics, per op:
//  - exact: GEMMs on small integers (exact in bf16 and fp32), top-k ids, dispatch order, argmax;
//  - tol + rel*|ref| per element for fp32 ops whose only difference is summation order (1e-5);
//    bf16 outputs get rel 2^-8 (one bf16 rounding) on top;
//  - normalized error ||got-ref||/||ref|| for reductions (attention backward, logprob backward);
//  - NaN/Inf parity inside every comparison (NormErr/CheckClose).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace grpo {
namespace {

using namespace grpo::testing;
using cuda::bf16_bits;
constexpr double kBf16 = 1.0 / 256;  // relative size of one bf16 rounding

std::vector<float> SmallInts(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

TEST_CASE("cuda GemmBf16 is exact on small integers in all layouts", "[cuda][gpu]") {
  const int64_t M = 37, N = 45, K = 70;
  for (int layout = 0; layout < 4; ++layout) {
    const bool ta = layout & 2, tb = layout & 1;
    std::vector<float> A = SmallInts(M * K, 1 + layout), B = SmallInts(K * N, 9 + layout);
    std::vector<float> C0 = SmallInts(M * N, 20), ref = C0;
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    cpu::Gemm<float>(ta, tb, M, N, K, 2.f, A.data(), lda, B.data(), ldb, 1.f, ref.data(), N);
    auto dA = Upload(ToBf16(A)), dB = Upload(ToBf16(B)), dC = Upload(C0);
    REQUIRE(cuda::GemmBf16(ta, tb, M, N, K, 2.f, dA.as<bf16_bits>(), lda, dB.as<bf16_bits>(), ldb,
                           1.f, dC.as<float>(), N)
                .ok());
    CheckClose("gemm bf16 layout " + std::to_string(layout), Download<float>(dC, M * N), ref, 0, 0);
    auto fA = Upload(A), fB = Upload(B), fC = Upload(C0);
    REQUIRE(cuda::GemmF32(ta, tb, M, N, K, 2.f, fA.as<float>(), lda, fB.as<float>(), ldb, 1.f,
                          fC.as<float>(), N)
                .ok());
    CheckClose("gemm f32 layout " + std::to_string(layout), Download<float>(fC, M * N), ref, 0, 0);
  }
}

TEST_CASE("cuda grouped expert GEMMs are exact on small integers", "[cuda][gpu]") {
  const int64_t G = 4, in = 24, out = 40;
  const std::vector<int64_t> begin = {0, 5, 5, 17, 30};  // group 1 is empty
  const int64_t R = begin.back();
  std::vector<float> x = SmallInts(R * in, 3), W = SmallInts(G * out * in, 4),
                     dy = SmallInts(R * out, 5);
  std::vector<float> y(R * out), dx(R * in), dW(G * out * in, 1.f);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = begin[g], n = begin[g + 1] - r0;
    if (n == 0) continue;
    cpu::LinearForward<float>(y.data() + r0 * out, x.data() + r0 * in, W.data() + g * out * in,
                              nullptr, n, in, out);
    cpu::LinearBackward<float>(dx.data() + r0 * in, dW.data() + g * out * in, nullptr,
                               dy.data() + r0 * out, x.data() + r0 * in, W.data() + g * out * in, n,
                               in, out);
  }
  auto dX = Upload(ToBf16(x)), dWt = Upload(ToBf16(W)), dDy = Upload(ToBf16(dy));
  auto dY = Zeros<float>(R * out), dDx = Zeros<float>(R * in);
  auto dDw = Upload(std::vector<float>(G * out * in, 1.f));
  REQUIRE(cuda::GroupedLinearForward(dY.as<float>(), dX.as<bf16_bits>(), dWt.as<bf16_bits>(),
                                     begin.data(), G, in, out, 0.f)
              .ok());
  REQUIRE(cuda::GroupedLinearBackwardData(dDx.as<float>(), dDy.as<bf16_bits>(), dWt.as<bf16_bits>(),
                                          begin.data(), G, in, out)
              .ok());
  REQUIRE(cuda::GroupedLinearBackwardWeight(dDw.as<float>(), dDy.as<bf16_bits>(),
                                            dX.as<bf16_bits>(), begin.data(), G, in, out)
              .ok());
  CheckClose("grouped y", Download<float>(dY, R * out), y, 0, 0);
  CheckClose("grouped dx", Download<float>(dDx, R * in), dx, 0, 0);
  CheckClose("grouped dW", Download<float>(dDw, G * out * in), dW, 0, 0);
}

TEST_CASE("cuda batched (padded) expert GEMMs equal the grouped ones", "[cuda][gpu]") {
  const int64_t G = 3, cap = 16, in = 24, out = 40, R = G * cap;
  // Padded rows of x and dy are zero, as the model keeps them.
  std::vector<float> x = SmallInts(R * in, 13), W = SmallInts(G * out * in, 14),
                     dy = SmallInts(R * out, 15);
  const int64_t counts[G] = {5, 0, 16};
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = counts[g]; r < cap; ++r) {
      std::fill_n(&x[(g * cap + r) * in], in, 0.f);
      std::fill_n(&dy[(g * cap + r) * out], out, 0.f);
    }
  const std::vector<int64_t> begin = {0, cap, 2 * cap, 3 * cap};
  auto dX = Upload(ToBf16(x)), dWt = Upload(ToBf16(W)), dDy = Upload(ToBf16(dy));
  auto y1 = Zeros<float>(R * out), y2 = Zeros<float>(R * out), dx1 = Zeros<float>(R * in),
       dx2 = Zeros<float>(R * in), dw1 = Upload(std::vector<float>(G * out * in, 1.f)),
       dw2 = Upload(std::vector<float>(G * out * in, 1.f));
  const auto* xb = dX.as<bf16_bits>();
  const auto* wb = dWt.as<bf16_bits>();
  const auto* yb = dDy.as<bf16_bits>();
  REQUIRE(cuda::GroupedLinearForward(y1.as<float>(), xb, wb, begin.data(), G, in, out, 0.f).ok());
  REQUIRE(cuda::BatchedLinearForward(y2.as<float>(), xb, wb, G, cap, in, out).ok());
  REQUIRE(cuda::GroupedLinearBackwardData(dx1.as<float>(), yb, wb, begin.data(), G, in, out).ok());
  REQUIRE(cuda::BatchedLinearBackwardData(dx2.as<float>(), yb, wb, G, cap, in, out).ok());
  REQUIRE(
      cuda::GroupedLinearBackwardWeight(dw1.as<float>(), yb, xb, begin.data(), G, in, out).ok());
  REQUIRE(cuda::BatchedLinearBackwardWeight(dw2.as<float>(), yb, xb, G, cap, in, out).ok());
  CheckClose("batched y", Download<float>(y2, R * out), Download<float>(y1, R * out), 0, 0);
  CheckClose("batched dx", Download<float>(dx2, R * in), Download<float>(dx1, R * in), 0, 0);
  CheckClose("batched dW", Download<float>(dw2, G * out * in), Download<float>(dw1, G * out * in),
             0, 0);
}

// The tensor-core expert GEMM that reads the group ranges on the device, on small integers (every
// product and sum exact in fp32, so exact against the CPU): group row ranges from device counts
// (ExpertBeginFromCounts), an empty group, a group larger than the row bound (covered by the
// stride over row tiles), widths that are not tile multiples, and both loaders (in % 8 == 0:
// 16-byte loads; else element loads).
TEST_CASE("cuda grouped expert GEMM with device row ranges matches the CPU", "[cuda][gpu]") {
  for (int64_t in : {64, 20}) {
    INFO("in " << in);
    const int64_t out = 72, max_rows = 64;
    const std::vector<int32_t> counts = {3, 0, 150, 64, 1};
    const int64_t G = static_cast<int64_t>(counts.size());
    std::vector<int64_t> begin(G + 1, 0);
    for (int64_t g = 0; g < G; ++g) begin[g + 1] = begin[g] + counts[g];
    const int64_t R = begin.back();
    std::vector<float> x = SmallInts(R * in, 23), W = SmallInts(G * out * in, 24);
    std::vector<float> y(R * out);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r0 = begin[g], n = begin[g + 1] - r0;
      if (n == 0) continue;
      cpu::LinearForward<float>(y.data() + r0 * out, x.data() + r0 * in, W.data() + g * out * in,
                                nullptr, n, in, out);
    }
    auto dX = Upload(ToBf16(x)), dWt = Upload(ToBf16(W)), dCounts = Upload(counts);
    auto dBegin = Zeros<int64_t>(G + 1);
    auto dY = Upload(std::vector<float>(R * out, 7.f));  // every element must be written
    REQUIRE(cuda::ExpertBeginFromCounts(dBegin.as<int64_t>(), dCounts.as<int32_t>(), G).ok());
    CHECK(Download<int64_t>(dBegin, G + 1) == begin);
    REQUIRE(cuda::GroupedLinearForwardDevice(dY.as<float>(), dX.as<bf16_bits>(),
                                             dWt.as<bf16_bits>(), dBegin.as<int64_t>(), G, max_rows,
                                             in, out)
                .ok());
    CheckClose("grouped (device ranges) y", Download<float>(dY, R * out), y, 0, 0);
  }
}

TEST_CASE("cuda embedding forward/backward match the CPU", "[cuda][gpu]") {
  const int64_t V = 50, H = 33, T = 80;
  std::vector<float> table = RoundBf16(Randn(V * H, 1));
  std::vector<int32_t> tok(T);
  for (int64_t t = 0; t < T; ++t) tok[t] = static_cast<int32_t>((t * 7) % V);  // repeats
  std::vector<float> ref(T * H);
  cpu::EmbeddingForward<float>(ref.data(), tok.data(), table.data(), T, H);
  auto dT = Upload(ToBf16(table));
  auto dTok = Upload(tok);
  auto dX = Zeros<float>(T * H);
  REQUIRE(
      cuda::EmbeddingForward(dX.as<float>(), dTok.as<int32_t>(), dT.as<bf16_bits>(), T, H).ok());
  CheckClose("embedding fwd", Download<float>(dX, T * H), ref, 0, 0);  // a copy: exact
  std::vector<float> dx = Randn(T * H, 2), dref(V * H, 0.5f);
  cpu::EmbeddingBackward<float>(dref.data(), tok.data(), dx.data(), T, H, V);
  auto dDx = Upload(dx);
  auto dTab = Upload(std::vector<float>(V * H, 0.5f));
  REQUIRE(
      cuda::EmbeddingBackward(dTab.as<float>(), dTok.as<int32_t>(), dDx.as<float>(), T, H).ok());
  CheckClose("embedding bwd", Download<float>(dTab, V * H), dref, 1e-5, 1e-5);
}

TEST_CASE("cuda RMSNorm forward/backward match the CPU", "[cuda][gpu]") {
  for (int64_t C : {16, 1000}) {
    const int64_t T = 37;
    std::vector<float> x = Randn(T * C, 3, 2.f), w = Randn(C, 4, 0.1f);
    for (auto& v : w) v += 1.f;
    std::vector<float> ref(T * C), rstd(T);
    cpu::RmsNormForward<float>(ref.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f);
    auto dx_ = Upload(x), dw_ = Upload(w);
    auto out = Zeros<float>(T * C), r = Zeros<float>(T);
    auto out16 = Zeros<bf16_bits>(T * C);
    REQUIRE(cuda::RmsNormForward(out.as<float>(), out16.as<bf16_bits>(), r.as<float>(),
                                 dx_.as<float>(), dw_.as<float>(), T, C, 1e-6f)
                .ok());
    CheckClose("rmsnorm out", Download<float>(out, T * C), ref, 1e-5, 1e-5);
    CheckClose("rmsnorm out bf16", FromBf16(Download<bf16_bits>(out16, T * C)), ref, 1e-6, kBf16);
    CheckClose("rmsnorm rstd", Download<float>(r, T), rstd, 0, 1e-5);
    std::vector<float> dy = Randn(T * C, 5), dxr(T * C, 0.25f), dwr(C, 0.5f);
    cpu::RmsNormBackward<float>(dxr.data(), dwr.data(), dy.data(), x.data(), w.data(), rstd.data(),
                                T, C);
    auto ddy = Upload(dy), ddx = Upload(std::vector<float>(T * C, 0.25f)),
         ddw = Upload(std::vector<float>(C, 0.5f));
    REQUIRE(cuda::RmsNormBackward(ddx.as<float>(), ddw.as<float>(), ddy.as<float>(),
                                  dx_.as<float>(), dw_.as<float>(), r.as<float>(), T, C)
                .ok());
    CheckClose("rmsnorm dx", Download<float>(ddx, T * C), dxr, 1e-5, 1e-4);
    CHECK(NormErr("rmsnorm dw", Download<float>(ddw, C), dwr) < 1e-5);
  }
}

// The attention input block: bias, q/k RMSNorm, RoPE against the CPU ops composed.
TEST_CASE("cuda QkvForward/Backward match CPU RMSNorm + RoPE", "[cuda][gpu]") {
  const int64_t T = 29, nh = 4, nkv = 2, hd = 16, half = hd / 2, qd = nh * hd, kvd = nkv * hd,
                qkvd = qd + 2 * kvd, max_pos = 40;
  std::vector<float> qkv = Randn(T * qkvd, 6), bias = Randn(qkvd, 7, 0.3f), qn = Randn(hd, 8, 0.2f),
                     kn = Randn(hd, 9, 0.2f);
  for (auto& v : qn) v += 1.f;
  for (auto& v : kn) v += 1.f;
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>((t * 5) % max_pos);
  std::vector<float> inv(half);
  for (int64_t j = 0; j < half; ++j) inv[j] = std::pow(10000.f, -2.f * j / hd);
  std::vector<float> cs(max_pos * half), sn(max_pos * half);
  cpu::RopeTable<float>(cs.data(), sn.data(), inv.data(), max_pos, half);
  // CPU reference.
  std::vector<float> qr(T * qd), kr(T * kvd), vr(T * kvd);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < qkvd; ++j) {
      const float x = qkv[t * qkvd + j] + bias[j];
      if (j < qd)
        qr[t * qd + j] = x;
      else if (j < qd + kvd)
        kr[t * kvd + j - qd] = x;
      else
        vr[t * kvd + j - qd - kvd] = x;
    }
  std::vector<float> q(T * qd), k(T * kvd), rq(T * nh), rk(T * nkv);
  cpu::RmsNormForward<float>(q.data(), rq.data(), qr.data(), qn.data(), T * nh, hd, 1e-6f);
  cpu::RmsNormForward<float>(k.data(), rk.data(), kr.data(), kn.data(), T * nkv, hd, 1e-6f);
  cpu::RopeForward<float>(q.data(), pos.data(), cs.data(), sn.data(), T, nh, hd);
  cpu::RopeForward<float>(k.data(), pos.data(), cs.data(), sn.data(), T, nkv, hd);

  auto dqkv = Upload(qkv), db = Upload(bias), dqn = Upload(qn), dkn = Upload(kn),
       dpos = Upload(pos), dcs = Upload(cs), dsn = Upload(sn);
  auto gq = Zeros<float>(T * qd), grq = Zeros<float>(T * nh), grk = Zeros<float>(T * nkv);
  auto gk = Zeros<bf16_bits>(T * kvd), gv = Zeros<bf16_bits>(T * kvd);
  const cuda::QkvDims dims{T, nh, nkv, hd};
  REQUIRE(cuda::QkvForward(gq.as<float>(), gk.as<bf16_bits>(), gv.as<bf16_bits>(), grq.as<float>(),
                           grk.as<float>(), dqkv.as<float>(), db.as<float>(), dqn.as<float>(),
                           dkn.as<float>(), dpos.as<int32_t>(), nullptr, dcs.as<float>(),
                           dsn.as<float>(), dims, 1e-6f)
              .ok());
  CheckClose("qkv q", Download<float>(gq, T * qd), q, 1e-5, 1e-5);
  CheckClose("qkv k (bf16)", FromBf16(Download<bf16_bits>(gk, T * kvd)), k, 1e-6, kBf16);
  CheckClose("qkv v (bf16)", FromBf16(Download<bf16_bits>(gv, T * kvd)), vr, 1e-6, kBf16);
  CheckClose("qkv rstd_q", Download<float>(grq, T * nh), rq, 0, 1e-5);

  // Backward: RoPE^T then RMSNorm backward, packed as [dq | dk | dv].
  std::vector<float> gq_in = Randn(T * qd, 10), gk_in = Randn(T * kvd, 11),
                     gv_in = Randn(T * kvd, 12);
  std::vector<float> a = gq_in, b = gk_in;
  cpu::RopeBackward<float>(a.data(), pos.data(), cs.data(), sn.data(), T, nh, hd);
  cpu::RopeBackward<float>(b.data(), pos.data(), cs.data(), sn.data(), T, nkv, hd);
  std::vector<float> dqr(T * qd, 0.f), dkr(T * kvd, 0.f), dqn_ref(hd, 0.f), dkn_ref(hd, 0.f);
  cpu::RmsNormBackward<float>(dqr.data(), dqn_ref.data(), a.data(), qr.data(), qn.data(), rq.data(),
                              T * nh, hd);
  cpu::RmsNormBackward<float>(dkr.data(), dkn_ref.data(), b.data(), kr.data(), kn.data(), rk.data(),
                              T * nkv, hd);
  std::vector<float> ref(T * qkvd);
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(dqr.data() + t * qd, qd, ref.data() + t * qkvd);
    std::copy_n(dkr.data() + t * kvd, kvd, ref.data() + t * qkvd + qd);
    std::copy_n(gv_in.data() + t * kvd, kvd, ref.data() + t * qkvd + qd + kvd);
  }
  auto ddq = Upload(gq_in), ddk = Upload(gk_in), ddv = Upload(gv_in);
  auto out = Zeros<float>(T * qkvd), gqn = Zeros<float>(hd), gkn = Zeros<float>(hd);
  REQUIRE(cuda::QkvBackward(out.as<float>(), gqn.as<float>(), gkn.as<float>(), ddq.as<float>(),
                            ddk.as<float>(), ddv.as<float>(), dqkv.as<float>(), db.as<float>(),
                            dqn.as<float>(), dkn.as<float>(), grq.as<float>(), grk.as<float>(),
                            dpos.as<int32_t>(), dcs.as<float>(), dsn.as<float>(), dims)
              .ok());
  CheckClose("qkv backward", Download<float>(out, T * qkvd), ref, 1e-5, 1e-4);
  CHECK(NormErr("q_norm dw", Download<float>(gqn, hd), dqn_ref) < 1e-5);
  CHECK(NormErr("k_norm dw", Download<float>(gkn, hd), dkn_ref) < 1e-5);
}

struct AttnCase {
  int64_t nh = 4, nkv = 2, hd = 64;
  std::vector<int64_t> lens = {70, 1, 33, 128};
  int64_t T() const { return std::accumulate(lens.begin(), lens.end(), int64_t{0}); }
};

TEST_CASE("cuda attention forward matches the CPU (training, prefix cache, decode)",
          "[cuda][gpu]") {
  for (int64_t hd : {16, 64, 128}) {
    AttnCase c;
    c.hd = hd;
    const int64_t T = c.T(), qd = c.nh * hd, kvd = c.nkv * hd;
    const float scale = 1.f / std::sqrt(float(hd));
    std::vector<float> q = Randn(T * qd, 20, 1.5f), k = RoundBf16(Randn(T * kvd, 21, 1.5f)),
                       v = RoundBf16(Randn(T * kvd, 22));
    std::vector<cpu::AttnSeq<float>> cs;
    std::vector<cuda::AttnSeq> gs;
    int64_t b = 0;
    for (int64_t L : c.lens) {
      cs.push_back({b, L, k.data() + b * kvd, v.data() + b * kvd, L});
      gs.push_back({b, L, b, L});
      b += L;
    }
    // A prefix-cache entry: the last 5 queries of sequence 0 over its 70 keys (decode-like).
    cs.push_back({T, 5, k.data(), v.data(), 70});
    gs.push_back({T, 5, 0, 70});
    std::vector<float> q2 = q;
    q2.insert(q2.end(), q.begin() + 65 * qd, q.begin() + 70 * qd);
    const int64_t Tq = T + 5;
    std::vector<float> ref(Tq * qd), lse(Tq * c.nh);
    cpu::AttentionForward<float>(ref.data(), lse.data(), q2.data(), cs.data(), cs.size(), c.nh,
                                 c.nkv, hd, scale);
    auto dq = Upload(q2), dk = Upload(ToBf16(k)), dv = Upload(ToBf16(v));
    auto out = Zeros<bf16_bits>(Tq * qd), dl = Zeros<float>(Tq * c.nh);
    REQUIRE(cuda::AttentionForward(out.as<bf16_bits>(), dl.as<float>(), dq.as<float>(),
                                   dk.as<bf16_bits>(), dv.as<bf16_bits>(), gs, c.nh, c.nkv, hd,
                                   scale)
                .ok());
    const std::string tag = " hd=" + std::to_string(hd);
    CheckClose("attn out" + tag, FromBf16(Download<bf16_bits>(out, Tq * qd)), ref, 1e-5, kBf16);
    CheckClose("attn lse" + tag, Download<float>(dl, Tq * c.nh), lse, 1e-5, 1e-5);
    // Decode: one query per sequence over a cache (the 5th query of the prefix entry alone).
    std::vector<cuda::AttnSeq> one = {{0, 1, 0, 70}};
    auto dq1 = Upload(std::vector<float>(q.begin() + 69 * qd, q.begin() + 70 * qd));
    auto o1 = Zeros<bf16_bits>(qd);
    REQUIRE(cuda::AttentionForward(o1.as<bf16_bits>(), nullptr, dq1.as<float>(), dk.as<bf16_bits>(),
                                   dv.as<bf16_bits>(), one, c.nh, c.nkv, hd, scale)
                .ok());
    CheckClose("attn decode" + tag, FromBf16(Download<bf16_bits>(o1, qd)),
               std::vector<float>(ref.begin() + 69 * qd, ref.begin() + 70 * qd), 1e-5, kBf16);
    // A shared prefix read in place (a rollout group's sample): the last 5 queries of sequence 3
    // (128 keys at rows s3..) with keys [0, 40) at s3.. and [40, 128) in a copy appended after
    // the T packed rows. Bitwise the contiguous result: only where the rows are read changes.
    const int64_t s3 = T - 128;
    std::vector<float> k3 = k, v3 = v;
    k3.insert(k3.end(), k.begin() + (s3 + 40) * kvd, k.begin() + T * kvd);
    v3.insert(v3.end(), v.begin() + (s3 + 40) * kvd, v.begin() + T * kvd);
    auto dk3 = Upload(ToBf16(k3)), dv3 = Upload(ToBf16(v3));
    auto dq3 = Upload(std::vector<float>(q.begin() + (T - 5) * qd, q.begin() + T * qd));
    auto whole = Zeros<bf16_bits>(5 * qd), split = Zeros<bf16_bits>(5 * qd);
    auto lw = Zeros<float>(5 * c.nh), ls = Zeros<float>(5 * c.nh);
    const std::vector<cuda::AttnSeq> w3 = {{0, 5, s3, 128}};
    const std::vector<cuda::AttnSeq> p3 = {{0, 5, T, 128, s3, 40}};
    REQUIRE(cuda::AttentionForward(whole.as<bf16_bits>(), lw.as<float>(), dq3.as<float>(),
                                   dk3.as<bf16_bits>(), dv3.as<bf16_bits>(), w3, c.nh, c.nkv, hd,
                                   scale)
                .ok());
    REQUIRE(cuda::AttentionForward(split.as<bf16_bits>(), ls.as<float>(), dq3.as<float>(),
                                   dk3.as<bf16_bits>(), dv3.as<bf16_bits>(), p3, c.nh, c.nkv, hd,
                                   scale)
                .ok());
    CHECK(Download<bf16_bits>(split, 5 * qd) == Download<bf16_bits>(whole, 5 * qd));
    CHECK(Download<float>(ls, 5 * c.nh) == Download<float>(lw, 5 * c.nh));
    CheckClose("attn shared prefix" + tag, FromBf16(Download<bf16_bits>(split, 5 * qd)),
               std::vector<float>(ref.begin() + (T - 5) * qd, ref.begin() + T * qd), 1e-5, kBf16);
    // A shared prefix longer than the keys before the queries is refused.
    const std::vector<cuda::AttnSeq> bad = {{0, 5, T, 128, s3, 124}};
    CHECK(cuda::AttentionForward(split.as<bf16_bits>(), nullptr, dq3.as<float>(),
                                 dk3.as<bf16_bits>(), dv3.as<bf16_bits>(), bad, c.nh, c.nkv, hd,
                                 scale)
              .code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("cuda attention backward matches the CPU", "[cuda][gpu]") {
  AttnCase c;
  const int64_t T = c.T(), qd = c.nh * c.hd, kvd = c.nkv * c.hd;
  const float scale = 1.f / std::sqrt(float(c.hd));
  std::vector<float> q = Randn(T * qd, 30, 1.5f), k = RoundBf16(Randn(T * kvd, 31, 1.5f)),
                     v = RoundBf16(Randn(T * kvd, 32)), dout = RoundBf16(Randn(T * qd, 33));
  std::vector<cpu::AttnSeq<float>> cs;
  std::vector<cuda::AttnSeq> gs;
  int64_t b = 0;
  for (int64_t L : c.lens) {
    cs.push_back({b, L, k.data() + b * kvd, v.data() + b * kvd, L});
    gs.push_back({b, L, b, L});
    b += L;
  }
  auto dq = Upload(q), dk = Upload(ToBf16(k)), dv = Upload(ToBf16(v)), ddo = Upload(ToBf16(dout));
  auto out = Zeros<bf16_bits>(T * qd), lse = Zeros<float>(T * c.nh);
  REQUIRE(cuda::AttentionForward(out.as<bf16_bits>(), lse.as<float>(), dq.as<float>(),
                                 dk.as<bf16_bits>(), dv.as<bf16_bits>(), gs, c.nh, c.nkv, c.hd,
                                 scale)
              .ok());
  // The CPU backward gets the GPU's (bf16) output and lse, so both use the same delta.
  std::vector<float> o = FromBf16(Download<bf16_bits>(out, T * qd)),
                     l = Download<float>(lse, T * c.nh);
  std::vector<float> gq(T * qd, 0.f), gk(T * kvd, 0.f), gv(T * kvd, 0.f);
  cpu::AttentionBackward<float>(gq.data(), gk.data(), gv.data(), dout.data(), o.data(), l.data(),
                                q.data(), cs.data(), cs.size(), c.nh, c.nkv, c.hd, scale);
  auto rq = Zeros<float>(T * qd), rk = Zeros<float>(T * kvd), rv = Zeros<float>(T * kvd),
       delta = Zeros<float>(T * c.nh);
  REQUIRE(cuda::AttentionBackward(rq.as<float>(), rk.as<float>(), rv.as<float>(), delta.as<float>(),
                                  ddo.as<bf16_bits>(), out.as<bf16_bits>(), lse.as<float>(),
                                  dq.as<float>(), dk.as<bf16_bits>(), dv.as<bf16_bits>(), gs, T,
                                  c.nh, c.nkv, c.hd, scale)
              .ok());
  // Same inputs in fp32 on both sides; only summation order differs.
  CHECK(NormErr("attn dq", Download<float>(rq, T * qd), gq) < 1e-5);
  CHECK(NormErr("attn dk", Download<float>(rk, T * kvd), gk) < 1e-5);
  CHECK(NormErr("attn dv", Download<float>(rv, T * kvd), gv) < 1e-5);
}

TEST_CASE("cuda SwiGLU forward/backward match the CPU", "[cuda][gpu]") {
  const int64_t N = 45, I = 77;
  std::vector<float> gu = Randn(N * 2 * I, 40, 2.f), dh = Randn(N * I, 41);
  std::vector<float> h(N * I), dgu(N * 2 * I, 0.f);
  cpu::SwiGluForward<float>(h.data(), gu.data(), N, I);
  cpu::SwiGluBackward<float>(dgu.data(), dh.data(), gu.data(), N, I);
  auto dgu_in = Upload(gu), ddh = Upload(dh);
  auto out = Zeros<bf16_bits>(N * I), g = Zeros<bf16_bits>(N * 2 * I);
  REQUIRE(cuda::SwiGluForward(out.as<bf16_bits>(), dgu_in.as<float>(), N, I).ok());
  REQUIRE(cuda::SwiGluBackward(g.as<bf16_bits>(), ddh.as<float>(), dgu_in.as<float>(), N, I).ok());
  CheckClose("swiglu h", FromBf16(Download<bf16_bits>(out, N * I)), h, 1e-6, kBf16 + 1e-5);
  CheckClose("swiglu dgu", FromBf16(Download<bf16_bits>(g, N * 2 * I)), dgu, 1e-6, kBf16 + 1e-5);
}

TEST_CASE("cuda router top-k (+ replay) and its backward match the CPU", "[cuda][gpu]") {
  const int64_t T = 100, E = 40, K = 6;
  std::vector<float> logits = Randn(T * E, 50, 2.f);
  for (int64_t e = 0; e < E; ++e) logits[3 * E + e] = 0.5f;  // a row of ties: lower id first
  for (bool norm : {true, false}) {
    std::vector<float> probs(T * E), w(T * K);
    std::vector<int32_t> idx(T * K);
    cpu::RouterForward<float>(probs.data(), idx.data(), w.data(), logits.data(), nullptr, T, E, K,
                              norm);
    auto dl = Upload(logits);
    auto gp = Zeros<float>(T * E), gw = Zeros<float>(T * K);
    auto gi = Zeros<int32_t>(T * K);
    REQUIRE(cuda::RouterForward(gp.as<float>(), gi.as<int32_t>(), gw.as<float>(), dl.as<float>(),
                                nullptr, T, E, K, norm)
                .ok());
    CHECK(Download<int32_t>(gi, T * K) == idx);  // exact
    CheckClose("router probs", Download<float>(gp, T * E), probs, 1e-7, 1e-5);
    CheckClose("router w", Download<float>(gw, T * K), w, 1e-7, 1e-5);
    // Replay: reversed ids are forced.
    std::vector<int32_t> forced(T * K);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < K; ++j) forced[t * K + j] = idx[t * K + K - 1 - j];
    cpu::RouterForward<float>(probs.data(), idx.data(), w.data(), logits.data(), forced.data(), T,
                              E, K, norm);
    auto df = Upload(forced);
    REQUIRE(cuda::RouterForward(gp.as<float>(), gi.as<int32_t>(), gw.as<float>(), dl.as<float>(),
                                df.as<int32_t>(), T, E, K, norm)
                .ok());
    CHECK(Download<int32_t>(gi, T * K) == forced);
    CheckClose("router replay w", Download<float>(gw, T * K), w, 1e-7, 1e-5);
    // Backward with an extra per-expert gradient on probs (the aux loss form).
    std::vector<float> dw = Randn(T * K, 51), extra = Randn(E, 52, 0.1f), extra_rows(T * E);
    for (int64_t t = 0; t < T; ++t) std::copy(extra.begin(), extra.end(), &extra_rows[t * E]);
    std::vector<float> dlog(T * E, 0.f);
    cpu::RouterBackward<float>(dlog.data(), dw.data(), extra_rows.data(), probs.data(), idx.data(),
                               w.data(), T, E, K, norm);
    auto ddw = Upload(dw), dex = Upload(extra);
    auto gdl = Zeros<float>(T * E);
    REQUIRE(cuda::RouterBackward(gdl.as<float>(), ddw.as<float>(), dex.as<float>(), gp.as<float>(),
                                 gi.as<int32_t>(), gw.as<float>(), T, E, K, norm)
                .ok());
    CHECK(NormErr(norm ? "router dlogits (norm)" : "router dlogits", Download<float>(gdl, T * E),
                  dlog) < 1e-5);
  }
}

TEST_CASE("cuda MoE dispatch, gather, combine and backward match host loops", "[cuda][gpu]") {
  const int64_t T = 300, E = 16, K = 4, H = 40, NK = T * K;
  std::vector<int32_t> idx(NK);
  // Distinct ids per token; experts 13..15 get no rows (empty groups).
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) idx[t * K + j] = static_cast<int32_t>((t + 3 * j) % 13);
  }
  // Host reference (the CPU model's order).
  std::vector<int64_t> begin(E + 1, 0);
  for (int32_t e : idx) begin[e + 1]++;
  for (int64_t e = 0; e < E; ++e) begin[e + 1] += begin[e];
  std::vector<int64_t> fill(begin.begin(), begin.end() - 1);
  std::vector<int32_t> slot_token(NK), slot_of(NK);
  for (int64_t i = 0; i < NK; ++i) {
    const int64_t s = fill[idx[i]]++;
    slot_token[s] = static_cast<int32_t>(i / K);
    slot_of[i] = static_cast<int32_t>(s);
  }
  auto di = Upload(idx);
  auto counts = Zeros<int32_t>(E);
  REQUIRE(cuda::MoeCount(counts.as<int32_t>(), di.as<int32_t>(), NK, E).ok());
  std::vector<int32_t> gc = Download<int32_t>(counts, E);
  for (int64_t e = 0; e < E; ++e) CHECK(gc[e] == begin[e + 1] - begin[e]);
  auto db = Upload(begin);
  auto gst = Zeros<int32_t>(NK), gso = Zeros<int32_t>(NK);
  REQUIRE(cuda::MoeAssign(gst.as<int32_t>(), gso.as<int32_t>(), di.as<int32_t>(), db.as<int64_t>(),
                          NK, K, E)
              .ok());
  CHECK(Download<int32_t>(gst, NK) == slot_token);
  CHECK(Download<int32_t>(gso, NK) == slot_of);

  std::vector<float> x = RoundBf16(Randn(T * H, 61)), ye = Randn(NK * H, 62), w = Randn(NK, 63),
                     dout = Randn(T * H, 64), dxe = Randn(NK * H, 65);
  auto dx = Upload(ToBf16(x));
  auto xe = Zeros<bf16_bits>(NK * H);
  REQUIRE(cuda::GatherRows(xe.as<bf16_bits>(), dx.as<bf16_bits>(), gst.as<int32_t>(), NK, H).ok());
  std::vector<float> xe_ref(NK * H), out_ref(T * H, 1.f), dye_ref(NK * H), dw_ref(NK),
      dxr(T * H, 1.f);
  for (int64_t r = 0; r < NK; ++r) std::copy_n(&x[slot_token[r] * H], H, &xe_ref[r * H]);
  CheckClose("gather", FromBf16(Download<bf16_bits>(xe, NK * H)), xe_ref, 0, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = slot_of[t * K + k];
      double dot = 0;
      for (int64_t j = 0; j < H; ++j) {
        out_ref[t * H + j] += w[t * K + k] * ye[s * H + j];
        dye_ref[s * H + j] = w[t * K + k] * dout[t * H + j];
        dot += double(dout[t * H + j]) * ye[s * H + j];
        dxr[t * H + j] += dxe[s * H + j];
      }
      dw_ref[t * K + k] = static_cast<float>(dot);
    }
  auto dye_in = Upload(ye), dw_in = Upload(w), ddout = Upload(dout), ddxe = Upload(dxe);
  auto out = Upload(std::vector<float>(T * H, 1.f));
  REQUIRE(cuda::MoeCombine(out.as<float>(), dye_in.as<float>(), dw_in.as<float>(),
                           gso.as<int32_t>(), T, K, H)
              .ok());
  CheckClose("combine", Download<float>(out, T * H), out_ref, 1e-5, 1e-5);
  auto gdye = Zeros<bf16_bits>(NK * H), gdw = Zeros<float>(NK);
  REQUIRE(cuda::MoeCombineBackward(gdye.as<bf16_bits>(), gdw.as<float>(), ddout.as<float>(),
                                   dye_in.as<float>(), dw_in.as<float>(), gso.as<int32_t>(), T, K,
                                   H)
              .ok());
  CheckClose("combine dye", FromBf16(Download<bf16_bits>(gdye, NK * H)), dye_ref, 1e-6, kBf16);
  CheckClose("combine dw", Download<float>(gdw, NK), dw_ref, 1e-5, 1e-5);
  auto gdx = Upload(std::vector<float>(T * H, 1.f));
  REQUIRE(cuda::MoeGatherAdd(gdx.as<float>(), ddxe.as<float>(), gso.as<int32_t>(), T, K, H).ok());
  CheckClose("gather add", Download<float>(gdx, T * H), dxr, 1e-5, 1e-5);
}

TEST_CASE("cuda logprob/entropy forward and backward match the CPU", "[cuda][gpu]") {
  const int64_t T = 23, V = 5000;
  std::vector<float> logits = Randn(T * V, 70, 3.f);
  std::vector<int32_t> target(T);
  for (int64_t t = 0; t < T; ++t) target[t] = t == 5 ? -1 : static_cast<int32_t>((t * 977) % V);
  for (float tau : {1.0f, 0.7f}) {
    std::vector<float> lp(T), ent(T), lse(T);
    cpu::LogprobForward<float>(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), T,
                               V, tau);
    auto dl = Upload(logits);
    auto dt = Upload(target);
    auto glp = Zeros<float>(T), gent = Zeros<float>(T), glse = Zeros<float>(T);
    REQUIRE(cuda::LogprobForward(glp.as<float>(), gent.as<float>(), glse.as<float>(),
                                 dl.as<float>(), dt.as<int32_t>(), T, V, tau)
                .ok());
    CheckClose("logprob", Download<float>(glp, T), lp, 2e-5, 1e-5);
    CheckClose("entropy", Download<float>(gent, T), ent, 2e-5, 1e-5);
    CheckClose("lse", Download<float>(glse, T), lse, 2e-5, 1e-5);
    std::vector<float> dlp = Randn(T, 71), dent = Randn(T, 72), ref = logits;
    cpu::LogprobBackwardInPlace<float>(ref.data(), dlp.data(), dent.data(), lse.data(),
                                       target.data(), T, V, tau);
    auto ddlp = Upload(dlp), ddent = Upload(dent);
    auto g = Zeros<bf16_bits>(T * V);
    REQUIRE(cuda::LogprobBackward(g.as<bf16_bits>(), dl.as<float>(), ddlp.as<float>(),
                                  ddent.as<float>(), glse.as<float>(), dt.as<int32_t>(), T, V, tau)
                .ok());
    // bf16 output: one rounding per element, so the normalized error is about 2^-9.
    CHECK(NormErr("logprob dlogits (bf16)", FromBf16(Download<bf16_bits>(g, T * V)), ref) < 4e-3);
  }
}

// Host twin of cuda::SampleTokens' documented semantics, in double.
int32_t HostSample(const float* lg, int64_t V, float temp, int64_t top_k, float top_p, double u,
                   bool* near_boundary) {
  *near_boundary = false;
  const float m = *std::max_element(lg, lg + V);
  if (temp <= 0) return static_cast<int32_t>(std::max_element(lg, lg + V) - lg);
  std::vector<double> e(V);
  for (int64_t v = 0; v < V; ++v) e[v] = std::exp(double(lg[v] - m) / temp);
  std::vector<double> sorted = e;
  std::sort(sorted.rbegin(), sorted.rend());
  double thr = 0;
  if (top_k > 0 && top_k < V) thr = sorted[top_k - 1];
  if (top_p < 1) {
    double kept = 0;
    for (double x : sorted) kept += x >= thr ? x : 0;
    double acc = 0;
    for (double x : sorted) {
      if (x < thr) break;
      acc += x;
      if (acc >= top_p * kept) {
        thr = std::max(thr, x);
        break;
      }
    }
  }
  double kept = 0;
  for (double x : e) kept += x >= thr ? x : 0;
  const double target = u * kept;
  double acc = 0;
  int32_t last = -1;
  for (int64_t v = 0; v < V; ++v) {
    if (e[v] < thr) continue;
    if (std::abs(acc - target) < 2e-6 * kept) *near_boundary = true;
    acc += e[v];
    last = static_cast<int32_t>(v);
    if (acc > target) {
      if (std::abs(acc - target) < 2e-6 * kept) *near_boundary = true;
      return last;
    }
  }
  return last;
}

TEST_CASE("cuda sampling (argmax, temperature, top-k, top-p) matches a host twin", "[cuda][gpu]") {
  const int64_t B = 64, V = 3000;
  std::vector<float> logits = Randn(B * V, 80, 2.f);
  std::vector<float> u(B);
  std::mt19937_64 rng(81);
  std::uniform_real_distribution<float> U(0.f, 1.f);
  for (auto& x : u) x = U(rng);
  logits[7 * V + 10] = logits[7 * V + 20] = 50.f;  // argmax tie: lower id
  auto dl = Upload(logits), du = Upload(u);
  auto out = Zeros<int32_t>(B);
  struct Setting {
    float temp;
    int64_t k;
    float p;
  };
  for (Setting s : {Setting{0.f, 0, 1.f}, Setting{1.f, 0, 1.f}, Setting{0.7f, 50, 1.f},
                    Setting{1.f, 0, 0.9f}, Setting{1.3f, 20, 0.5f}, Setting{1.f, 1, 1.f}}) {
    REQUIRE(cuda::SampleTokens(out.as<int32_t>(), dl.as<float>(), du.as<float>(), B, V, s.temp, s.k,
                               s.p)
                .ok());
    std::vector<int32_t> got = Download<int32_t>(out, B);
    int checked = 0;
    for (int64_t b = 0; b < B; ++b) {
      bool near = false;
      const int32_t ref = HostSample(&logits[b * V], V, s.temp, s.k, s.p, u[b], &near);
      if (near) continue;  // fp32 vs double prefix sums may legitimately differ there
      ++checked;
      INFO("temp " << s.temp << " top_k " << s.k << " top_p " << s.p << " row " << b);
      CHECK(got[b] == ref);
    }
    CHECK(checked >= B / 2);  // rows within fp32 rounding of a CDF step are skipped
  }
}

TEST_CASE("cuda fused AdamW matches a host loop", "[cuda][gpu]") {
  const int64_t n = 1000;
  std::vector<float> p = Randn(n, 90), g = Randn(n, 91), m(n, 0.f), v(n, 0.f);
  auto dp = Upload(p), dg = Upload(g), dm = Upload(m), dv = Upload(v);
  auto d16 = Zeros<bf16_bits>(n);
  const cuda::AdamWParams a{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1};
  std::vector<double> P(p.begin(), p.end()), M(n, 0), Vv(n, 0);
  for (int64_t step = 1; step <= 3; ++step) {
    cuda::AdamWParams as = a;
    as.step = step;
    REQUIRE(cuda::AdamW(dp.as<float>(), d16.as<bf16_bits>(), dg.as<float>(), dm.as<float>(),
                        dv.as<float>(), n, as)
                .ok());
    for (int64_t i = 0; i < n; ++i) {
      M[i] = 0.9 * M[i] + 0.1 * g[i];
      Vv[i] = 0.95 * Vv[i] + 0.05 * double(g[i]) * g[i];
      const double mh = M[i] / (1 - std::pow(0.9, step)), vh = Vv[i] / (1 - std::pow(0.95, step));
      P[i] = P[i] * (1 - 1e-2 * 0.1) - 1e-2 * mh / (std::sqrt(vh) + 1e-8);
    }
  }
  std::vector<float> got = Download<float>(dp, n);
  CheckClose("adamw p", got, P, 1e-6, 1e-5);
  CheckClose("adamw bf16 copy", FromBf16(Download<bf16_bits>(d16, n)), got, 0, kBf16);
}

TEST_CASE("cuda ops propagate NaN/Inf like the CPU", "[cuda][gpu]") {
  const int64_t T = 4, C = 64;
  std::vector<float> x = Randn(T * C, 95), w(C, 1.f);
  x[1 * C + 7] = NAN;
  x[2 * C + 3] = INFINITY;
  std::vector<float> ref(T * C), rstd(T);
  cpu::RmsNormForward<float>(ref.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f);
  auto dx = Upload(x), dw = Upload(w);
  auto out = Zeros<float>(T * C), r = Zeros<float>(T);
  REQUIRE(cuda::RmsNormForward(out.as<float>(), nullptr, r.as<float>(), dx.as<float>(),
                               dw.as<float>(), T, C, 1e-6f)
              .ok());
  std::vector<float> got = Download<float>(out, T * C);
  for (int64_t i = 0; i < T * C; ++i) {
    INFO("rmsnorm element " << i << ": got " << got[i] << " ref " << ref[i]);
    CHECK(std::isnan(got[i]) == std::isnan(ref[i]));
    CHECK(std::isinf(got[i]) == std::isinf(ref[i]));
  }
  // A NaN logit poisons its row's logprob/entropy on both sides; other rows stay finite.
  const int64_t V = 100;
  std::vector<float> logits = Randn(T * V, 96);
  logits[2 * V + 50] = NAN;
  std::vector<int32_t> tg = {1, 2, 3, 4};
  std::vector<float> lp(T), ent(T), lse(T);
  cpu::LogprobForward<float>(lp.data(), ent.data(), lse.data(), logits.data(), tg.data(), T, V,
                             1.f);
  auto dl = Upload(logits);
  auto dt = Upload(tg);
  auto glp = Zeros<float>(T), gent = Zeros<float>(T);
  REQUIRE(cuda::LogprobForward(glp.as<float>(), gent.as<float>(), nullptr, dl.as<float>(),
                               dt.as<int32_t>(), T, V, 1.f)
              .ok());
  std::vector<float> g1 = Download<float>(glp, T), g2 = Download<float>(gent, T);
  for (int64_t t = 0; t < T; ++t) {
    CHECK(std::isfinite(g1[t]) == std::isfinite(lp[t]));
    CHECK(std::isfinite(g2[t]) == std::isfinite(ent[t]));
  }
}

}  // namespace
}  // namespace grpo
