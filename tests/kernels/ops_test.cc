// Tests for kernels/cpu/ops.h: central-difference gradient checks in double for every backward,
// attention against a naive reference (packed, prefix, decode), hand-checked router and logprob
// cases, and float-vs-double agreement of every op.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"

namespace grpo::cpu {
namespace {

using Vec = std::vector<double>;

Vec RandVec(std::mt19937_64& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

std::vector<float> ToFloat(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

double Dot(const Vec& a, const Vec& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// max_i |a_i - b_i| / (atol + rtol * |b_i|) <= 1, reported with the worst index.
template <typename A, typename B>
void CheckClose(const char* what, const std::vector<A>& a, const std::vector<B>& b, double rtol,
                double atol) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])) /
                       (atol + rtol * std::abs(static_cast<double>(b[i])));
    if (!(err <= worst)) {  // also catches NaN
      worst = err;
      worst_i = i;
    }
  }
  INFO(what << ": worst at " << worst_i << ": " << static_cast<double>(a[worst_i]) << " vs "
            << static_cast<double>(b[worst_i]));
  CHECK(worst <= 1.0);
}

// Central differences of loss() w.r.t. x[i] for each i in coords (all when empty), compared with
// the analytic gradient. Tolerance: with eps = 1e-6 the truncation error is O(eps^2 f''') ~ 1e-12
// and the rounding error ~ 1e-16 |loss| / eps ~ 1e-9 for |loss| ~ 10, so 1e-6 abs + 1e-6 rel
// leaves a wide margin while any wrong term in a backward (an O(0.01..1) error) still fails.
void CheckGrad(const char* what, const std::function<double()>& loss, Vec& x, const Vec& grad,
               std::vector<size_t> coords = {}) {
  REQUIRE(x.size() == grad.size());
  if (coords.empty()) {
    coords.resize(x.size());
    std::iota(coords.begin(), coords.end(), size_t{0});
  }
  constexpr double kEps = 1e-6, kTol = 1e-6;
  double worst = 0, worst_num = 0, worst_ana = 0;
  size_t worst_i = 0;
  for (size_t i : coords) {
    const double x0 = x[i];
    x[i] = x0 + kEps;
    const double fp = loss();
    x[i] = x0 - kEps;
    const double fm = loss();
    x[i] = x0;
    const double num = (fp - fm) / (2 * kEps);
    const double err = std::abs(num - grad[i]) / (kTol + kTol * std::abs(num));
    if (!(err <= worst)) {
      worst = err;
      worst_i = i;
      worst_num = num;
      worst_ana = grad[i];
    }
  }
  INFO(what << ": worst at " << worst_i << ": analytic " << worst_ana << " numeric " << worst_num);
  CHECK(worst <= 1.0);
}

// Gradient buffers start at this value so the checks also prove "backward accumulates".
constexpr double kPrefill = 0.25;
Vec Minus(Vec v, double c) {
  for (double& x : v) x -= c;
  return v;
}

// ---- FastExpf --------------------------------------------------------------------------------

TEST_CASE("FastExpf is within 2 ulp of exp and handles the edges", "[ops]") {
  double worst = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(FastExpf(x) - ref) / ref);
  }
  CHECK(worst < 2.5e-7);  // 2^-22 ~ 2.4e-7: two float ulps
  CHECK(FastExpf(0.0f) == 1.0f);
  CHECK(FastExpf(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(FastExpf(-200.0f) == 0.0f);
  CHECK(std::isinf(FastExpf(100.0f)));
  CHECK(std::isnan(FastExpf(std::nanf(""))));
}

TEST_CASE("RowMax finds the maximum wherever it is, in full blocks and in the tail", "[ops]") {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<float> dist(-50.0f, 50.0f);
  CHECK(RowMax<float>(nullptr, 0) == -std::numeric_limits<float>::infinity());
  for (int64_t n : {1, 7, 16, 17, 31, 32, 33, 64, 100, 1000, 32003}) {
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    // The maximum at every position of short rows, and at a spread of them in long ones.
    const int64_t step = n <= 100 ? 1 : n / 97;
    for (int64_t at = 0; at < n; at += step) {
      std::vector<float> y = x;
      y[at] = 60.0f + static_cast<float>(at % 5);
      INFO("n " << n << ", maximum at " << at);
      CHECK(RowMax(y.data(), n) == y[at]);
    }
    CHECK(RowMax(x.data(), n) == *std::max_element(x.begin(), x.end()));
    std::vector<double> xd(x.begin(), x.end());
    CHECK(RowMax(xd.data(), n) == static_cast<double>(RowMax(x.data(), n)));
  }
  const std::vector<float> ninf(40, -std::numeric_limits<float>::infinity());
  CHECK(RowMax(ninf.data(), 40) == -std::numeric_limits<float>::infinity());
}

// ---- RMSNorm ---------------------------------------------------------------------------------

TEST_CASE("RmsNorm forward matches the formula and backward matches finite differences", "[ops]") {
  std::mt19937_64 rng(1);
  const int64_t T = 3, C = 8;
  const float eps = 1e-5f;
  Vec x = RandVec(rng, T * C), w = RandVec(rng, C, 0.5, 1.5), g = RandVec(rng, T * C);
  Vec out(T * C), rstd(T);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), T, C, eps);
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[t * C + c] * x[t * C + c] / C;
    const double r = 1.0 / std::sqrt(ms + static_cast<double>(eps));
    CHECK(rstd[t] == Approx(r).epsilon(1e-14));
    for (int64_t c = 0; c < C; ++c) {
      CHECK(out[t * C + c] == Approx(w[c] * x[t * C + c] * r).epsilon(1e-14));
    }
  }
  auto loss = [&] {
    Vec o(T * C), r(T);
    RmsNormForward(o.data(), r.data(), x.data(), w.data(), T, C, eps);
    return Dot(o, g);
  };
  Vec dx(T * C, kPrefill), dw(C, kPrefill);
  RmsNormBackward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), T, C);
  CheckGrad("rmsnorm dx", loss, x, Minus(dx, kPrefill));
  CheckGrad("rmsnorm dw", loss, w, Minus(dw, kPrefill));
}

