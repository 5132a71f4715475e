// The feed-forward half of a decoder layer: dense SwiGLU MLP, or the MoE block (softmax top-k
// router, experts run once each over the tokens routed to them: gather -> GEMM -> scatter, and the
// Qwen2-MoE sigmoid-gated shared expert). Forward and backward.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common/status.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "model/model_internal.h"

namespace grpo {

using cpu::LinearBackward;
using cpu::LinearForward;

namespace {

// y (T, H) = down(silu(gate(x)) * up(x)); gu (T, 2I) and h (T, I) kept for backward.
// linear(y, x, weight offset, T, in, out) is the model's Linear (packed weights when present).
template <typename Real, typename LinearFn>
void MlpForward(Real* y, std::vector<Real>& gu, std::vector<Real>& h, const Real* x,
                int64_t W_gu, int64_t W_down, int64_t T, int64_t H, int64_t I,
                const LinearFn& linear) {
  Resize(gu, T * 2 * I);
  Resize(h, T * I);
  linear(gu.data(), x, W_gu, T, H, 2 * I);
  cpu::SwiGluForward<Real>(h.data(), gu.data(), T, I);
  linear(y, h.data(), W_down, T, I, H);
}

// dx (T, H) += backward of MlpForward; dW_gu, dW_down += weight gradients.
template <typename Real>
void MlpBackward(Real* dx, Real* dW_gu, Real* dW_down, const Real* dy, const Real* x,
                 const std::vector<Real>& gu, const std::vector<Real>& h, const Real* W_gu,
                 const Real* W_down, int64_t T, int64_t H, int64_t I, std::vector<Real>& dh,
                 std::vector<Real>& dgu) {
  ZeroResize(dh, T * I);
  LinearBackward<Real>(dh.data(), dW_down, nullptr, dy, h.data(), W_down, T, I, H);
  ZeroResize(dgu, T * 2 * I);
  cpu::SwiGluBackward<Real>(dgu.data(), dh.data(), gu.data(), T, I);
  LinearBackward<Real>(dx, dW_gu, nullptr, dgu.data(), x, W_gu, T, H, 2 * I);
}

}  // namespace

template <typename Real>
void Model<Real>::SizeRouter(LayerActs& a, int64_t T) const {
  const int64_t E = config_.num_experts, K = config_.num_experts_per_tok;
  Resize(a.router_logits, T * E);
  Resize(a.probs, T * E);
  a.idx.resize(T * K);
  Resize(a.w, T * K);
}

template <typename Real>
void Model<Real>::RouteForward(int64_t l, LayerActs& a, const Real* in, int64_t t0, int64_t n,
                               const int32_t* forced) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, E = c.num_experts, K = c.num_experts_per_tok;
  Linear(a.router_logits.data() + t0 * E, in + t0 * H, layout_.layers[l].router, nullptr, n, H, E);
  cpu::RouterForward<Real>(a.probs.data() + t0 * E, a.idx.data() + t0 * K, a.w.data() + t0 * K,
                           a.router_logits.data() + t0 * E,
                           forced != nullptr ? forced + t0 * K : nullptr, n, E, K,
                           c.norm_topk_prob);
}

