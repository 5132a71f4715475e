// The decoder model on the CPU: forward over a batch of packed variable-length sequences giving
// per-token logprobs and entropies at a temperature, an explicit backward for every parameter,
// routing record / replay for MoE layers, the Switch load-balancing loss, and incremental decode
// with a KV cache. Templated on the scalar: float for real work, double as the fp64 reference
// that gradient checks run against. Math matches Hugging Face transformers (FORMATS.md A2).
//
// Not here: checkpoint files (model/checkpoint.h), sampling policy, training logic.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/huge_pages.h"
#include "model/config.h"
#include "model/params.h"

namespace grpo {

// Sequences packed end to end: sequence b is tokens[offsets[b] .. offsets[b+1]).
struct TokenBatch {
  std::vector<int32_t> tokens;            // (T)
  std::vector<int64_t> offsets = {0};     // (B+1), offsets[0] == 0, non-decreasing
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(offsets.size()) - 1; }
  void Add(absl::Span<const int32_t> seq);
};

struct ForwardOptions {
  float temperature = 1.0f;
  // Keep what Backward() needs. Off: activations are not kept and Backward() must not be called.
  bool for_backward = false;
  // Return the chosen experts per (MoE layer, token, k) in ForwardResult::routing.
  bool record_routing = false;
  // Replay: if non-empty, forced expert ids, (num_moe_layers, T, K) flattened. The router still
  // computes gate weights (softmax over its logits, gathered at the forced ids) and gets gradients.
  // The load-balancing loss then counts the replayed ids (the load actually routed), where
  // transformers, which has no replay, counts the router's own top-k.
  absl::Span<const int32_t> replay_routing;
  // Switch load-balancing loss coefficient; > 0 computes ForwardResult::aux_loss and adds
  // coef * d(aux_loss) to the router gradients in Backward().
  double aux_loss_coef = 0.0;
};

template <typename Real>
struct ForwardResult {
  // Position p holds log p(tokens[p+1] | tokens[..p]) within p's sequence; a sequence's last
  // position holds 0 (nothing follows it). (T)
  std::vector<Real> logprobs;
  // Entropy of the next-token distribution at p (at the temperature). (T)
  std::vector<Real> entropy;
  std::vector<int32_t> routing;  // (num_moe_layers, T, K) when record_routing
  Real aux_loss = 0;             // unscaled Switch loss (HF load_balancing_loss_func)
};

// Bytes one token's keys and values take over all layers at `element_bytes` per element (4 for
// the CPU's KvCache<float>, 2 for the GPU's bf16 cache).
inline int64_t KvBytesPerToken(const ModelConfig& c, int64_t element_bytes) {
  return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * element_bytes;
}

// Keys and values of many sequences for incremental decode. Per layer one arena of rows, each
// (nkv, hd); slot s owns rows [offset(s), offset(s) + own capacity) of it. The plain constructor
// gives slot s the rows [s * max_len, (s + 1) * max_len); Pooled() makes an arena of pool_rows
// rows where an allocator (rollout/) places slots with Assign().
//
// A slot may start with a shared prefix (SharePrefix: a group's samples read their prompt's rows
// where the prompt was prefilled, without copies): its positions [0, shared_len) are then rows of
// another slot's range, and positions [shared_len, length) its own rows from offset(s). The
// caller keeps the source's rows unchanged and allocated while any slot shares them.
template <typename Real>
class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t num_slots, int64_t max_len);
  // num_slots slots of capacity 0 over an arena of pool_rows rows per layer.
  static KvCache Pooled(const ModelConfig& config, int64_t num_slots, int64_t pool_rows);
  int64_t num_layers() const { return static_cast<int64_t>(k_.size()); }
  int64_t row_width() const { return row_; }
  int64_t num_slots() const { return static_cast<int64_t>(length_.size()); }
  int64_t max_len() const { return max_len_; }  // largest own capacity a slot can have
  // Positions held, the shared prefix included.
  int64_t length(int64_t slot) const { return length_[slot]; }
  // Positions the slot can hold: its shared prefix and its own rows.
  int64_t capacity(int64_t slot) const { return shared_len_[slot] + capacity_[slot]; }
  int64_t shared_len(int64_t slot) const { return shared_len_[slot]; }
  // Empties the slot (and drops its shared prefix).
  void Reset(int64_t slot) {
    length_[slot] = 0;
    shared_len_[slot] = 0;
  }
  // Gives `slot` the arena rows [row_offset, row_offset + capacity), no shared prefix and length
  // 0. The caller keeps slots' own row ranges disjoint.
  void Assign(int64_t slot, int64_t row_offset, int64_t capacity);
  // Copies the first n rows of src (every layer; src has no shared prefix) to dst and sets
  // length(dst) = n: group forking with copies.
  void CopyPrefix(int64_t src, int64_t dst, int64_t n);
  // dst (empty) reads the first n positions of src (which has no shared prefix) where they are:
  // shared_len(dst) = length(dst) = n, and dst's own rows hold its positions from n on.
  void SharePrefix(int64_t src, int64_t dst, int64_t n);
  // The slot's own rows: position shared_len(slot) + i is row i.
  Real* k(int64_t layer, int64_t slot) { return k_[layer].data() + offset_[slot] * row_; }
  Real* v(int64_t layer, int64_t slot) { return v_[layer].data() + offset_[slot] * row_; }
  // The shared prefix's rows (position i is row i), or null without one.
  const Real* shared_k(int64_t layer, int64_t slot) const {
    return shared_len_[slot] > 0 ? k_[layer].data() + shared_offset_[slot] * row_ : nullptr;
  }
  const Real* shared_v(int64_t layer, int64_t slot) const {
    return shared_len_[slot] > 0 ? v_[layer].data() + shared_offset_[slot] * row_ : nullptr;
  }
  void Advance(int64_t slot, int64_t n) { length_[slot] += n; }

 private:
  KvCache() = default;
  int64_t max_len_ = 0;
  int64_t row_ = 0;  // nkv * hd
  std::vector<int64_t> length_, offset_, capacity_;  // (num_slots) each; capacity_: own rows
  std::vector<int64_t> shared_offset_, shared_len_;  // (num_slots) each
  std::vector<HugePageVector<Real>> k_, v_;  // per layer (arena rows, nkv, hd)
};