// ---- RoPE ------------------------------------------------------------------------------------

TEST_CASE("Rope rotates halves, its backward is the transpose, float table matches double",
          "[ops]") {
  std::mt19937_64 rng(2);
  const int64_t T = 4, nh = 2, hd = 8, half = hd / 2, max_pos = 64;
  std::vector<float> inv_freq(half);
  for (int64_t j = 0; j < half; ++j) inv_freq[j] = 1.0f / std::pow(10000.0f, 2.0f * j / hd);
  Vec cs(max_pos * half), sn(max_pos * half);
  RopeTable(cs.data(), sn.data(), inv_freq.data(), max_pos, half);
  std::vector<float> csf(max_pos * half), snf(max_pos * half);
  RopeTable(csf.data(), snf.data(), inv_freq.data(), max_pos, half);
  CheckClose("rope cos f32", csf, cs, 0, 1e-5);  // fp32 angle rounding at pos 63: ~4e-6
  CheckClose("rope sin f32", snf, sn, 0, 1e-5);

  const std::vector<int32_t> pos = {0, 5, 63, 17};
  Vec x = RandVec(rng, T * nh * hd), g = RandVec(rng, T * nh * hd);
  Vec y = x;
  RopeForward(y.data(), pos.data(), cs.data(), sn.data(), T, nh, hd);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t j = 0; j < half; ++j) {
        const double th = pos[t] * static_cast<double>(inv_freq[j]);
        const double a = x[(t * nh + h) * hd + j], b = x[(t * nh + h) * hd + j + half];
        CHECK(y[(t * nh + h) * hd + j] == Approx(a * std::cos(th) - b * std::sin(th)));
        CHECK(y[(t * nh + h) * hd + j + half] == Approx(b * std::cos(th) + a * std::sin(th)));
      }
    }
  }
  auto loss = [&] {
    Vec o = x;
    RopeForward(o.data(), pos.data(), cs.data(), sn.data(), T, nh, hd);
    return Dot(o, g);
  };
  Vec dx = g;
  RopeBackward(dx.data(), pos.data(), cs.data(), sn.data(), T, nh, hd);
  CheckGrad("rope dx", loss, x, dx);

  std::vector<float> yf = ToFloat(x), dxf = ToFloat(g);
  RopeForward(yf.data(), pos.data(), csf.data(), snf.data(), T, nh, hd);
  RopeBackward(dxf.data(), pos.data(), csf.data(), snf.data(), T, nh, hd);
  CheckClose("rope fwd f32", yf, y, 0, 2e-5);
  CheckClose("rope bwd f32", dxf, dx, 0, 2e-5);
}

// ---- Attention -------------------------------------------------------------------------------

// Packed causal self-attention buffers for sequences of the given lengths.
struct AttnCase {
  std::vector<int64_t> lens;
  int64_t nh, nkv, hd, T;
  Vec q, k, v;  // (T, nh, hd), (T, nkv, hd), (T, nkv, hd)
};

AttnCase MakeAttn(std::mt19937_64& rng, std::vector<int64_t> lens, int64_t nh, int64_t nkv,
                  int64_t hd) {
  AttnCase c{lens, nh, nkv, hd, std::accumulate(lens.begin(), lens.end(), int64_t{0}), {}, {}, {}};
  c.q = RandVec(rng, c.T * nh * hd, -2, 2);
  c.k = RandVec(rng, c.T * nkv * hd, -2, 2);
  c.v = RandVec(rng, c.T * nkv * hd);
  return c;
}

template <typename Real>
std::vector<AttnSeq<Real>> SelfSeqs(const std::vector<int64_t>& lens, const Real* k, const Real* v,
                                    int64_t nkv, int64_t hd) {
  std::vector<AttnSeq<Real>> seqs;
  int64_t begin = 0;
  for (int64_t L : lens) {
    seqs.push_back({begin, L, k + begin * nkv * hd, v + begin * nkv * hd, L});
    begin += L;
  }
  return seqs;
}

template <typename Real>
void RunAttn(const AttnCase& c, const std::vector<Real>& q, const std::vector<Real>& k,
             const std::vector<Real>& v, std::vector<Real>* out, std::vector<Real>* lse) {
  out->assign(c.T * c.nh * c.hd, Real(0));
  lse->assign(c.T * c.nh, Real(0));
  auto seqs = SelfSeqs(c.lens, k.data(), v.data(), c.nkv, c.hd);
  AttentionForward(out->data(), lse->data(), q.data(), seqs.data(),
                   static_cast<int64_t>(seqs.size()), c.nh, c.nkv, c.hd,
                   static_cast<Real>(1.0 / std::sqrt(static_cast<double>(c.hd))));
}