template <typename Real>
void Model<Real>::FfnForward(int64_t l, LayerActs& a, const Real* in, Real* out, Real* residual,
                             int64_t T, const int32_t* forced, bool routed) {
  const ModelConfig& c = config_;
  const LayerOffsets& o = layout_.layers[l];
  const Real* P = params_.data();
  const int64_t H = c.hidden_size;
  auto linear = [this](Real* y, const Real* x, int64_t w, int64_t rows, int64_t in,
                       int64_t out) { Linear(y, x, w, nullptr, rows, in, out); };
  const auto add_to_residual = [&] {
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElems / 4)
    for (int64_t i = 0; i < T * H; ++i) residual[i] += out[i];
  };
  if (!o.moe) {
    MlpForward<Real>(out, a.gu, a.h, in, o.mlp_gate_up, o.mlp_down, T, H, c.intermediate_size,
                     linear);
    add_to_residual();
    return;
  }
  const int64_t E = c.num_experts, K = c.num_experts_per_tok, Im = c.moe_intermediate_size;
  const int64_t NK = T * K;
  if (!routed) {
    SizeRouter(a, T);
    RouteForward(l, a, in, 0, T, forced);
  }

  // Dispatch: rows grouped by expert, tokens ascending within an expert (deterministic).
  a.expert_begin.assign(E + 1, 0);
  for (int64_t i = 0; i < NK; ++i) a.expert_begin[a.idx[i] + 1]++;
  for (int64_t e = 0; e < E; ++e) a.expert_begin[e + 1] += a.expert_begin[e];
  std::vector<int64_t> fill(a.expert_begin.begin(), a.expert_begin.end() - 1);
  a.slot_token.resize(NK);
  a.slot_of.resize(NK);
  for (int64_t i = 0; i < NK; ++i) {
    const int64_t slot = fill[a.idx[i]]++;
    a.slot_token[slot] = static_cast<int32_t>(i / K);
    a.slot_of[i] = slot;
  }

  Resize(a.gu_e, NK * 2 * Im);
  Resize(a.h_e, NK * Im);
  Resize(a.ye, NK * H);
  GroupedLinear(a.gu_e.data(), in, o.experts_gate_up, a.expert_begin.data(), E, H,
                2 * Im, a.slot_token.data(), &a.xe);
  cpu::SwiGluForward<Real>(a.h_e.data(), a.gu_e.data(), NK, Im);
  GroupedLinear(a.ye.data(), a.h_e.data(), o.experts_down, a.expert_begin.data(), E, Im, H);
  // Combine: out[t] = sum_k w[t,k] * ye[slot(t,k)]; without a shared expert to add first, the
  // residual add of each row too, while the row is in L1 (one region, not two).
  const bool shared = c.HasSharedExpert();
#pragma omp parallel for schedule(static) if (T * K * H > kMinParallelElems)
  for (int64_t t = 0; t < T; ++t) {
    Real* row = out + t * H;
    std::fill(row, row + H, Real(0));
    for (int64_t k = 0; k < K; ++k) {
      const Real wk = a.w[t * K + k];
      const Real* ye = a.ye.data() + a.slot_of[t * K + k] * H;
      for (int64_t j = 0; j < H; ++j) row[j] += wk * ye[j];
    }
    if (!shared) {
      Real* x = residual + t * H;
      for (int64_t j = 0; j < H; ++j) x[j] += row[j];
    }
  }
  if (shared) {
    const int64_t Is = c.shared_expert_intermediate_size;
    Resize(a.sy, T * H);
    Resize(a.sgate, T);
    MlpForward<Real>(a.sy.data(), a.sgu, a.sh, in, o.shared_gate_up, o.shared_down, T, H, Is,
                     linear);
    LinearForward<Real>(a.sgate.data(), in, P + o.shared_gate, nullptr, T, H, 1);
#pragma omp parallel for schedule(static) if (T * H > kMinParallelElems)
    for (int64_t t = 0; t < T; ++t) {
      const Real g = Real(1) / (Real(1) + std::exp(-a.sgate[t]));
      a.sgate[t] = g;
      for (int64_t j = 0; j < H; ++j) out[t * H + j] += g * a.sy[t * H + j];
    }
    add_to_residual();
  }
}

template <typename Real>
void Model<Real>::FfnBackward(int64_t l, LayerActs& a, const Real* dout, Real* din, int64_t T) {
  const ModelConfig& c = config_;
  const LayerOffsets& o = layout_.layers[l];
  const Real* P = params_.data();
  Real* G = grads_.data();
  Acts& s = *acts_;
  const int64_t H = c.hidden_size;
  const Real* in = a.ln2.data();
  if (!o.moe) {
    MlpBackward<Real>(din, G + o.mlp_gate_up, G + o.mlp_down, dout, in, a.gu, a.h,
                      P + o.mlp_gate_up, P + o.mlp_down, T, H, c.intermediate_size, s.dh, s.dgu);
    return;
  }
  const int64_t E = c.num_experts, K = c.num_experts_per_tok, Im = c.moe_intermediate_size;
  const int64_t NK = T * K;
  // Through the combine: dye[slot(t,k)] = w[t,k] * dout[t]; dw[t,k] = <dout[t], ye[slot(t,k)]>.
  Resize(s.dye, NK * H);
  Resize(s.dw, NK);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const Real* dy = dout + t * H;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t slot = a.slot_of[t * K + k];
      Real* d = s.dye.data() + slot * H;
      const Real* ye = a.ye.data() + slot * H;
      const Real wk = a.w[t * K + k];
      Real dot = 0;
      for (int64_t j = 0; j < H; ++j) {
        d[j] = wk * dy[j];
        dot += dy[j] * ye[j];
      }
      s.dw[t * K + k] = dot;
    }
  }
  ZeroResize(s.dh, NK * Im);
  const Real* W_gu = P + o.experts_gate_up;
  const Real* W_down = P + o.experts_down;
  Real* dW_gu = G + o.experts_gate_up;
  Real* dW_down = G + o.experts_down;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.expert_begin[e], n = a.expert_begin[e + 1] - r0;
    if (n == 0) continue;
    LinearBackward<Real>(s.dh.data() + r0 * Im, dW_down + e * H * Im, nullptr,
                         s.dye.data() + r0 * H, a.h_e.data() + r0 * Im, W_down + e * H * Im, n,
                         Im, H);
  }
  ZeroResize(s.dgu, NK * 2 * Im);
  cpu::SwiGluBackward<Real>(s.dgu.data(), s.dh.data(), a.gu_e.data(), NK, Im);
  ZeroResize(s.dxe, NK * H);
  // The experts' input rows (the forward gathered them inside its GEMM, or into a.xe).
  GatherRows(a.xe, in, a.slot_token.data(), NK, H);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.expert_begin[e], n = a.expert_begin[e + 1] - r0;
    if (n == 0) continue;
    LinearBackward<Real>(s.dxe.data() + r0 * H, dW_gu + e * 2 * Im * H, nullptr,
                         s.dgu.data() + r0 * 2 * Im, a.xe.data() + r0 * H, W_gu + e * 2 * Im * H,
                         n, H, 2 * Im);
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    Real* d = din + t * H;
    for (int64_t k = 0; k < K; ++k) {
      const Real* src = s.dxe.data() + a.slot_of[t * K + k] * H;
      for (int64_t j = 0; j < H; ++j) d[j] += src[j];
    }
  }
  // Router: gate weights w depend on the router logits (also under replay).
  const Real* dprobs_extra = nullptr;
  if (s.aux_coef > 0) {
    Resize(s.dprobs_extra, T * E);
    for (int64_t t = 0; t < T; ++t) std::copy_n(s.aux_dprobs.data(), E, s.dprobs_extra.data() + t * E);
    dprobs_extra = s.dprobs_extra.data();
  }
  ZeroResize(s.drouter, T * E);
  cpu::RouterBackward<Real>(s.drouter.data(), s.dw.data(), dprobs_extra, a.probs.data(),
                            a.idx.data(), a.w.data(), T, E, K, c.norm_topk_prob);
  LinearBackward<Real>(din, G + o.router, nullptr, s.drouter.data(), in, P + o.router, T, H, E);

  if (c.HasSharedExpert()) {
    // out += g * sy with g = sigmoid(<in, w_gate>).
    const int64_t Is = c.shared_expert_intermediate_size;
    Resize(s.dsy, T * H);
    std::vector<Real> dg(T);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const Real g = a.sgate[t];
      Real dot = 0;
      for (int64_t j = 0; j < H; ++j) {
        s.dsy[t * H + j] = g * dout[t * H + j];
        dot += dout[t * H + j] * a.sy[t * H + j];
      }
      dg[t] = dot * g * (Real(1) - g);
    }
    LinearBackward<Real>(din, G + o.shared_gate, nullptr, dg.data(), in, P + o.shared_gate, T, H,
                         1);
    MlpBackward<Real>(din, G + o.shared_gate_up, G + o.shared_down, s.dsy.data(), in, a.sgu, a.sh,
                      P + o.shared_gate_up, P + o.shared_down, T, H, Is, s.dh, s.dgu);
  }
}

template void Model<float>::FfnForward(int64_t, LayerActs&, const float*, float*, float*,
                                       int64_t, const int32_t*, bool);
template void Model<double>::FfnForward(int64_t, LayerActs&, const double*, double*, double*,
                                        int64_t, const int32_t*, bool);
template void Model<float>::SizeRouter(LayerActs&, int64_t) const;
template void Model<double>::SizeRouter(LayerActs&, int64_t) const;
template void Model<float>::RouteForward(int64_t, LayerActs&, const float*, int64_t, int64_t,
                                         const int32_t*) const;
template void Model<double>::RouteForward(int64_t, LayerActs&, const double*, int64_t, int64_t,
                                          const int32_t*) const;
template void Model<float>::FfnBackward(int64_t, LayerActs&, const float*, float*, int64_t);
template void Model<double>::FfnBackward(int64_t, LayerActs&, const double*, double*, int64_t);

}  // namespace grpo
