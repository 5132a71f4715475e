// Model<Real>: embedding, decoder layers (attention here, FFN/MoE in model_ffn.cc), final norm,
// logprob head; Forward / Backward / Extend. See model.h for the contract.
#include "model/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_runs.h"
#include "model/model_internal.h"

namespace grpo {

using cpu::LinearBackward;
using cpu::LinearForward;

void TokenBatch::Add(absl::Span<const int32_t> seq) {
  tokens.insert(tokens.end(), seq.begin(), seq.end());
  offsets.push_back(static_cast<int64_t>(tokens.size()));
}

template <typename Real>
bool Model<Real>::PrepackWeights() {
  DropPacked();
  if constexpr (!std::is_same_v<Real, float>) {
    return false;
  } else {
    if (!cpu::PackedWeightsSupported()) return false;
    const ModelConfig& c = config_;
    const int64_t H = c.hidden_size;
    // (offset, groups, out, in) of every weight a forward multiplies by.
    struct W {
      int64_t offset, groups, out, in;
    };
    std::vector<W> ws;
    for (const LayerOffsets& o : layout_.layers) {
      const int64_t qd = c.num_attention_heads * c.head_dim;
      const int64_t kvd = c.num_key_value_heads * c.head_dim;
      ws.push_back({o.q, 1, qd + 2 * kvd, H});
      ws.push_back({o.o, 1, H, qd});
      if (!o.moe) {
        ws.push_back({o.mlp_gate_up, 1, 2 * c.intermediate_size, H});
        ws.push_back({o.mlp_down, 1, H, c.intermediate_size});
        continue;
      }
      const int64_t E = c.num_experts, Im = c.moe_intermediate_size;
      ws.push_back({o.router, 1, E, H});
      ws.push_back({o.experts_gate_up, E, 2 * Im, H});
      ws.push_back({o.experts_down, E, H, Im});
      if (c.HasSharedExpert()) {
        const int64_t Is = c.shared_expert_intermediate_size;
        ws.push_back({o.shared_gate_up, 1, 2 * Is, H});
        ws.push_back({o.shared_down, 1, H, Is});
      }
    }
    ws.push_back({layout_.lm_head, 1, c.vocab_size, H});
    // A weight whose every element is exactly a bf16 value (a bf16 checkpoint, a bf16 weight
    // update) is packed at 2 bytes per element, losslessly (gemm.h IsBf16Exact): decode streams
    // the weights from memory, so that halves its bytes with bitwise the same results.
    int64_t total = 0, total16 = 0;
    std::vector<bool> bf16(ws.size());
    for (size_t i = 0; i < ws.size(); ++i) {
      const W& w = ws[i];
      bf16[i] = cpu::IsBf16Exact(params_.data() + w.offset, w.groups * w.out * w.in);
      (bf16[i] ? total16 : total) += w.groups * cpu::PackedWeightFloats(w.out, w.in);
    }
    packed_.resize(static_cast<size_t>(total));
    packed16_.resize(static_cast<size_t>(total16));
    int64_t at = 0, at16 = 0;
    for (size_t i = 0; i < ws.size(); ++i) {
      const W& w = ws[i];
      packed_at_[w.offset] = {bf16[i] ? at16 : at, bf16[i]};
      for (int64_t g = 0; g < w.groups; ++g) {
        const float* src = params_.data() + w.offset + g * w.out * w.in;
        if (bf16[i]) {
          cpu::PackWeightBf16(src, w.out, w.in, packed16_.data() + at16);
          at16 += cpu::PackedWeightFloats(w.out, w.in);
        } else {
          cpu::PackWeight(src, w.out, w.in, packed_.data() + at);
          at += cpu::PackedWeightFloats(w.out, w.in);
        }
      }
    }
    packed_bf16_ = std::count(bf16.begin(), bf16.end(), true);
    return true;
  }
}

template <typename Real>
void Model<Real>::Linear(Real* y, const Real* x, int64_t w, const Real* b, int64_t T, int64_t in,
                         int64_t out) const {
  if constexpr (std::is_same_v<Real, float>) {
    if (batch_invariant_ && !packed_at_.empty()) {
      const auto it = packed_at_.find(w);
      if (it != packed_at_.end()) {
        const auto [at, bf16] = it->second;
        if (bf16) {
          cpu::PackedLinearForward(y, x, packed16_.data() + at, b, T, in, out);
        } else {
          cpu::PackedLinearForward(y, x, packed_.data() + at, b, T, in, out);
        }
        return;
      }
    }
  }
  LinearForward<Real>(y, x, params_.data() + w, b, T, in, out);
}

template <typename Real>
void Model<Real>::GroupedLinear(Real* y, const Real* x, int64_t w, const int64_t* row_begin,
                                int64_t num_groups, int64_t in, int64_t out,
                                const int32_t* x_rows, std::vector<Real>* gathered) const {
  if constexpr (std::is_same_v<Real, float>) {
    if (batch_invariant_ && !packed_at_.empty()) {
      const auto it = packed_at_.find(w);
      if (it != packed_at_.end()) {
        const auto [at, bf16] = it->second;
        const int64_t stride = cpu::PackedWeightFloats(out, in);
        if (bf16) {
          cpu::PackedGroupedLinearForward(y, x, packed16_.data() + at, stride, row_begin,
                                          num_groups, in, out, x_rows);
        } else {
          cpu::PackedGroupedLinearForward(y, x, packed_.data() + at, stride, row_begin, num_groups,
                                          in, out, x_rows);
        }
        return;
      }
    }
  }
  if (x_rows != nullptr) {
    GRPO_CHECK(gathered != nullptr);
    GatherRows(*gathered, x, x_rows, row_begin[num_groups], in);
    x = gathered->data();
  }
  cpu::GroupedLinearForward<Real>(y, x, params_.data() + w, out * in, row_begin, num_groups, in,
                                  out);
}

template <typename Real>
KvCache<Real>::KvCache(const ModelConfig& c, int64_t num_slots, int64_t max_len)
    : max_len_(max_len),
      row_(c.num_key_value_heads * c.head_dim),
      length_(num_slots, 0),
      offset_(num_slots),
      capacity_(num_slots, max_len),
      shared_offset_(num_slots, 0),
      shared_len_(num_slots, 0) {
  for (int64_t s = 0; s < num_slots; ++s) offset_[s] = s * max_len;
  k_.resize(c.num_hidden_layers);
  v_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    k_[l].assign(num_slots * max_len * row_, Real(0));
    v_[l].assign(num_slots * max_len * row_, Real(0));
  }
}

template <typename Real>
KvCache<Real> KvCache<Real>::Pooled(const ModelConfig& c, int64_t num_slots, int64_t pool_rows) {
  KvCache<Real> cache;
  cache.max_len_ = pool_rows;
  cache.row_ = c.num_key_value_heads * c.head_dim;
  cache.length_.assign(num_slots, 0);
  cache.offset_.assign(num_slots, 0);
  cache.capacity_.assign(num_slots, 0);
  cache.shared_offset_.assign(num_slots, 0);
  cache.shared_len_.assign(num_slots, 0);
  cache.k_.resize(c.num_hidden_layers);
  cache.v_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    cache.k_[l].assign(pool_rows * cache.row_, Real(0));
    cache.v_[l].assign(pool_rows * cache.row_, Real(0));
  }
  return cache;
}

template <typename Real>
void KvCache<Real>::Assign(int64_t slot, int64_t row_offset, int64_t capacity) {
  const int64_t arena_rows = k_.empty() || row_ == 0 ? 0 : static_cast<int64_t>(k_[0].size()) / row_;
  GRPO_CHECK(row_offset >= 0 && capacity >= 0 && row_offset + capacity <= arena_rows);
  offset_[slot] = row_offset;
  capacity_[slot] = capacity;
  length_[slot] = 0;
  shared_len_[slot] = 0;
}

template <typename Real>
void KvCache<Real>::CopyPrefix(int64_t src, int64_t dst, int64_t n) {
  GRPO_CHECK(n <= length_[src] && shared_len_[src] == 0 && n <= capacity_[dst]);
  for (int64_t l = 0; l < num_layers(); ++l) {
    std::memcpy(k(l, dst), k(l, src), sizeof(Real) * n * row_);
    std::memcpy(v(l, dst), v(l, src), sizeof(Real) * n * row_);
  }
  length_[dst] = n;
  shared_len_[dst] = 0;
}

template <typename Real>
void KvCache<Real>::SharePrefix(int64_t src, int64_t dst, int64_t n) {
  GRPO_CHECK(src != dst && n >= 0 && n <= length_[src] && shared_len_[src] == 0);
  GRPO_CHECK(length_[dst] == 0);
  shared_offset_[dst] = offset_[src];
  shared_len_[dst] = n;
  length_[dst] = n;
}

template <typename Real>
Model<Real>::Model(const ModelConfig& config)
    : config_(config), layout_(ParamLayout::Build(config)), acts_(std::make_unique<Acts>()) {
  params_.assign(layout_.total, Real(0));
}

template <typename Real>
Model<Real>::~Model() = default;

template <typename Real>
absl::StatusOr<std::unique_ptr<Model<Real>>> Model<Real>::Create(const ModelConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  return std::unique_ptr<Model<Real>>(new Model<Real>(config));
}

template <typename Real>
void Model<Real>::ZeroGrads() {
  EnsureGrads();
  std::fill(grads_.begin(), grads_.end(), Real(0));
}

template <typename Real>
void Model<Real>::EnsureRope(int64_t max_pos) {
  if (max_pos <= rope_len_) return;
  const int64_t n = std::max<int64_t>(max_pos, std::min<int64_t>(2 * rope_len_, config_.max_position_embeddings));
  const int64_t half = config_.head_dim / 2;
  const std::vector<float> inv = config_.RopeInvFreq();
  rope_cos_.resize(n * half);
  rope_sin_.resize(n * half);
  cpu::RopeTable<Real>(rope_cos_.data(), rope_sin_.data(), inv.data(), n, half);
  rope_len_ = n;
}

template <typename Real>
absl::Status Model<Real>::CheckTokens(absl::Span<const int32_t> tokens,
                                      const std::string& what) const {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": token ", tokens[i], " at position ",
                                                     i, " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

template <typename Real>
void Model<Real>::LayerForward(int64_t l, LayerActs& a, Real* x, int64_t T, const int32_t* pos,
                               const std::vector<int64_t>& offsets, KvCache<Real>* cache,
                               absl::Span<const int64_t> slots, const int32_t* forced,
                               bool save) {
  const ModelConfig& c = config_;
  const LayerOffsets& o = layout_.layers[l];
  const Real* P = params_.data();
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                nkv = c.num_key_value_heads, qd = nh * hd, kvd = nkv * hd;
  auto bias = [&](int64_t off) { return off >= 0 ? P + off : nullptr; };

  // x += add (when not null), then out = RmsNorm(x): one region, each thread a contiguous run of
  // tokens (decode's 64 x H is too little work for a region per op; the per-row kernels keep the
  // bits).
  // `after(t0, n)`: more per-token work each thread does on its run of tokens once they are
  // normed (a MoE layer's routing).
  const auto residual_norm = [&](const Real* add, Real* out, Real* rstd, int64_t w,
                                 const auto& after) {
#pragma omp parallel if (T * H >= kMinParallelElems / 4)
    {
      const auto [t0, t1] = cpu::EvenRun(T);
      const int64_t n = t1 - t0;
      if (add != nullptr) {
        for (int64_t i = t0 * H; i < (t0 + n) * H; ++i) x[i] += add[i];
      }
      if (n > 0) {
        cpu::RmsNormForward<Real>(out + t0 * H, rstd + t0, x + t0 * H, P + w, n, H,
                                  c.rms_norm_eps);
        after(t0, n);
      }
    }
  };
  const auto nothing = [](int64_t, int64_t) {};

  if (save) a.x_in.assign(x, x + T * H);
  Resize(a.ln1, T * H);
  Resize(a.rstd1, T);
  residual_norm(nullptr, a.ln1.data(), a.rstd1.data(), o.ln1, nothing);

  // One GEMM for q, k and v (their weights are one matrix), then split into dense buffers.
  const int64_t qkvd = qd + 2 * kvd;
  Resize(a.qkv, T * qkvd);
  Linear(a.qkv.data(), a.ln1.data(), o.q, bias(o.qb), T, H, qkvd);
  Resize(a.q, T * qd);
  Resize(a.k, T * kvd);
  Resize(a.v, T * kvd);
  if (c.qk_norm) {
    Resize(a.q_raw, T * qd);
    Resize(a.k_raw, T * kvd);
  }
  Real* q_dst = c.qk_norm ? a.q_raw.data() : a.q.data();
  Real* k_dst = c.qk_norm ? a.k_raw.data() : a.k.data();
  if (c.qk_norm) {
    Resize(a.rstd_q, T * nh);
    Resize(a.rstd_k, T * nkv);
  }
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<int32_t> token_seq;  // with a cache: each token's sequence
  if (cache != nullptr) {
    token_seq.resize(T);
    for (int64_t b = 0; b < B; ++b) {
      std::fill(token_seq.begin() + offsets[b], token_seq.begin() + offsets[b + 1], b);
    }
  }
  // Split the qkv rows into q, k, v, the q/k norms, RoPE, and with a cache the new K/V rows into
  // the cache: one region, each thread all of it for a contiguous run of tokens (a decode step's
  // few tokens are too little work for a region per op). Each op runs its per-row kernel on the
  // run's rows: the same bits as on all T rows at once.
#pragma omp parallel if (T * qkvd >= kMinParallelElems / 8)
  {
    const auto [t0, t1] = cpu::EvenRun(T);
    const int64_t n = t1 - t0;
    for (int64_t t = t0; t < t0 + n; ++t) {
      const Real* row = a.qkv.data() + t * qkvd;
      std::copy_n(row, qd, q_dst + t * qd);
      std::copy_n(row + qd, kvd, k_dst + t * kvd);
      std::copy_n(row + qd + kvd, kvd, a.v.data() + t * kvd);
    }
    Real* q = a.q.data() + t0 * qd;
    Real* k = a.k.data() + t0 * kvd;
    if (c.qk_norm && n > 0) {
      cpu::RmsNormForward<Real>(q, a.rstd_q.data() + t0 * nh, a.q_raw.data() + t0 * qd,
                                P + o.q_norm, n * nh, hd, c.rms_norm_eps);
      cpu::RmsNormForward<Real>(k, a.rstd_k.data() + t0 * nkv, a.k_raw.data() + t0 * kvd,
                                P + o.k_norm, n * nkv, hd, c.rms_norm_eps);
    }
    if (n > 0) {
      cpu::RopeForward<Real>(q, pos + t0, rope_cos_.data(), rope_sin_.data(), n, nh, hd);
      cpu::RopeForward<Real>(k, pos + t0, rope_cos_.data(), rope_sin_.data(), n, nkv, hd);
    }
    for (int64_t t = t0; cache != nullptr && t < t0 + n; ++t) {
      const int64_t b = token_seq[t], slot = slots[b];
      const int64_t at = cache->length(slot) - cache->shared_len(slot) + (t - offsets[b]);
      std::copy_n(a.k.data() + t * kvd, kvd, cache->k(l, slot) + at * kvd);
      std::copy_n(a.v.data() + t * kvd, kvd, cache->v(l, slot) + at * kvd);
    }
  }

  std::vector<cpu::AttnSeq<Real>> seqs(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t begin = offsets[b], len = offsets[b + 1] - offsets[b];
    if (cache == nullptr) {
      seqs[b] = {begin, len, a.k.data() + begin * kvd, a.v.data() + begin * kvd, len};
    } else {
      const int64_t slot = slots[b];
      seqs[b] = {begin,
                 len,
                 cache->k(l, slot),
                 cache->v(l, slot),
                 cache->length(slot) + len,
                 cache->shared_k(l, slot),
                 cache->shared_v(l, slot),
                 cache->shared_len(slot)};
    }
  }
  Resize(a.attn, T * qd);
  Resize(a.lse, T * nh);
  const Real scale = Real(1) / std::sqrt(Real(hd));
  cpu::AttentionForward<Real>(a.attn.data(), a.lse.data(), a.q.data(), seqs.data(), B, nh, nkv,
                              hd, scale);
  Resize(a.tmp, T * H);
  Linear(a.tmp.data(), a.attn.data(), o.o, bias(o.ob), T, qd, H);
  Resize(a.ln2, T * H);
  Resize(a.rstd2, T);
  // A MoE layer's router runs on each thread's tokens right after their norm (in batch-invariant
  // mode, where a token's router logits do not depend on how many rows the product had): at decode
  // sizes its own region, for a (T, 16) product, cost more than the product.
  const bool route_in_norm = o.moe && batch_invariant_;
  if (route_in_norm) SizeRouter(a, T);
  const auto route = [&](int64_t t0, int64_t n) {
    cpu::BatchInvariantScope invariant(true);  // thread-local: this may be a worker thread
    RouteForward(l, a, a.ln2.data(), t0, n, forced);
  };
  if (route_in_norm) {
    residual_norm(a.tmp.data(), a.ln2.data(), a.rstd2.data(), o.ln2, route);
  } else {
    residual_norm(a.tmp.data(), a.ln2.data(), a.rstd2.data(), o.ln2, nothing);
  }
  if (save) a.x_mid.assign(x, x + T * H);
  FfnForward(l, a, a.ln2.data(), a.tmp.data(), x, T, forced, route_in_norm);
}

template <typename Real>
void Model<Real>::LayerBackward(int64_t l, LayerActs& a, Real* dx, int64_t T,
                                const std::vector<int64_t>& offsets) {
  const ModelConfig& c = config_;
  const LayerOffsets& o = layout_.layers[l];
  const Real* P = params_.data();
  Real* G = grads_.data();
  Acts& s = *acts_;
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_attention_heads,
                nkv = c.num_key_value_heads, qd = nh * hd, kvd = nkv * hd;
  auto gbias = [&](int64_t off) { return off >= 0 ? G + off : nullptr; };

  // FFN branch: out = mid + ffn(rmsnorm(mid)).
  ZeroResize(s.dln, T * H);
  FfnBackward(l, a, dx, s.dln.data(), T);
  cpu::RmsNormBackward<Real>(dx, G + o.ln2, s.dln.data(), a.x_mid.data(), P + o.ln2,
                             a.rstd2.data(), T, H);

  // Attention branch: mid = in + o_proj(attention(rope(norm(q)), rope(norm(k)), v)).
  ZeroResize(s.dattn, T * qd);
  LinearBackward<Real>(s.dattn.data(), G + o.o, gbias(o.ob), dx, a.attn.data(), P + o.o, T, qd, H);
  ZeroResize(s.dq, T * qd);
  ZeroResize(s.dk, T * kvd);
  ZeroResize(s.dv, T * kvd);
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<cpu::AttnSeq<Real>> seqs(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t begin = offsets[b], len = offsets[b + 1] - offsets[b];
    seqs[b] = {begin, len, a.k.data() + begin * kvd, a.v.data() + begin * kvd, len};
  }
  const Real scale = Real(1) / std::sqrt(Real(hd));
  cpu::AttentionBackward<Real>(s.dq.data(), s.dk.data(), s.dv.data(), s.dattn.data(),
                               a.attn.data(), a.lse.data(), a.q.data(), seqs.data(), B, nh, nkv,
                               hd, scale);
  const int32_t* pos = s.pos.data();
  cpu::RopeBackward<Real>(s.dq.data(), pos, rope_cos_.data(), rope_sin_.data(), T, nh, hd);
  cpu::RopeBackward<Real>(s.dk.data(), pos, rope_cos_.data(), rope_sin_.data(), T, nkv, hd);
  const Real* dq = s.dq.data();
  const Real* dk = s.dk.data();
  if (c.qk_norm) {
    ZeroResize(s.dq_raw, T * qd);
    ZeroResize(s.dk_raw, T * kvd);
    cpu::RmsNormBackward<Real>(s.dq_raw.data(), G + o.q_norm, dq, a.q_raw.data(), P + o.q_norm,
                               a.rstd_q.data(), T * nh, hd);
    cpu::RmsNormBackward<Real>(s.dk_raw.data(), G + o.k_norm, dk, a.k_raw.data(), P + o.k_norm,
                               a.rstd_k.data(), T * nkv, hd);
    dq = s.dq_raw.data();
    dk = s.dk_raw.data();
  }
  // Pack dq | dk | dv and run the fused projection's backward as one GEMM pair.
  const int64_t qkvd = qd + 2 * kvd;
  Resize(s.dqkv, T * qkvd);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    Real* row = s.dqkv.data() + t * qkvd;
    std::copy_n(dq + t * qd, qd, row);
    std::copy_n(dk + t * kvd, kvd, row + qd);
    std::copy_n(s.dv.data() + t * kvd, kvd, row + qd + kvd);
  }
  ZeroResize(s.dln, T * H);
  LinearBackward<Real>(s.dln.data(), G + o.q, gbias(o.qb), s.dqkv.data(), a.ln1.data(), P + o.q,
                       T, H, qkvd);
  cpu::RmsNormBackward<Real>(dx, G + o.ln1, s.dln.data(), a.x_in.data(), P + o.ln1,
                             a.rstd1.data(), T, H);
}

template <typename Real>
absl::Status Model<Real>::Forward(const TokenBatch& batch, const ForwardOptions& opt,
                                  ForwardResult<Real>* result) {
  const ModelConfig& c = config_;
  Acts& s = *acts_;
  s.valid = false;
  cpu::BatchInvariantScope invariant(batch_invariant_);
  const int64_t T = batch.num_tokens(), B = batch.num_seqs();
  const int64_t H = c.hidden_size, V = c.vocab_size, K = c.num_experts_per_tok;
  const int64_t num_moe = c.NumMoeLayers();
  if (T == 0 || B <= 0) return absl::InvalidArgumentError("forward: empty batch");
  if (batch.offsets.front() != 0 || batch.offsets.back() != T) {
    return absl::InvalidArgumentError("forward: batch offsets must start at 0 and end at T");
  }
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = batch.offsets[b + 1] - batch.offsets[b];
    if (len < 0) return absl::InvalidArgumentError("forward: batch offsets must not decrease");
    max_len = std::max(max_len, len);
  }
  if (max_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward: a sequence of ", max_len, " tokens exceeds max_position_embeddings (",
                     c.max_position_embeddings, ")"));
  }
  if (!(opt.temperature > 0) || !std::isfinite(opt.temperature)) {
    return absl::InvalidArgumentError("forward: temperature must be a positive finite number");
  }
  for (int64_t b = 0; b < B; ++b) {
    RETURN_IF_ERROR(CheckTokens(
        absl::MakeConstSpan(batch.tokens).subspan(batch.offsets[b], batch.offsets[b + 1] - batch.offsets[b]),
        absl::StrCat("sequence ", b)));
  }
  if (!opt.replay_routing.empty()) {
    if (static_cast<int64_t>(opt.replay_routing.size()) != num_moe * T * K) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: replay_routing has ", opt.replay_routing.size(), " ids, expected ", num_moe,
          " MoE layers x ", T, " tokens x ", K, " = ", num_moe * T * K));
    }
    for (size_t i = 0; i < opt.replay_routing.size(); ++i) {
      const int32_t e = opt.replay_routing[i];
      const size_t row = i / K * K;
      bool dup = false;
      for (size_t j = row; j < i; ++j) dup |= opt.replay_routing[j] == e;
      if (e < 0 || e >= c.num_experts || dup) {
        return absl::InvalidArgumentError(absl::StrCat(
            "forward: replay_routing[", i, "] = ", e, " is not a valid distinct expert id in [0, ",
            c.num_experts, ")"));
      }
    }
  }

  EnsureRope(max_len);
  s.T = T;
  s.temperature = opt.temperature;
  s.aux_coef = opt.aux_loss_coef;
  s.tokens = batch.tokens;
  s.offsets = batch.offsets;
  s.pos.resize(T);
  s.targets.resize(T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = batch.offsets[b]; p < batch.offsets[b + 1]; ++p) {
      s.pos[p] = static_cast<int32_t>(p - batch.offsets[b]);
      s.targets[p] = p + 1 < batch.offsets[b + 1] ? batch.tokens[p + 1] : -1;
    }
  }
  Resize(s.x, T * H);
  cpu::EmbeddingForward<Real>(s.x.data(), s.tokens.data(), params_.data() + layout_.embed, T, H);

  const bool save = opt.for_backward;
  if (save) s.layers.resize(c.num_hidden_layers);
  if (opt.record_routing) {
    result->routing.assign(num_moe * T * K, 0);
  } else {
    result->routing.clear();
  }
  // Load-balancing statistics over all MoE layers' tokens (HF concatenates layers).
  std::vector<double> count(c.num_experts, 0.0), prob_sum(c.num_experts, 0.0);
  int64_t moe_idx = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerActs& a = save ? s.layers[l] : s.scratch;
    const bool moe = layout_.layers[l].moe;
    const int32_t* forced =
        moe && !opt.replay_routing.empty() ? opt.replay_routing.data() + moe_idx * T * K : nullptr;
    LayerForward(l, a, s.x.data(), T, s.pos.data(), s.offsets, nullptr, {}, forced, save);
    if (moe) {
      if (opt.record_routing) {
        std::copy(a.idx.begin(), a.idx.end(), result->routing.begin() + moe_idx * T * K);
      }
      if (opt.aux_loss_coef > 0) {
        for (int64_t i = 0; i < T * K; ++i) count[a.idx[i]] += 1;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t e = 0; e < c.num_experts; ++e) prob_sum[e] += a.probs[t * c.num_experts + e];
      }
      ++moe_idx;
    }
  }
  result->aux_loss = 0;
  if (opt.aux_loss_coef > 0 && num_moe > 0) {
    // L = E * sum_{j,e} f[j,e] * Pm[e], f = count / T_all, Pm = prob_sum / T_all.
    const double t_all = static_cast<double>(num_moe * T), E = static_cast<double>(c.num_experts);
    double loss = 0;
    s.aux_dprobs.assign(c.num_experts, Real(0));
    for (int64_t e = 0; e < c.num_experts; ++e) {
      loss += count[e] * prob_sum[e];
      s.aux_dprobs[e] = static_cast<Real>(opt.aux_loss_coef * E * count[e] / t_all / t_all);
    }
    result->aux_loss = static_cast<Real>(E * loss / (t_all * t_all));
  }

  // Final norm and the logprob head. Without backward, logits are made a chunk at a time.
  Resize(s.lnf, T * H);
  Resize(s.rstdf, T);
  if (save) s.x_final = s.x;
  cpu::RmsNormForward<Real>(s.lnf.data(), s.rstdf.data(), s.x.data(),
                            params_.data() + layout_.norm, T, H, c.rms_norm_eps);
  result->logprobs.assign(T, Real(0));
  result->entropy.assign(T, Real(0));
  Resize(s.lse, T);
  const int64_t chunk = save ? T : std::max<int64_t>(1, (int64_t{1} << 24) / V);
  Resize(s.logits, std::min(chunk, T) * V);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    Linear(s.logits.data(), s.lnf.data() + t0 * H, layout_.lm_head, nullptr, n, H, V);
    cpu::LogprobForward<Real>(result->logprobs.data() + t0, result->entropy.data() + t0,
                              s.lse.data() + t0, s.logits.data(), s.targets.data() + t0, n, V,
                              opt.temperature);
  }
  s.valid = save;
  return absl::OkStatus();
}