// Naive attention for one sequence: q (q_len, nh, hd) against k/v (kv_len, nkv, hd), query i at
// position kv_len - q_len + i; full score rows, explicit loops.
void NaiveAttn(const double* q, const double* k, const double* v, int64_t q_len, int64_t kv_len,
               int64_t nh, int64_t nkv, int64_t hd, double* out, double* lse) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t p = kv_len - q_len + i;
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kvh = h / (nh / nkv);
      std::vector<double> s(p + 1);
      double m = -INFINITY;
      for (int64_t j = 0; j <= p; ++j) {
        double d = 0;
        for (int64_t c = 0; c < hd; ++c)
          d += q[(i * nh + h) * hd + c] * k[(j * nkv + kvh) * hd + c];
        s[j] = d * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (int64_t c = 0; c < hd; ++c) {
        double acc = 0;
        for (int64_t j = 0; j <= p; ++j) acc += s[j] / sum * v[(j * nkv + kvh) * hd + c];
        out[(i * nh + h) * hd + c] = acc;
      }
      lse[i * nh + h] = m + std::log(sum);
    }
  }
}

void NaiveAttnPacked(const AttnCase& c, Vec* out, Vec* lse) {
  out->assign(c.T * c.nh * c.hd, 0);
  lse->assign(c.T * c.nh, 0);
  int64_t b = 0;
  for (int64_t L : c.lens) {
    NaiveAttn(c.q.data() + b * c.nh * c.hd, c.k.data() + b * c.nkv * c.hd,
              c.v.data() + b * c.nkv * c.hd, L, L, c.nh, c.nkv, c.hd, out->data() + b * c.nh * c.hd,
              lse->data() + b * c.nh);
    b += L;
  }
}

TEST_CASE("Attention forward matches a naive reference, and float matches double", "[ops]") {
  std::mt19937_64 rng(3);
  // Lengths 1 (decode-style group path), 70 and 130 (several 64-query blocks).
  AttnCase c = MakeAttn(rng, {1, 70, 130}, 4, 2, 16);
  Vec ref_out, ref_lse, out, lse;
  NaiveAttnPacked(c, &ref_out, &ref_lse);
  RunAttn(c, c.q, c.k, c.v, &out, &lse);
  CheckClose("attn out f64", out, ref_out, 1e-12, 1e-12);
  CheckClose("attn lse f64", lse, ref_lse, 1e-12, 1e-12);

  std::vector<float> outf, lsef;
  RunAttn(c, ToFloat(c.q), ToFloat(c.k), ToFloat(c.v), &outf, &lsef);
  CheckClose("attn out f32", outf, ref_out, 1e-5, 1e-5);  // fp32 softmax over <= 130 keys
  CheckClose("attn lse f32", lsef, ref_lse, 1e-5, 1e-5);
}

TEST_CASE("Attention with a prefix cache: chunked and decode equal the full forward", "[ops]") {
  std::mt19937_64 rng(4);
  const int64_t nh = 4, nkv = 2, hd = 16, L = 70;
  AttnCase c = MakeAttn(rng, {L}, nh, nkv, hd);
  Vec full_out, full_lse;
  RunAttn(c, c.q, c.k, c.v, &full_out, &full_lse);

  // Two chunks packed in one call: tokens 0..49 (kv 50), then 50..69 (kv 70). Plus a 3-token
  // chunk 67..69 (group path) and a decode of token 69 as separate sequences.
  const int64_t qrow = nh * hd;
  Vec q2(c.q.begin(), c.q.end());
  q2.insert(q2.end(), c.q.begin() + 67 * qrow, c.q.end());
  q2.insert(q2.end(), c.q.begin() + 69 * qrow, c.q.end());
  const int64_t T2 = L + 3 + 1;
  std::vector<AttnSeq<double>> seqs = {{0, 50, c.k.data(), c.v.data(), 50},
                                       {50, 20, c.k.data(), c.v.data(), 70},
                                       {70, 3, c.k.data(), c.v.data(), 70},
                                       {73, 1, c.k.data(), c.v.data(), 70}};
  Vec out(T2 * qrow, -7), lse(T2 * nh, -7);
  AttentionForward(out.data(), lse.data(), q2.data(), seqs.data(), 4, nh, nkv, hd,
                   1.0 / std::sqrt(16.0));
  CheckClose("chunked out", Vec(out.begin(), out.begin() + L * qrow), full_out, 1e-12, 1e-12);
  CheckClose("chunked lse", Vec(lse.begin(), lse.begin() + L * nh), full_lse, 1e-12, 1e-12);
  CheckClose("3-token chunk out", Vec(out.begin() + L * qrow, out.begin() + (L + 3) * qrow),
             Vec(full_out.begin() + 67 * qrow, full_out.end()), 1e-12, 1e-12);
  CheckClose("decode out", Vec(out.begin() + (L + 3) * qrow, out.end()),
             Vec(full_out.begin() + 69 * qrow, full_out.end()), 1e-12, 1e-12);
  CheckClose("decode lse", Vec(lse.begin() + (L + 3) * nh, lse.end()),
             Vec(full_lse.begin() + 69 * nh, full_lse.end()), 1e-12, 1e-12);

  // Float decode without lse (null is allowed) against the double full forward.
  std::vector<float> qf = ToFloat(Vec(c.q.begin() + 69 * qrow, c.q.end()));
  std::vector<float> kf = ToFloat(c.k), vf = ToFloat(c.v), outf(qrow);
  AttnSeq<float> dec{0, 1, kf.data(), vf.data(), L};
  AttentionForward(outf.data(), static_cast<float*>(nullptr), qf.data(), &dec, 1, nh, nkv, hd,
                   0.25f);
  CheckClose("decode out f32", outf, Vec(full_out.begin() + 69 * qrow, full_out.end()), 1e-5, 1e-5);
}

