// Private to model/cuda_model*.cc: the device state of a CudaModel. Needs the CUDA backend.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "model/cuda_model.h"

namespace grpo {

using cuda::bf16_bits;
using cuda::DeviceBuffer;

// Runs one op; with GRPO_CUDA_TIMING=1, synchronizes around it and books its time under `name`
// (cuda::OpTimingReport). Off, it is a plain call.
inline absl::Status TimedOp(const char* name, const std::function<absl::Status()>& fn) {
  if (!cuda::OpTimingEnabled()) return fn();
  RETURN_IF_ERROR(cuda::Synchronize());
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(fn());
  RETURN_IF_ERROR(cuda::Synchronize());
  cuda::AddOpTime(name,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return absl::OkStatus();
}
#define TIMED(name, expr) \
  RETURN_IF_ERROR(::grpo::TimedOp(name, [&]() -> absl::Status { return (expr); }))

// GRPO_CUDA_EXPERT_LAYOUT=packed forces the packed expert layout (tests cover both); its
// grouped GEMM uploads pointer arrays, so decode steps then run without graphs.
inline bool ForcePackedExperts() {
  const char* e = std::getenv("GRPO_CUDA_EXPERT_LAYOUT");
  return e != nullptr && std::string(e) == "packed";
}

// Bump allocator over one device buffer, re-planned when the token count grows: Plan() runs
// once with the old buffer to measure, and once more after growing it.
class DeviceArena {
 public:
  void Begin() { used_ = 0; }
  template <typename T>
  T* Take(int64_t n) {
    const size_t off = used_;
    used_ += (sizeof(T) * static_cast<size_t>(n) + 255) / 256 * 256;
    return used_ <= buf_.size() ? reinterpret_cast<T*>(static_cast<char*>(buf_.data()) + off)
                                : nullptr;
  }
  bool Fits() const { return used_ <= buf_.size(); }
  absl::Status Grow() { return buf_.Reserve(used_ + used_ / 4); }
  const void* data() const { return buf_.data(); }

 private:
  DeviceBuffer buf_;
  size_t used_ = 0;
};

// The layout of a step's host inputs for T tokens, one block on the host and on the device:
// tokens, targets, pos (T int32 each), kv_row (T int64), the attention table (T AttnSeq, at
// most one per token). Pointers into a null block are null (a plan pass that did not fit).
struct StepInputs {
  explicit StepInputs(int64_t T)
      : T(T),
        kv_row_at((12 * static_cast<size_t>(T) + 7) / 8 * 8),
        seqs_at(kv_row_at + 8 * static_cast<size_t>(T)),
        bytes(seqs_at + sizeof(cuda::AttnSeq) * static_cast<size_t>(T)) {}
  int64_t T;
  size_t kv_row_at, seqs_at, bytes;
  int32_t* Tokens(char* b) const { return b ? reinterpret_cast<int32_t*>(b) : nullptr; }
  int32_t* Targets(char* b) const { return b ? Tokens(b) + T : nullptr; }
  int32_t* Pos(char* b) const { return b ? Tokens(b) + 2 * T : nullptr; }
  int64_t* KvRow(char* b) const { return b ? reinterpret_cast<int64_t*>(b + kv_row_at) : nullptr; }
  cuda::AttnSeq* Seqs(char* b) const {
    return b ? reinterpret_cast<cuda::AttnSeq*>(b + seqs_at) : nullptr;
  }
};

// One layer's activations (saved for backward, or scratch for inference). NK = T*K.
struct CudaLayerActs {
  float* x_in;      // (T, H)
  bf16_bits* ln1;   // (T, H)
  float* rstd1;     // (T)
  float* qkv;       // (T, nh*hd + 2*nkv*hd) projection output (before bias)
  float* rstd_q;    // (T, nh)
  float* rstd_k;    // (T, nkv)
  float* q;         // (T, nh, hd) after norm + RoPE
  bf16_bits* k;     // (T, nkv, hd)
  bf16_bits* v;     // (T, nkv, hd)
  bf16_bits* attn;  // (T, nh, hd)
  float* lse;       // (T, nh)
  float* x_mid;     // (T, H)
  bf16_bits* ln2;   // (T, H)
  float* rstd2;     // (T)
  // Dense MLP.
  float* gu;     // (T, 2I)
  bf16_bits* h;  // (T, I)
  // MoE.
  float* router_logits;              // (T, E)
  float* probs;                      // (T, E)
  int32_t* idx;                      // (T, K)
  float* w;                          // (T, K)
  int64_t* expert_begin;             // (E+1) device copy of host_begin
  int32_t* slot_token;               // (rows capacity) -1 on padding rows
  int32_t* slot_of;                  // (NK)
  bf16_bits* xe;                     // (NK, H)
  float* gu_e;                       // (NK, 2Im)
  bf16_bits* h_e;                    // (NK, Im)
  float* ye;                         // (NK, H)
  std::vector<int64_t> host_begin;   // (E+1)
  std::vector<int32_t> host_counts;  // (E) pairs routed to each expert
  bool device_loads = false;         // expert_begin was computed on the device; host_begin is unset
  // Expert rows: padded (every expert owns cap rows, zeros past its count, one batched GEMM per
  // projection) when E*cap fits the arena, else packed (host_begin = prefix sums, a GEMM per
  // expert). rows = E*cap or NK.
  bool padded = false;
  int64_t cap = 0, rows = 0;
};

// Rows the expert buffers are sized for: the padded layout needs E * cap rows with cap the
// largest expert load rounded up to 64; every expert can hold at most T = NK/K pairs, so room for
// min(E*T, 4*NK) rows (and at least 64 per expert) makes the padded (fast) path the usual one.
inline int64_t ExpertRowsCapacity(int64_t NK, int64_t E, int64_t K) {
  return std::max(std::min(E * (NK / K), 4 * NK), 64 * E);
}

struct CudaModel::Impl {
  int device = 0;  // every public entry makes it current first (Activate)
  ModelConfig config;
  ParamLayout layout;
  // fp32: the master weights (total), or without them (CudaModelOptions::master_weights) only
  // the norm weights and biases, packed in layout order as f32_index says.
  DeviceBuffer params;
  DeviceBuffer params16;  // bf16 copy (total)
  bool master = true;
  struct F32Block {
    int64_t flat, packed, numel;  // a norm or bias tensor: its flat offset, where it is in params
  };
  std::vector<F32Block> f32_index;  // by flat offset; empty with master weights
  DeviceBuffer staging;             // SetParams without master weights: fp32 chunks to cast
  DeviceBuffer grads;               // fp32 (total), allocated on first use
  DeviceBuffer adam_m, adam_v;
  DeviceBuffer rope_cos, rope_sin;  // (rope_len, hd/2)
  int64_t rope_len = 0;

  // Forward/backward state.
  DeviceArena saved_arena;    // per-layer activations when for_backward
  DeviceArena scratch_arena;  // one layer's scratch + head / backward buffers
  std::vector<CudaLayerActs> layers;
  CudaLayerActs scratch;
  bool valid = false;
  int64_t T = 0;
  float temperature = 1.f;
  std::vector<int64_t> offsets;
  // Head and per-batch device arrays (in scratch_arena). The host inputs of a step are one
  // block (StepInputs), so Extend uploads them with one copy.
  char* inputs = nullptr;             // the block: tokens, targets, pos, kv_row, seqs
  int32_t* tokens = nullptr;          // (T)
  int32_t* targets = nullptr;         // (T)
  int32_t* pos = nullptr;             // (T)
  int64_t* kv_row = nullptr;          // (T) decode only
  cuda::AttnSeq* seqs_dev = nullptr;  // (T) decode only: the attention table, one per slot
  int32_t* forced = nullptr;          // (num_moe, T, K) replay
  int32_t* counts = nullptr;          // (E)
  float* x = nullptr;                 // (T, H) residual stream
  float* x_final = nullptr;           // (T, H)
  bf16_bits* lnf = nullptr;           // (T, H)
  float* rstdf = nullptr;             // (T)
  float* lp = nullptr;                // (T)
  float* ent = nullptr;               // (T)
  float* lse = nullptr;               // (T)
  float* logits = nullptr;            // (chunk, V)
  bf16_bits* dlogits = nullptr;       // (chunk, V)
  float* prob_sum = nullptr;          // (E)
  float* aux_dprobs = nullptr;        // (E)
  bool use_aux = false;
  int64_t chunk = 0;
  // Backward scratch.
  float *dx = nullptr, *dln = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr,
        *delta = nullptr, *dqkv = nullptr, *dattn_f = nullptr, *dw = nullptr, *dh = nullptr,
        *dxe = nullptr, *drouter = nullptr, *dlp = nullptr, *dent = nullptr;
  bf16_bits *dx16 = nullptr, *dattn16 = nullptr, *dqkv16 = nullptr, *dye16 = nullptr,
            *dgu16 = nullptr, *drouter16 = nullptr;

  // Decode.
  int64_t cache_slots = 0, cache_rows = 0;
  // Per slot: tokens cached, first pool row, rows it may fill.
  std::vector<int64_t> cache_len, cache_offset, cache_capacity;  // capacity: own rows
  std::vector<int64_t> cache_shared_offset, cache_shared_len;    // SharePrefix's prompt rows
  std::vector<DeviceBuffer> cache_k, cache_v;  // per layer (cache_rows, nkv, hd) bf16
  DeviceArena decode_arena;
  float* dec_logits = nullptr;            // (B, V)
  int64_t dec_B = 0;                      // rows dec_logits has room for
  int64_t last_B = 0;                     // slots of the last Extend
  DeviceBuffer sample_buf;                // u (B) floats then tokens (B) int32
  std::vector<char> host_inputs;          // the step's input block, packed on the host
  int64_t step_seqs = 0, step_max_q = 0;  // Extend's attention table: entries, longest q_len
  // Expert choices of a decode step, when asked for: MoE layer m copies its (T, K) indices to
  // rows [m*T, (m+1)*T) on the device (LayerForward's routing_dev); one copy to the host at the
  // end.
  DeviceBuffer routing_buf;
  // Decode graphs (CudaModelOptions::decode_graphs), by batch size and whether routing is
  // recorded. A graph holds the device pointers its capture used; `key` lists them, and a
  // graph whose key no longer matches (an arena grew, the cache was rebuilt) is captured anew.
  struct DecodeGraph {
    std::vector<const void*> key;
    std::unique_ptr<cuda::DeviceGraph> graph;
  };
  bool decode_graphs = true;
  std::map<std::pair<int64_t, bool>, DecodeGraph> graphs;
  int64_t graph_replays = 0, graph_captures = 0;
  std::vector<const void*> DecodeGraphKey() const;

  // The fp32 values of the parameter at flat offset `off` (norm weights and biases: the only
  // parameters the kernels read in fp32). Several tensors adjacent in the flat layout (the q/k/v
  // biases) are adjacent here too, since the packed buffer keeps layout order.
  const float* F32(int64_t off) const {
    if (master) return params.as<float>() + off;
    auto it = std::upper_bound(f32_index.begin(), f32_index.end(), off,
                               [](int64_t o, const F32Block& b) { return o < b.flat; });
    GRPO_CHECK_MSG(it != f32_index.begin() && off < (it - 1)->flat + (it - 1)->numel,
                   "cuda model: an fp32 read of a parameter that is not a norm weight or bias");
    --it;
    return params.as<float>() + it->packed + (off - it->flat);
  }
  const bf16_bits* P16() const { return params16.as<bf16_bits>(); }
  float* G() const { return grads.as<float>(); }
  absl::Status Activate() const { return cuda::SetDevice(device); }
  absl::Status EnsureGrads();
  // Backward's grad-ready report of [first, first + count) (CudaModel::set_grad_ready_callback):
  // a StreamMark after the kernels queued so far, handed to grad_ready. No-op without a callback.
  absl::Status ReportGrads(int64_t first, int64_t count);
  CudaModel::GradReadyCallback grad_ready;
  absl::Status EnsureRope(int64_t max_pos);
  // Assigns layer buffer pointers for T tokens from `arena`.
  void PlanLayer(DeviceArena& arena, CudaLayerActs& a, int64_t T, bool training);
  void PlanHead(DeviceArena& arena, int64_t T, bool training);
  absl::Status Prepare(int64_t T, bool save);
  // One decoder layer over x (T, H) in place. kv: null for training (K/V into a.k/a.v).
  // routing_out (host) gets this layer's (T, K) expert choices appended; routing_dev (device,
  // Extend) gets them copied there instead. Either may be null.
  absl::Status LayerForward(int64_t l, CudaLayerActs& a, int64_t T,
                            const std::vector<cuda::AttnSeq>& seqs, bool decode,
                            const int32_t* forced_l, std::vector<int32_t>* routing_out,
                            int32_t* routing_dev,
                            double* count_acc);  // count_acc (E) += expert loads; aux stats
  // need_counts: a.host_counts must hold the expert loads (the aux-loss statistics). Without it
  // and with T <= kSyncFreeTokens, the expert layout is known without reading the loads back
  // (padded, kSyncFreeTokens rows per expert), so the layer enqueues with no host sync.
  // decode (Extend: nothing is saved for a backward): batches of kSyncFreeTokens < T <=
  // kDeviceLoadTokens keep the expert loads on the device too (packed rows, the tensor-core
  // GroupedLinearForwardDevice); a backward would need them on the host.
  absl::Status FfnForward(int64_t l, CudaLayerActs& a, int64_t T, const int32_t* forced_l,
                          bool need_counts, bool decode);
  static constexpr int64_t kSyncFreeTokens = 64;
  static constexpr int64_t kDeviceLoadTokens = 256;
  // An Extend of T <= kDeviceLoadTokens tokens enqueues with no host sync, so a decode step
  // of up to that many slots may be a graph (unless GRPO_CUDA_EXPERT_LAYOUT=packed).
  bool DecodeSyncFree(int64_t T) const;
  DeviceBuffer padded_begin;  // (E+1) int64: e * kSyncFreeTokens, the sync-free expert_begin
  absl::Status LayerBackward(int64_t l, CudaLayerActs& a, int64_t T,
                             const std::vector<cuda::AttnSeq>& seqs);
  absl::Status FfnBackward(int64_t l, CudaLayerActs& a, int64_t T);
  // Sample and SampleWithLogprobs: tokens (and, when `logprobs` is set, which only untruncated
  // sampling may ask, each token's logprob at the temperature, or at 1 for greedy) for the
  // last Extend's slots.
  absl::Status SampleLastExtend(float temperature, int64_t top_k, float top_p,
                                absl::Span<const float> u, std::vector<int32_t>* tokens,
                                std::vector<float>* logprobs);
};

}  // namespace grpo