template <typename Real>
absl::Status Model<Real>::Backward(absl::Span<const Real> dlogprobs,
                                   absl::Span<const Real> dentropy) {
  Acts& s = *acts_;
  if (!s.valid) {
    return absl::FailedPreconditionError(
        "backward: no activations; call Forward with for_backward = true first (once per "
        "Backward)");
  }
  const ModelConfig& c = config_;
  const int64_t T = s.T, H = c.hidden_size, V = c.vocab_size;
  if (static_cast<int64_t>(dlogprobs.size()) != T ||
      (!dentropy.empty() && static_cast<int64_t>(dentropy.size()) != T)) {
    return absl::InvalidArgumentError(absl::StrCat("backward: expected ", T, " gradients, got ",
                                                   dlogprobs.size(), " / ", dentropy.size()));
  }
  s.valid = false;
  EnsureGrads();
  Real* G = grads_.data();
  const Real* P = params_.data();
  cpu::LogprobBackwardInPlace<Real>(s.logits.data(), dlogprobs.data(),
                                    dentropy.empty() ? nullptr : dentropy.data(), s.lse.data(),
                                    s.targets.data(), T, V, s.temperature);
  ZeroResize(s.dffn, T * H);
  LinearBackward<Real>(s.dffn.data(), G + layout_.lm_head, nullptr, s.logits.data(),
                       s.lnf.data(), P + layout_.lm_head, T, H, V);
  ZeroResize(s.dx, T * H);
  cpu::RmsNormBackward<Real>(s.dx.data(), G + layout_.norm, s.dffn.data(), s.x_final.data(),
                             P + layout_.norm, s.rstdf.data(), T, H);
  // Grad-ready blocks (see set_grad_ready_callback): the layout is [embed][layer 0]..[layer L-1]
  // [norm][lm_head unless tied], and layer l's block starts at its input_layernorm.
  const bool tied = layout_.lm_head == layout_.embed;
  if (grad_ready_) grad_ready_(layout_.norm, tied ? H : layout_.total - layout_.norm);
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    LayerBackward(l, s.layers[l], s.dx.data(), T, s.offsets);
    if (grad_ready_) {
      const int64_t end = l + 1 < c.num_hidden_layers ? layout_.layers[l + 1].ln1 : layout_.norm;
      grad_ready_(layout_.layers[l].ln1, end - layout_.layers[l].ln1);
    }
  }
  cpu::EmbeddingBackward<Real>(G + layout_.embed, s.tokens.data(), s.dx.data(), T, H, V);
  if (grad_ready_) grad_ready_(layout_.embed, V * H);
  return absl::OkStatus();
}

template <typename Real>
absl::Status Model<Real>::Extend(KvCache<Real>* cache, absl::Span<const int64_t> slots,
                                 absl::Span<const absl::Span<const int32_t>> new_tokens,
                                 Real* logits, std::vector<int32_t>* routing) {
  const ModelConfig& c = config_;
  Acts& s = *acts_;
  s.valid = false;  // Extend reuses the scratch buffers
  cpu::BatchInvariantScope invariant(batch_invariant_);
  const int64_t B = static_cast<int64_t>(slots.size());
  const int64_t H = c.hidden_size, V = c.vocab_size, K = c.num_experts_per_tok;
  if (B == 0 || new_tokens.size() != slots.size()) {
    return absl::InvalidArgumentError("extend: need one token list per slot, and at least one");
  }
  if (cache == nullptr || logits == nullptr) {
    return absl::InvalidArgumentError("extend: cache and logits must not be null");
  }
  if (cache->num_layers() != c.num_hidden_layers ||
      cache->row_width() != c.num_key_value_heads * c.head_dim) {
    return absl::InvalidArgumentError("extend: the KV cache was built for another model config");
  }
  std::vector<int64_t> offsets = {0};
  std::vector<int32_t> tokens, pos;
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t slot = slots[b];
    if (slot < 0 || slot >= cache->num_slots()) {
      return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " out of range"));
    }
    for (int64_t j = 0; j < b; ++j) {
      if (slots[j] == slot) {
        return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " listed twice"));
      }
    }
    const int64_t n = static_cast<int64_t>(new_tokens[b].size()), past = cache->length(slot);
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("extend: slot ", slot, " has no new tokens"));
    if (past + n > cache->capacity(slot) || past + n > c.max_position_embeddings) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "extend: slot ", slot, " would hold ", past + n, " tokens; the slot holds ",
          cache->capacity(slot), " and the model ", c.max_position_embeddings));
    }
    RETURN_IF_ERROR(CheckTokens(new_tokens[b], absl::StrCat("slot ", slot)));
    tokens.insert(tokens.end(), new_tokens[b].begin(), new_tokens[b].end());
    for (int64_t i = 0; i < n; ++i) pos.push_back(static_cast<int32_t>(past + i));
    offsets.push_back(static_cast<int64_t>(tokens.size()));
    max_pos = std::max(max_pos, past + n);
  }
  const int64_t T = static_cast<int64_t>(tokens.size());
  EnsureRope(max_pos);
  std::vector<Real> x(T * H);
  cpu::EmbeddingForward<Real>(x.data(), tokens.data(), params_.data() + layout_.embed, T, H);
  if (routing != nullptr) routing->assign(c.NumMoeLayers() * T * K, 0);
  int64_t moe_idx = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerForward(l, s.scratch, x.data(), T, pos.data(), offsets, cache, slots, nullptr, false);
    if (layout_.layers[l].moe) {
      if (routing != nullptr) {
        std::copy(s.scratch.idx.begin(), s.scratch.idx.end(), routing->begin() + moe_idx * T * K);
      }
      ++moe_idx;
    }
  }
  for (int64_t b = 0; b < B; ++b) cache->Advance(slots[b], offsets[b + 1] - offsets[b]);
  std::vector<Real> last(B * H), last_norm(B * H), rstd(B);
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(x.data() + (offsets[b + 1] - 1) * H, H, last.data() + b * H);
  }
  cpu::RmsNormForward<Real>(last_norm.data(), rstd.data(), last.data(),
                            params_.data() + layout_.norm, B, H, c.rms_norm_eps);
  Linear(logits, last_norm.data(), layout_.lm_head, nullptr, B, H, V);
  return absl::OkStatus();
}