TEST_CASE("Attention group mode matches the reference for odd key counts, head dims and groups",
          "[ops]") {
  // Batch-invariant mode runs every token in group mode, in chunks of up to 8 tokens: sequences
  // of 1, 15, 16, 17 and 100 tokens give every key count 1..100 (partial key blocks, chunk tails,
  // rows whose causal limits differ inside a chunk). g = 1, 2, 3, 4, 8 cover each row blocking
  // (3 mixes blocks of 2 and 1); hd 8, 12 and 24 take the plain-loop fallback for float (12 also
  // for double), 16 and 64 the vector kernels. Plus decode rows (q_len 1) against a KV cache.
  std::mt19937_64 rng(11);
  const std::vector<int64_t> lens = {1, 15, 16, 17, 100};
  const int64_t nkv = 2;
  for (const int64_t g : {1, 2, 3, 4, 8}) {
    for (const int64_t hd : {8, 12, 16, 24, 64}) {
      const int64_t nh = g * nkv;
      AttnCase c = MakeAttn(rng, lens, nh, nkv, hd);
      Vec ref_out, ref_lse;
      NaiveAttnPacked(c, &ref_out, &ref_lse);
      Vec out, lse;
      std::vector<float> outf, lsef;
      {
        BatchInvariantScope on(true);
        RunAttn(c, c.q, c.k, c.v, &out, &lse);
        RunAttn(c, ToFloat(c.q), ToFloat(c.k), ToFloat(c.v), &outf, &lsef);
      }
      INFO("g " << g << " hd " << hd);
      CheckClose("group out f64", out, ref_out, 1e-12, 1e-12);
      CheckClose("group lse f64", lse, ref_lse, 1e-12, 1e-12);
      // fp32 scores, softmax and sums over <= 100 keys of O(1) terms: as the row-mode test.
      CheckClose("group out f32", outf, ref_out, 1e-5, 1e-5);
      CheckClose("group lse f32", lsef, ref_lse, 1e-5, 1e-5);

      // Decode: one query per sequence (the last token of each) against its whole KV, in one
      // call, outside batch-invariant mode (group mode for any q_len < 8).
      const int64_t qrow = nh * hd;
      std::vector<float> qf, kf = ToFloat(c.k), vf = ToFloat(c.v);
      std::vector<AttnSeq<float>> dec;
      Vec want_out, want_lse;
      int64_t begin = 0;
      for (const int64_t L : lens) {
        const int64_t last = begin + L - 1;
        qf.insert(qf.end(), c.q.begin() + last * qrow, c.q.begin() + (last + 1) * qrow);
        dec.push_back({static_cast<int64_t>(dec.size()), 1, kf.data() + begin * nkv * hd,
                       vf.data() + begin * nkv * hd, L});
        want_out.insert(want_out.end(), ref_out.begin() + last * qrow,
                        ref_out.begin() + (last + 1) * qrow);
        want_lse.insert(want_lse.end(), ref_lse.begin() + last * nh,
                        ref_lse.begin() + (last + 1) * nh);
        begin += L;
      }
      std::vector<float> dout(qf.size(), -7.0f), dlse(dec.size() * nh, -7.0f);
      AttentionForward(dout.data(), dlse.data(), qf.data(), dec.data(),
                       static_cast<int64_t>(dec.size()), nh, nkv, hd,
                       static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))));
      CheckClose("decode out f32", dout, want_out, 1e-5, 1e-5);
      CheckClose("decode lse f32", dlse, want_lse, 1e-5, 1e-5);
    }
  }
}