template <typename Real>
class Model {
 public:
  // Parameters are zero until loaded or initialized. Validates the config.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int64_t num_params() const { return layout_.total; }
  // Mutable access drops the packed weights (PrepackWeights): they would go stale.
  Real* params() {
    DropPacked();
    return params_.data();
  }
  const Real* params() const { return params_.data(); }
  // Gradients, same layout as params(); Backward() accumulates into them. Allocated (zeroed) on
  // first use, so inference-only models never pay for them.
  Real* grads() {
    EnsureGrads();
    return grads_.data();
  }
  void ZeroGrads();

  // Errors: token ids outside [0, vocab), sequences longer than max_position_embeddings, bad
  // replay shape or ids, empty batch.
  absl::Status Forward(const TokenBatch& batch, const ForwardOptions& options,
                       ForwardResult<Real>* result);
  // dlogprobs (T) = d(loss)/d(logprobs), same layout as ForwardResult::logprobs; dentropy (T) or
  // empty. Uses the activations of the last Forward(for_backward = true); accumulates grads().
  absl::Status Backward(absl::Span<const Real> dlogprobs, absl::Span<const Real> dentropy);

  // Called by Backward() each time a block of grads() is complete for this call, in backward
  // order: [norm .. end) (the final norm and an untied lm_head; just the norm when tied), then
  // each decoder layer's block from the last layer to the first, then the embedding (which is
  // also the lm_head when tied). The blocks cover [0, num_params()) exactly once per Backward().
  // Data-parallel training (learner/data_parallel.h) all-reduces a bucket of gradients as soon
  // as it is complete, overlapping communication with the rest of the backward. The callback
  // runs on the calling thread; an empty function (the default) turns it off.
  using GradReadyCallback = std::function<void(int64_t first_offset, int64_t count)>;
  void set_grad_ready_callback(GradReadyCallback callback) {
    grad_ready_ = std::move(callback);
  }

  // Batch-invariant mode (kernels/cpu/gemm.h BatchInvariantScope) for Forward and Extend: every
  // token's logits are computed by arithmetic that does not depend on the other tokens in the
  // call, so a token gets bitwise the same logprob from Forward over a whole sequence as from
  // Extend one token at a time (the rollout engine's deterministic mode). Slower for long
  // sequences (no oneDNN GEMM, per-token attention). Off by default.
  void set_batch_invariant(bool on) { batch_invariant_ = on; }
  bool batch_invariant() const { return batch_invariant_; }

  // Packs every linear weight once into the batch-invariant kernel's panel layout
  // (kernels/cpu/gemm.h PackWeight), so Forward / Extend / FinalHidden in batch-invariant mode
  // stop re-packing the weights on every call: what the rollout engine's decode runs on. Results
  // are bitwise unchanged. Costs one more copy of the linear weights. Mutable params() drops the
  // packed copy; call again after changing the weights. A no-op for double and in builds without
  // AVX-512 (returns false there).
  // Weights whose every element is exactly a bf16 value are packed at 2 bytes per element,
  // losslessly (gemm.h IsBf16Exact), the others at 4.
  bool PrepackWeights();
  bool prepacked() const { return !packed_at_.empty(); }
  // How many weights are packed (a grouped weight counts once), and how many of them took the
  // 2-byte form.
  int64_t prepacked_weights() const { return static_cast<int64_t>(packed_at_.size()); }
  int64_t prepacked_bf16_weights() const { return packed_bf16_; }