template <typename Real>
absl::Status Model<Real>::FinalHidden(const TokenBatch& batch, std::vector<Real>* out) {
  const ModelConfig& c = config_;
  Acts& s = *acts_;
  s.valid = false;  // FinalHidden reuses the scratch buffers
  cpu::BatchInvariantScope invariant(batch_invariant_);
  const int64_t T = batch.num_tokens(), B = batch.num_seqs(), H = c.hidden_size;
  if (T == 0 || B <= 0) return absl::InvalidArgumentError("final hidden: empty batch");
  if (batch.offsets.front() != 0 || batch.offsets.back() != T) {
    return absl::InvalidArgumentError("final hidden: batch offsets must start at 0 and end at T");
  }
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = batch.offsets[b + 1] - batch.offsets[b];
    if (len <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("final hidden: sequence ", b, " is empty (it has no last token)"));
    }
    max_len = std::max(max_len, len);
    RETURN_IF_ERROR(CheckTokens(absl::MakeConstSpan(batch.tokens).subspan(batch.offsets[b], len),
                                absl::StrCat("sequence ", b)));
  }
  if (max_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "final hidden: a sequence of ", max_len, " tokens exceeds max_position_embeddings (",
        c.max_position_embeddings, ")"));
  }
  EnsureRope(max_len);
  std::vector<int32_t> pos(T);  // (T)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = batch.offsets[b]; p < batch.offsets[b + 1]; ++p) {
      pos[p] = static_cast<int32_t>(p - batch.offsets[b]);
    }
  }
  std::vector<Real> x(T * H);  // (T, H)
  cpu::EmbeddingForward<Real>(x.data(), batch.tokens.data(), params_.data() + layout_.embed, T, H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerForward(l, s.scratch, x.data(), T, pos.data(), batch.offsets, nullptr, {}, nullptr,
                 false);
  }
  std::vector<Real> last(B * H), rstd(B);  // (B, H), (B)
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(x.data() + (batch.offsets[b + 1] - 1) * H, H, last.data() + b * H);
  }
  out->resize(B * H);
  cpu::RmsNormForward<Real>(out->data(), rstd.data(), last.data(), params_.data() + layout_.norm,
                            B, H, c.rms_norm_eps);
  return absl::OkStatus();
}

template class KvCache<float>;
template class KvCache<double>;
template class Model<float>;
template class Model<double>;

}  // namespace grpo