TEST_CASE("Attention over a shared prefix held elsewhere is bitwise the contiguous result",
          "[ops]") {
  // The rollout engine's group samples read their prompt's K/V rows where the prompt was
  // prefilled (AttnSeq::k_shared) and their own rows after it. Each sequence here is computed
  // from one contiguous copy of its K/V and from a split copy (prefix and rest in two other
  // buffers, so no pointer is shared): the outputs and lse must be the same bits. Shared
  // lengths 0, 1, inside and at the ends of key blocks, up to every key before the queries; query
  // chunks of 1, 3 and 8 tokens; g 1..4 and hd 12 (plain loops) and 16/64 (vector kernels); in
  // and out of batch-invariant mode, float and a few double.
  std::mt19937_64 rng(29);
  std::uniform_real_distribution<double> U(-2.0, 2.0);
  const int64_t nkv = 2;
  for (const int64_t g : {1, 2, 3, 4}) {
    for (const int64_t hd : {12, 16, 64}) {
      const int64_t nh = g * nkv, kvd = nkv * hd, qrow = nh * hd;
      struct Case {
        int64_t kv_len, q_len, shared;
      };
      std::vector<Case> cases;
      for (const int64_t L : {2, 9, 17, 40, 100}) {
        for (const int64_t nq : {1, 3, 8}) {
          if (nq >= L) continue;
          for (const int64_t ns : {int64_t{1}, int64_t{7}, int64_t{16}, L - nq}) {
            if (ns <= L - nq) cases.push_back({L, nq, ns});
          }
        }
      }
      std::vector<float> q, k, v, ks, vs, ko, vo;
      std::vector<AttnSeq<float>> whole, split;
      int64_t q_rows = 0;
      std::vector<int64_t> kv_at, sh_at, own_at;
      for (const Case& c : cases) {
        kv_at.push_back(static_cast<int64_t>(k.size()));
        sh_at.push_back(static_cast<int64_t>(ks.size()));
        own_at.push_back(static_cast<int64_t>(ko.size()));
        for (int64_t i = 0; i < c.q_len * qrow; ++i) q.push_back(static_cast<float>(U(rng)));
        for (int64_t i = 0; i < c.kv_len * kvd; ++i) {
          k.push_back(static_cast<float>(U(rng)));
          v.push_back(static_cast<float>(U(rng)));
          (i < c.shared * kvd ? ks : ko).push_back(k.back());
          (i < c.shared * kvd ? vs : vo).push_back(v.back());
        }
      }
      for (size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        whole.push_back({q_rows, c.q_len, k.data() + kv_at[i], v.data() + kv_at[i], c.kv_len});
        split.push_back({q_rows, c.q_len, ko.data() + own_at[i], vo.data() + own_at[i], c.kv_len,
                         ks.data() + sh_at[i], vs.data() + sh_at[i], c.shared});
        q_rows += c.q_len;
      }
      const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
      // The reference: contiguous rows in batch-invariant mode, where every token takes group
      // mode. A shared prefix takes group mode in either mode (outside it, a contiguous 8-token
      // chunk would take row mode's GEMMs: other roundings).
      std::vector<float> out_w(q.size(), -7.f), lse_w(q_rows * nh, -7.f);
      {
        BatchInvariantScope on(true);
        AttentionForward(out_w.data(), lse_w.data(), q.data(), whole.data(),
                         static_cast<int64_t>(whole.size()), nh, nkv, hd, scale);
      }
      for (const bool invariant : {false, true}) {
        BatchInvariantScope mode(invariant);
        std::vector<float> out_s(q.size(), -8.f), lse_s(q_rows * nh, -8.f);
        AttentionForward(out_s.data(), lse_s.data(), q.data(), split.data(),
                         static_cast<int64_t>(split.size()), nh, nkv, hd, scale);
        INFO("g " << g << " hd " << hd << " batch-invariant " << invariant);
        CHECK(std::count_if(out_w.begin(), out_w.end(), [](float x) { return x == -7.f; }) == 0);
        // The case of the first differing output row, for the message.
        const auto first_bad = [&](const std::vector<float>& a, const std::vector<float>& b,
                                   int64_t row) {
          const auto it = std::mismatch(a.begin(), a.end(), b.begin()).first;
          if (it == a.end()) return std::string("none");
          int64_t tok = (it - a.begin()) / row;
          for (const Case& c : cases) {
            if (tok < c.q_len) {
              return "kv_len " + std::to_string(c.kv_len) + " q_len " + std::to_string(c.q_len) +
                     " shared " + std::to_string(c.shared) + " token " + std::to_string(tok);
            }
            tok -= c.q_len;
          }
          return std::string("?");
        };
        CHECK(first_bad(out_s, out_w, qrow) == "none");
        CHECK(first_bad(lse_s, lse_w, nh) == "none");
      }
    }
  }
  // Double, one case: the same kernels at 8 lanes.
  std::vector<double> q(3 * 4 * 16), k(30 * 2 * 16), v(k.size());
  for (double& x : q) x = U(rng);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = U(rng);
    v[i] = U(rng);
  }
  const int64_t ns = 13, kvd = 2 * 16;
  std::vector<double> ks(k.begin(), k.begin() + ns * kvd), vs(v.begin(), v.begin() + ns * kvd);
  std::vector<double> ko(k.begin() + ns * kvd, k.end()), vo(v.begin() + ns * kvd, v.end());
  const AttnSeq<double> whole{0, 3, k.data(), v.data(), 30};
  const AttnSeq<double> split{0, 3, ko.data(), vo.data(), 30, ks.data(), vs.data(), ns};
  Vec out_w(q.size()), out_s(q.size()), lse_w(3 * 4), lse_s(3 * 4);
  AttentionForward(out_w.data(), lse_w.data(), q.data(), &whole, 1, 4, 2, 16, 0.25);
  AttentionForward(out_s.data(), lse_s.data(), q.data(), &split, 1, 4, 2, 16, 0.25);
  CHECK(out_s == out_w);
  CHECK(lse_s == lse_w);
}

TEST_CASE("Attention backward matches finite differences, and float matches double", "[ops]") {
  std::mt19937_64 rng(5);
  // Packed sequences of different lengths, one longer than a 64-query block; GQA 4:2.
  AttnCase c = MakeAttn(rng, {3, 70, 1, 5}, 4, 2, 8);
  Vec out, lse;
  RunAttn(c, c.q, c.k, c.v, &out, &lse);
  const Vec g = RandVec(rng, out.size());
  auto loss = [&] {
    Vec o, l;
    RunAttn(c, c.q, c.k, c.v, &o, &l);
    return Dot(o, g);
  };
  Vec dq(c.q.size(), kPrefill), dk(c.k.size(), kPrefill), dv(c.v.size(), kPrefill);
  auto seqs = SelfSeqs(c.lens, c.k.data(), c.v.data(), c.nkv, c.hd);
  const double scale = 1.0 / std::sqrt(8.0);
  AttentionBackward(dq.data(), dk.data(), dv.data(), g.data(), out.data(), lse.data(), c.q.data(),
                    seqs.data(), 4, c.nh, c.nkv, c.hd, scale);
  // A random third of the coordinates keeps the check fast (each costs two forwards).
  auto subset = [&](size_t n) {
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(n / 3);
    return idx;
  };
  CheckGrad("attn dq", loss, c.q, Minus(dq, kPrefill), subset(c.q.size()));
  CheckGrad("attn dk", loss, c.k, Minus(dk, kPrefill), subset(c.k.size()));
  CheckGrad("attn dv", loss, c.v, Minus(dv, kPrefill), subset(c.v.size()));

  // Float path on a larger case (several blocks) against double.
  AttnCase b = MakeAttn(rng, {1, 70, 130}, 4, 2, 16);
  Vec o64, l64;
  RunAttn(b, b.q, b.k, b.v, &o64, &l64);
  const Vec gb = RandVec(rng, o64.size());
  Vec dq64(b.q.size()), dk64(b.k.size()), dv64(b.v.size());
  auto s64 = SelfSeqs(b.lens, b.k.data(), b.v.data(), b.nkv, b.hd);
  AttentionBackward(dq64.data(), dk64.data(), dv64.data(), gb.data(), o64.data(), l64.data(),
                    b.q.data(), s64.data(), 3, b.nh, b.nkv, b.hd, 0.25);
  std::vector<float> qf = ToFloat(b.q), kf = ToFloat(b.k), vf = ToFloat(b.v), gf = ToFloat(gb);
  std::vector<float> o32, l32;
  RunAttn(b, qf, kf, vf, &o32, &l32);
  std::vector<float> dq32(qf.size()), dk32(kf.size()), dv32(vf.size());
  auto s32 = SelfSeqs(b.lens, kf.data(), vf.data(), b.nkv, b.hd);
  AttentionBackward(dq32.data(), dk32.data(), dv32.data(), gf.data(), o32.data(), l32.data(),
                    qf.data(), s32.data(), 3, b.nh, b.nkv, b.hd, 0.25f);
  // fp32 sums of up to 130 products of O(1) terms: abs error ~1e-5 on O(1..10) gradients.
  CheckClose("attn dq f32", dq32, dq64, 1e-4, 1e-4);
  CheckClose("attn dk f32", dk32, dk64, 1e-4, 1e-4);
  CheckClose("attn dv f32", dv32, dv64, 1e-4, 1e-4);
}

// ---- SwiGLU ----------------------------------------------------------------------------------

TEST_CASE("SwiGlu forward/backward: formula, finite differences, float agreement", "[ops]") {
  std::mt19937_64 rng(6);
  const int64_t T = 3, I = 5;
  Vec gu = RandVec(rng, T * 2 * I, -4, 4), g = RandVec(rng, T * I);
  Vec h(T * I);
  SwiGluForward(h.data(), gu.data(), T, I);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < I; ++i) {
      const double a = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
      CHECK(h[t * I + i] == Approx(a / (1 + std::exp(-a)) * u).epsilon(1e-14));
    }
  }
  auto loss = [&] {
    Vec o(T * I);
    SwiGluForward(o.data(), gu.data(), T, I);
    return Dot(o, g);
  };
  Vec dgu(gu.size(), kPrefill);
  SwiGluBackward(dgu.data(), g.data(), gu.data(), T, I);
  CheckGrad("swiglu dgu", loss, gu, Minus(dgu, kPrefill));

  std::vector<float> guf = ToFloat(gu), gf = ToFloat(g), hf(T * I), dguf(gu.size(), kPrefill);
  SwiGluForward(hf.data(), guf.data(), T, I);
  SwiGluBackward(dguf.data(), gf.data(), guf.data(), T, I);
  CheckClose("swiglu fwd f32", hf, h, 1e-6, 1e-6);
  CheckClose("swiglu bwd f32", dguf, dgu, 1e-6, 1e-6);
}

// ---- Router ----------------------------------------------------------------------------------

TEST_CASE("Router top-k picks the largest probabilities, ties to the lower id", "[ops]") {
  const int64_t T = 2, E = 6, K = 3;
  const Vec logits = {1,   3,   3, 0, 2, -1,  // ties between experts 1 and 2
                      0.5, 0.1, 4, 4, 4, 4};  // four-way tie: ids 2, 3, 4 win
  Vec probs(T * E), w(T * K);
  std::vector<int32_t> idx(T * K);
  RouterForward(probs.data(), idx.data(), w.data(), logits.data(), nullptr, T, E, K, false);
  CHECK(idx == std::vector<int32_t>{1, 2, 4, 2, 3, 4});
  double z = 0;
  for (int64_t e = 0; e < E; ++e) z += std::exp(logits[e]);
  CHECK(probs[1] == Approx(std::exp(3.0) / z).epsilon(1e-14));
  CHECK(w[0] == probs[1]);
  CHECK(w[2] == probs[4]);

  RouterForward(probs.data(), idx.data(), w.data(), logits.data(), nullptr, T, E, K, true);
  const double s = probs[1] + probs[2] + probs[4];
  CHECK(w[0] == Approx(probs[1] / s).epsilon(1e-14));
  CHECK(w[0] + w[1] + w[2] == Approx(1.0).epsilon(1e-14));

  const std::vector<int32_t> forced = {5, 0, 3, 1, 0, 2};
  RouterForward(probs.data(), idx.data(), w.data(), logits.data(), forced.data(), T, E, K, false);
  CHECK(idx == forced);
  CHECK(w[0] == probs[5]);
  CHECK(w[4] == probs[E + 0]);
}