  // Runs new tokens for some cache slots through the model (prefill or decode, mixed freely),
  // appending their keys/values, and writes the raw (temperature 1) logits of each slot's last
  // new token to logits (slots.size(), V). Routing of the new tokens, (num_moe_layers, T_new, K),
  // goes to *routing when non-null.
  absl::Status Extend(KvCache<Real>* cache, absl::Span<const int64_t> slots,
                      absl::Span<const absl::Span<const int32_t>> new_tokens, Real* logits,
                      std::vector<int32_t>* routing = nullptr);

  // The final-norm hidden state at each sequence's last token, (B, H) into *out: what a
  // sequence-classification head (HF `score.weight`) reads. Same checks as Forward, plus every
  // sequence must be non-empty; no logits, nothing kept for Backward. Honors set_batch_invariant.
  absl::Status FinalHidden(const TokenBatch& batch, std::vector<Real>* out);

 private:
  struct Acts;
  struct LayerActs;
  explicit Model(const ModelConfig& config);
  // `what` names the sequence in errors ("sequence 3", "slot 1").
  absl::Status CheckTokens(absl::Span<const int32_t> tokens, const std::string& what) const;
  void EnsureGrads() {
    if (grads_.empty()) grads_.assign(layout_.total, Real(0));
  }
  // One decoder layer over the packed hidden state x (T, H), updated in place.
  void LayerForward(int64_t l, LayerActs& a, Real* x, int64_t T, const int32_t* pos,
                    const std::vector<int64_t>& seq_offsets, KvCache<Real>* cache,
                    absl::Span<const int64_t> slots, const int32_t* forced, bool save);
  void LayerBackward(int64_t l, LayerActs& a, Real* dx, int64_t T,
                     const std::vector<int64_t>& seq_offsets);
  // residual (T, H) += the feed-forward of in (T, H); out (T, H) is scratch. routed: RouteForward
  // has already run on all T tokens (LayerForward's fused norm region).
  void FfnForward(int64_t l, LayerActs& a, const Real* in, Real* out, Real* residual, int64_t T,
                  const int32_t* forced, bool routed);
  // MoE routing buffers for T tokens, then the router (logits, softmax top-k, or the forced
  // replay ids) on tokens t0 .. t0+n-1 of in (T, H); safe to call from parallel threads on
  // disjoint runs.
  void SizeRouter(LayerActs& a, int64_t T) const;
  void RouteForward(int64_t l, LayerActs& a, const Real* in, int64_t t0, int64_t n,
                    const int32_t* forced) const;
  void FfnBackward(int64_t l, LayerActs& a, const Real* dout, Real* din, int64_t T);
  void EnsureRope(int64_t max_pos);
  void DropPacked() {
    HugePageVector<float>().swap(packed_);
    HugePageVector<uint16_t>().swap(packed16_);
    packed_at_.clear();
    packed_bf16_ = 0;
  }
  // y (T, out) = x (T, in) @ W^T (+ b) for the weight at params_ offset w: the packed copy when
  // there is one and batch-invariant mode is on, else LinearForward.
  void Linear(Real* y, const Real* x, int64_t w, const Real* b, int64_t T, int64_t in,
              int64_t out) const;
  // GroupedLinearForward over the (groups, out, in) weights at offset w. With x_rows, grouped row r
  // is x + x_rows[r] * in: the packed kernel gathers while it packs; otherwise the rows are first
  // copied into *gathered.
  void GroupedLinear(Real* y, const Real* x, int64_t w, const int64_t* row_begin,
                     int64_t num_groups, int64_t in, int64_t out,
                     const int32_t* x_rows = nullptr, std::vector<Real>* gathered = nullptr) const;

  ModelConfig config_;
  ParamLayout layout_;
  HugePageVector<Real> params_;
  std::vector<Real> grads_;
  std::vector<Real> rope_cos_, rope_sin_;  // (rope_len_, hd/2)
  int64_t rope_len_ = 0;
  bool batch_invariant_ = false;
  GradReadyCallback grad_ready_;
  std::unique_ptr<Acts> acts_;
  // PrepackWeights: the packed weights (fp32 and bf16), and for each packed params_ offset where
  // its packing starts and in which of the two (a grouped weight's groups follow each other at
  // PackedWeightFloats(out, in) elements apart).
  HugePageVector<float> packed_;
  HugePageVector<uint16_t> packed16_;
  std::unordered_map<int64_t, std::pair<int64_t, bool>> packed_at_;
  int64_t packed_bf16_ = 0;
};

extern template class Model<float>;
extern template class Model<double>;
extern template class KvCache<float>;
extern template class KvCache<double>;

}  // namespace grpo
