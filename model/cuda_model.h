// The decoder model on a CUDA GPU: the same contract as Model<float> (model.h) for a packed batch
// (per-token logprobs and entropies at a temperature, routing record/replay, the Switch
// load-balancing loss, an explicit backward accumulating parameter gradients) and incremental
// decode over a KV cache kept on the device, with sampling on the device.
//
// Numerics: fp32 master weights and gradients; a bf16 copy of the weights feeds every GEMM
// (cuBLAS, fp32 accumulation); activations that feed GEMMs, and K/V, are bf16; norms, softmaxes,
// residual stream and reductions are fp32. So it agrees with the CPU model to bf16 precision,
// not bitwise (tests/gpu/cuda_model_test.cc states the tolerances).
//
// Supported: qwen3_moe / qwen3 / qwen2 / llama families without a shared expert (qwen2_moe's
// shared expert returns Unimplemented). No CUDA types here: the header builds without CUDA, and
// without CUDA every entry point returns Unavailable.
//
// Also here: the --device auto|cpu|cuda choice shared by the CLI commands.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"

namespace grpo {

enum class Device { kCpu, kCuda };

// True when this build has the CUDA backend and a CUDA device is present.
bool CudaAvailable();
// CUDA devices present (0 without CUDA in this build or on this machine).
int CudaDeviceCount();
// "auto" (CUDA when available, else CPU), "cpu" or "cuda" (an error naming the reason when no
// device can be used). Anything else is InvalidArgument naming the accepted values.
absl::StatusOr<Device> ResolveDevice(const std::string& flag);
const char* DeviceName(Device d);

struct CudaAdamW {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};

struct CudaModelOptions {
  // Keep an fp32 master copy of every weight on the device (4 bytes per parameter on top of the
  // bf16 copy's 2): only AdamWStep and GetParams need it. Without it the device holds the bf16
  // weights and, in fp32, just the norm weights and biases (which the kernels read in fp32), so
  // a model for decode, logprobs, or a learner whose optimizer runs on the host takes 2 bytes
  // per parameter. Forward, decode, Backward and the gradients are bitwise the same either way:
  // both feed the same kernels the same bf16 and fp32 values.
  bool master_weights = true;
  // The GPU it lives on (< CudaDeviceCount()). Every call makes it the calling thread's current
  // device first, so models on several GPUs can be driven from one thread or from many.
  int device = 0;
  // Decode steps (Extend with one new token per slot, at most 256 slots) replay a CUDA graph
  // captured once per batch size, instead of launching each op: bitwise the same results, the
  // launch overhead of a step paid once. Off: every step launches its ops one by one.
  bool decode_graphs = true;
};

class CudaModel {
 public:
  // Validates the config; parameters are zero until SetParams.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const ModelConfig& config,
                                                           CudaModelOptions options = {});
  ~CudaModel();

  const ModelConfig& config() const;
  const ParamLayout& layout() const;
  int64_t num_params() const;

  // host (layout().total fp32 values, the CPU model's flat layout) -> device master + bf16 copy
  // (without master weights: the bf16 copy, cast on the device in bounded chunks, and the fp32
  // norms and biases).
  absl::Status SetParams(absl::Span<const float> host);
  // The fp32 master weights; FAILED_PRECONDITION for a model created without them.
  absl::Status GetParams(absl::Span<float> host) const;
  // This model's weights := src's, device to device (the same config; either may lack master
  // weights, but a model with them needs a source with them: FAILED_PRECONDITION). Both on one
  // GPU, or on two with peer access. What a colocated rollout engine takes from the learner's
  // device copy instead of a host upload. Bitwise: the bf16 copy and the fp32 values move as is.
  absl::Status CopyWeightsFrom(const CudaModel& src);
  // The device allocations behind this model's weights, whole (what comm/cuda_ipc.h exports to a
  // rollout server in another process on the same GPU): the bf16 copy, and the fp32 buffer (the
  // master weights, or without them only the norms and biases, packed in layout order).
  struct WeightBuffers {
    const void* bf16 = nullptr;
    size_t bf16_bytes = 0;
    const void* f32 = nullptr;
    size_t f32_bytes = 0;
    bool master = false;
  };
  WeightBuffers weight_buffers() const;
  // INVALID_ARGUMENT unless `src` has the sizes a model of `layout` gives (any build).
  static absl::Status CheckWeightBuffers(const ParamLayout& layout, const WeightBuffers& src);
  // CopyWeightsFrom for a source known by its buffers: another model of the same config (its
  // weight_buffers()), possibly another process's, imported. INVALID_ARGUMENT when a size is not
  // the one this config gives, FAILED_PRECONDITION as above.
  absl::Status CopyWeightsFrom(const WeightBuffers& src);
  // Gradients (same layout); Backward() accumulates into them.
  absl::Status GetGrads(absl::Span<float> host) const;
  absl::Status ZeroGrads();
  // The gradients' device buffer (num_params() fp32, allocated here if need be), for collectives
  // over them (data-parallel ranks' NCCL all-reduce). Valid while this model lives. Returns once
  // the work queued so far (a ZeroGrads) has run, so a collective on any stream may use it;
  // during a Backward, see set_grad_ready_callback.
  absl::StatusOr<float*> GradsOnDevice();

