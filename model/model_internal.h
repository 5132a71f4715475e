// Private to model/: the activation buffers Model<Real> keeps between Forward and Backward.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace grpo {

// Element-wise forward loops fork the thread pool only above this many elements: at decode sizes
// (a few dozen tokens) the fork and its wake-ups cost more than the loop itself. A region doing
// several ops per element (LayerForward's split and residual + norm) forks from a fraction of it.
constexpr int64_t kMinParallelElems = int64_t{1} << 16;

template <typename Real>
inline void Resize(std::vector<Real>& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
}
template <typename Real>
inline void ZeroResize(std::vector<Real>& v, int64_t n) {
  v.assign(static_cast<size_t>(n), Real(0));
}

// out (n, H) = the rows x + rows[i] * H (a MoE layer's dispatch).
template <typename Real>
inline void GatherRows(std::vector<Real>& out, const Real* x, const int32_t* rows, int64_t n,
                       int64_t H) {
  Resize(out, n * H);
#pragma omp parallel for schedule(static) if (n * H > kMinParallelElems)
  for (int64_t r = 0; r < n; ++r) std::copy_n(x + rows[r] * H, H, out.data() + r * H);
}

// One decoder layer's saved activations (training) or scratch (decode / no-grad forward).
template <typename Real>
struct Model<Real>::LayerActs {
  std::vector<Real> x_in;                  // (T, H) layer input
  std::vector<Real> qkv;                   // (T, nh*hd + 2*nkv*hd) scratch: fused projection
  std::vector<Real> ln1, rstd1;            // (T, H), (T)
  std::vector<Real> q_raw, k_raw;          // (T, nh*hd), (T, nkv*hd) before q/k norm
  std::vector<Real> rstd_q, rstd_k;        // (T*nh), (T*nkv)
  std::vector<Real> q, k, v;               // after norm + RoPE
  std::vector<Real> attn, lse;             // (T, nh*hd), (T, nh)
  std::vector<Real> x_mid;                 // (T, H) after the attention residual
  std::vector<Real> ln2, rstd2;            // (T, H), (T)
  // Dense MLP.
  std::vector<Real> gu, h;                 // (T, 2I), (T, I)
  // MoE. NK = T*K dispatched rows, grouped by expert.
  std::vector<Real> router_logits;         // (T, E) scratch
  std::vector<Real> probs;                 // (T, E)
  std::vector<int32_t> idx;                // (T, K)
  std::vector<Real> w;                     // (T, K)
  std::vector<int64_t> expert_begin;       // (E+1) row ranges of each expert
  std::vector<int32_t> slot_token;         // (NK) token of each dispatched row
  std::vector<int64_t> slot_of;            // (T*K) dispatched row of (t, k)
  std::vector<Real> xe, gu_e, h_e, ye;     // (NK, H), (NK, 2Im), (NK, Im), (NK, H)
  std::vector<Real> sgu, sh, sy, sgate;    // shared expert: (T, 2Is), (T, Is), (T, H), (T)
  std::vector<Real> tmp;                   // (T, H) scratch
};

template <typename Real>
struct Model<Real>::Acts {
  std::vector<LayerActs> layers;  // saved per layer (for_backward)
  LayerActs scratch;              // reused by every layer when nothing is saved
  bool valid = false;             // a for_backward Forward is waiting for its Backward
  float temperature = 1.0f;
  double aux_coef = 0.0;
  int64_t T = 0;
  std::vector<int32_t> tokens, targets, pos;  // (T)
  std::vector<int64_t> offsets;               // (B+1)
  std::vector<Real> x;                        // (T, H) residual stream
  std::vector<Real> x_final;                  // (T, H) residual before the final norm
  std::vector<Real> lnf, rstdf;               // (T, H), (T)
  std::vector<Real> logits, lse;              // (T, V), (T)
  std::vector<Real> aux_dprobs;               // (E) d(aux)/d(probs[t, e]), same for every t
  // Backward scratch.
  std::vector<Real> dx, dln, dattn, dq, dk, dv, dq_raw, dk_raw, dqkv, dffn;
  std::vector<Real> dgu, dh, dye, dw, dxe, drouter, dsy, dprobs_extra;
};

}  // namespace grpo