TEST_CASE("Router backward matches finite differences, and float matches double", "[ops]") {
  std::mt19937_64 rng(7);
  const int64_t T = 3, E = 8, K = 3;
  // Logits spaced >= 0.3 apart so the top-k cannot change under the 1e-6 perturbation.
  Vec logits(T * E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    const Vec jitter = RandVec(rng, E, -0.1, 0.1);
    for (int64_t e = 0; e < E; ++e) logits[t * E + e] = 0.4 * perm[e] - 1.5 + jitter[e];
  }
  const Vec gw = RandVec(rng, T * K), gp = RandVec(rng, T * E);
  const std::vector<int32_t> forced = {7, 0, 3, 2, 5, 1, 4, 6, 0};
  for (bool norm : {false, true}) {
    for (bool use_forced : {false, true}) {
      for (bool extra : {false, true}) {
        DYNAMIC_SECTION("norm " << norm << " forced " << use_forced << " extra " << extra) {
          const int32_t* f = use_forced ? forced.data() : nullptr;
          Vec probs(T * E), w(T * K);
          std::vector<int32_t> idx(T * K);
          RouterForward(probs.data(), idx.data(), w.data(), logits.data(), f, T, E, K, norm);
          if (use_forced) CHECK(idx == forced);
          auto loss = [&] {
            Vec p(T * E), ww(T * K);
            std::vector<int32_t> id(T * K);
            RouterForward(p.data(), id.data(), ww.data(), logits.data(), f, T, E, K, norm);
            REQUIRE(id == idx);  // selection must be stable under the perturbation
            return Dot(ww, gw) + (extra ? Dot(p, gp) : 0.0);
          };
          Vec dl(T * E, kPrefill);
          RouterBackward(dl.data(), gw.data(), extra ? gp.data() : nullptr, probs.data(),
                         idx.data(), w.data(), T, E, K, norm);
          CheckGrad("router dlogits", loss, logits, Minus(dl, kPrefill));

          std::vector<float> lf = ToFloat(logits), pf(T * E), wf(T * K), gwf = ToFloat(gw);
          std::vector<float> gpf = ToFloat(gp), dlf(T * E, kPrefill);
          std::vector<int32_t> idf(T * K);
          RouterForward(pf.data(), idf.data(), wf.data(), lf.data(), f, T, E, K, norm);
          RouterBackward(dlf.data(), gwf.data(), extra ? gpf.data() : nullptr, pf.data(),
                         idf.data(), wf.data(), T, E, K, norm);
          CHECK(idf == idx);
          CheckClose("router probs f32", pf, probs, 1e-6, 1e-7);
          CheckClose("router w f32", wf, w, 1e-6, 1e-7);
          CheckClose("router dlogits f32", dlf, dl, 1e-5, 1e-6);
        }
      }
    }
  }
}

// ---- Logprob and entropy ---------------------------------------------------------------------

TEST_CASE("Logprob and entropy on a hand-checked example and with huge logits", "[ops]") {
  // logits [0, ln 2, ln 3]: exp = 1, 2, 3, so p = 1/6, 1/3, 1/2 at tau = 1; at tau = 0.5,
  // exp(2 z) = 1, 4, 9 and p = 1/14, 4/14, 9/14.
  const Vec logits = {0, std::log(2.0), std::log(3.0), 0, std::log(2.0), std::log(3.0)};
  const std::vector<int32_t> target = {2, -1};
  Vec lp(2), ent(2), lse(2);
  LogprobForward(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), 2, 3, 1.0f);
  auto h = [](std::vector<double> p) {
    double s = 0;
    for (double x : p) s -= x * std::log(x);
    return s;
  };
  CHECK(lse[0] == Approx(std::log(6.0)).epsilon(1e-14));
  CHECK(lp[0] == Approx(std::log(0.5)).epsilon(1e-14));
  CHECK(lp[1] == 0.0);
  CHECK(ent[0] == Approx(h({1.0 / 6, 1.0 / 3, 0.5})).epsilon(1e-14));
  CHECK(ent[1] == Approx(ent[0]).epsilon(1e-14));
  LogprobForward(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), 2, 3, 0.5f);
  CHECK(lse[0] == Approx(std::log(14.0)).epsilon(1e-14));
  CHECK(lp[0] == Approx(std::log(9.0 / 14)).epsilon(1e-14));
  CHECK(ent[1] == Approx(h({1.0 / 14, 4.0 / 14, 9.0 / 14})).epsilon(1e-14));

  // Huge logits: exp(1e4) overflows unless the max is subtracted. Same p as above in float.
  const std::vector<float> big = {1e4f, 1e4f + 1, 1e4f - 1, 1e4f + 1};
  const std::vector<int32_t> t1 = {1};
  std::vector<float> lpf(1), entf(1), lsef(1);
  LogprobForward(lpf.data(), entf.data(), lsef.data(), big.data(), t1.data(), 1, 4, 1.0f);
  const double zs = 1 + 2 * std::exp(1.0) + std::exp(-1.0);  // relative to 1e4
  CHECK(lsef[0] == Approx(1e4 + std::log(zs)).epsilon(1e-7));
  CHECK(lpf[0] == Approx(1 - std::log(zs)).epsilon(1e-6));
  CHECK(entf[0] == Approx(h({1 / zs, std::exp(1.0) / zs, std::exp(-1.0) / zs, std::exp(1.0) / zs}))
                       .epsilon(1e-6));
}

TEST_CASE("Logprob backward matches finite differences, and float matches double", "[ops]") {
  std::mt19937_64 rng(8);
  const int64_t T = 4, V = 7;
  const float tau = 0.7f;
  Vec logits = RandVec(rng, T * V, -3, 3);
  const std::vector<int32_t> target = {2, -1, 0, 6};
  const Vec glp = RandVec(rng, T), gent = RandVec(rng, T);
  for (bool with_ent : {false, true}) {
    DYNAMIC_SECTION("entropy grad " << with_ent) {
      auto loss = [&] {
        Vec lp(T), ent(T), lse(T);
        LogprobForward(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), T, V, tau);
        return Dot(lp, glp) + (with_ent ? Dot(ent, gent) : 0.0);
      };
      Vec lp(T), ent(T), lse(T);
      LogprobForward(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), T, V, tau);
      CHECK(lp[1] == 0.0);
      Vec grad = logits;
      LogprobBackwardInPlace(grad.data(), glp.data(), with_ent ? gent.data() : nullptr, lse.data(),
                             target.data(), T, V, tau);
      CheckGrad("logprob dlogits", loss, logits, grad);

      std::vector<float> lf = ToFloat(logits), lpf(T), entf(T), lsef(T);
      std::vector<float> glpf = ToFloat(glp), gentf = ToFloat(gent);
      LogprobForward(lpf.data(), entf.data(), lsef.data(), lf.data(), target.data(), T, V, tau);
      CheckClose("lp f32", lpf, lp, 1e-6, 1e-6);
      CheckClose("ent f32", entf, ent, 1e-6, 1e-6);
      CheckClose("lse f32", lsef, lse, 1e-6, 1e-6);
      LogprobBackwardInPlace(lf.data(), glpf.data(), with_ent ? gentf.data() : nullptr, lsef.data(),
                             target.data(), T, V, tau);
      CheckClose("dlogits f32", lf, grad, 1e-5, 1e-6);
    }
  }
}

// ---- Embedding -------------------------------------------------------------------------------

TEST_CASE("Embedding gathers rows and scatter-adds gradients", "[ops]") {
  std::mt19937_64 rng(9);
  const int64_t T = 5, H = 3, V = 4;
  const std::vector<int32_t> tokens = {2, 0, 2, 3, 2};  // repeated token, unused token 1
  Vec table = RandVec(rng, V * H), g = RandVec(rng, T * H);
  Vec out(T * H);
  EmbeddingForward(out.data(), tokens.data(), table.data(), T, H);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < H; ++c) CHECK(out[t * H + c] == table[tokens[t] * H + c]);
  }
  auto loss = [&] {
    Vec o(T * H);
    EmbeddingForward(o.data(), tokens.data(), table.data(), T, H);
    return Dot(o, g);
  };
  Vec dtable(V * H, kPrefill);
  EmbeddingBackward(dtable.data(), tokens.data(), g.data(), T, H, V);
  CheckGrad("embedding dtable", loss, table, Minus(dtable, kPrefill));
  CHECK(dtable[1 * H + 0] == kPrefill);

  std::vector<float> tf = ToFloat(table), gf = ToFloat(g), of(T * H), dtf(V * H, kPrefill);
  EmbeddingForward(of.data(), tokens.data(), tf.data(), T, H);
  EmbeddingBackward(dtf.data(), tokens.data(), gf.data(), T, H, V);
  CheckClose("embedding fwd f32", of, out, 1e-7, 0);
  CheckClose("embedding bwd f32", dtf, dtable, 1e-6, 1e-7);
}

// ---- Float vs double on larger shapes (vectorized and threaded paths) ---------------------

TEST_CASE("RmsNorm and logprob float match double on wide rows", "[ops]") {
  std::mt19937_64 rng(10);
  const int64_t T = 16, C = 1000, V = 5003;
  Vec x = RandVec(rng, T * C, -3, 3), w = RandVec(rng, C, 0.5, 1.5), g = RandVec(rng, T * C);
  Vec out(T * C), rstd(T), dx(T * C), dw(C);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f);
  RmsNormBackward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), T, C);
  std::vector<float> xf = ToFloat(x), wf = ToFloat(w), gf = ToFloat(g), outf(T * C), rstdf(T);
  std::vector<float> dxf(T * C), dwf(C);
  RmsNormForward(outf.data(), rstdf.data(), xf.data(), wf.data(), T, C, 1e-6f);
  RmsNormBackward(dxf.data(), dwf.data(), gf.data(), xf.data(), wf.data(), rstdf.data(), T, C);
  CheckClose("rmsnorm out f32", outf, out, 1e-6, 1e-6);
  CheckClose("rmsnorm dx f32", dxf, dx, 1e-5, 1e-6);
  CheckClose("rmsnorm dw f32", dwf, dw, 1e-5, 1e-5);

  Vec logits = RandVec(rng, T * V, -20, 20);
  std::vector<int32_t> target(T);
  for (int64_t t = 0; t < T; ++t) target[t] = static_cast<int32_t>((t * 977) % V);
  target[3] = -1;
  Vec lp(T), ent(T), lse(T), dlp = RandVec(rng, T), dent = RandVec(rng, T);
  LogprobForward(lp.data(), ent.data(), lse.data(), logits.data(), target.data(), T, V, 1.3f);
  std::vector<float> lf = ToFloat(logits), lpf(T), entf(T), lsef(T);
  LogprobForward(lpf.data(), entf.data(), lsef.data(), lf.data(), target.data(), T, V, 1.3f);
  CheckClose("lp f32 wide", lpf, lp, 1e-5, 1e-5);
  CheckClose("ent f32 wide", entf, ent, 1e-5, 1e-5);
  LogprobBackwardInPlace(logits.data(), dlp.data(), dent.data(), lse.data(), target.data(), T, V,
                         1.3f);
  std::vector<float> dlpf = ToFloat(dlp), dentf = ToFloat(dent);
  LogprobBackwardInPlace(lf.data(), dlpf.data(), dentf.data(), lsef.data(), target.data(), T, V,
                         1.3f);
  CheckClose("dlogits f32 wide", lf, logits, 1e-4, 1e-7);
}

}  // namespace
}  // namespace grpo::cpu