  // Backward() reports each block of the gradients once the kernels that finish it are queued:
  // the blocks and order of Model::set_grad_ready_callback (model/model.h), each with a fence
  // that returns OK once those kernels have run (an error, or DEADLINE_EXCEEDED after its
  // timeout, otherwise). A data-parallel rank hands them to a GradientReducer whose NCCL
  // all-reduces run on a stream of their own (comm::NcclStreamOrder::kIndependent) beside the
  // rest of the backward (learner/data_parallel.h). The callback runs on the calling thread; a
  // fence may be called from any thread, many times, after Backward returned. Empty: off.
  using GradFence = std::function<absl::Status(absl::Duration timeout)>;
  using GradReadyCallback = std::function<void(int64_t first, int64_t count, GradFence ready)>;
  void set_grad_ready_callback(GradReadyCallback callback);

  // As Model<float>::Forward / Backward (same errors, same result layout).
  absl::Status Forward(const TokenBatch& batch, const ForwardOptions& options,
                       ForwardResult<float>* result);
  absl::Status Backward(absl::Span<const float> dlogprobs, absl::Span<const float> dentropy);
  // One fused AdamW step over all parameters with the current gradients (step counts from 1),
  // refreshing the bf16 weights. Moments are allocated (zeroed) on first use.
  // FAILED_PRECONDITION for a model created without master weights.
  absl::Status AdamWStep(const CudaAdamW& opt, int64_t step);

  // KV cache on the device: num_slots sequences of up to max_len tokens (bf16 K/V per layer).
  absl::Status InitCache(int64_t num_slots, int64_t max_len);
  // The pooled form (KvCache<float>::Pooled's): pool_rows token rows per layer shared by
  // num_slots slots, each of which holds nothing until AssignSlot gives it rows
  // [row_offset, row_offset + capacity) of the pool (empty; the caller keeps assignments
  // disjoint, e.g. the rollout engine's row allocator). Extend refuses a slot beyond its capacity.
  absl::Status InitPooledCache(int64_t num_slots, int64_t pool_rows);
  absl::Status AssignSlot(int64_t slot, int64_t row_offset, int64_t capacity);
  // The first n cached tokens of slot src become slot dst's (a group's prompt, prefilled once,
  // forked to its other samples): a device-to-device copy of their K/V rows in every layer.
  absl::Status CopyPrefix(int64_t src, int64_t dst, int64_t n);
  // The same without a copy: slot dst (assigned, empty) reads src's first n rows in place
  // (src has no shared prefix itself; the caller keeps its rows allocated and unchanged until
  // dst is done), and dst's own rows hold its positions from n on, so its capacity grows by n.
  absl::Status SharePrefix(int64_t src, int64_t dst, int64_t n);
  int64_t cache_length(int64_t slot) const;
  void ResetSlot(int64_t slot);
  // As Model<float>::Extend: new tokens for some slots (prefill or decode, mixed), keys/values
  // appended; the temperature-1 logits of each slot's last new token stay on the device for
  // Sample(), and are copied to host `logits` (slots.size(), V) when it is non-null.
  absl::Status Extend(absl::Span<const int64_t> slots,
                      absl::Span<const absl::Span<const int32_t>> new_tokens, float* logits,
                      std::vector<int32_t>* routing = nullptr);
  // Draws one token per slot of the last Extend from its device logits: temperature (0: argmax),
  // top_k (0: off), top_p (1: off), u (one uniform in [0,1) per slot).
  absl::Status Sample(float temperature, int64_t top_k, float top_p, absl::Span<const float> u,
                      std::vector<int32_t>* tokens);
  // The same without truncation (top_k 0, top_p 1), also returning each token's logprob under
  // the distribution it was drawn from: log softmax(logits / temperature), or at temperature 1
  // when temperature is 0 (greedy), as the rollout engine's host sampler reports it.
  absl::Status SampleWithLogprobs(float temperature, absl::Span<const float> u,
                                  std::vector<int32_t>* tokens, std::vector<float>* logprobs);

  // Decode steps run as a graph replay so far (decode_graphs), and graphs captured: for tests
  // and benchmarks. A capture that fails (e.g. a cuBLAS without capture support) turns graphs
  // off for this model, with one line on stderr saying why.
  int64_t decode_graph_replays() const;
  int64_t decode_graph_captures() const;

  // Bytes of weights (bf16) the model reads per decode step if every expert is used; for the
  // bandwidth roofline in benchmarks.
  int64_t WeightBytesBf16() const;
  // Device bytes the weights take: the bf16 copy, plus the fp32 masters, or without them the
  // fp32 norms and biases (not gradients, optimizer moments, activations or KV cache).
  int64_t WeightDeviceBytes() const;

 private:
  struct Impl;
  explicit CudaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo
