// What the rollout engine's loop needs from a model, on either device: a pooled KV cache whose
// slots get rows from the engine's allocator, Extend (prefill and decode steps, mixed), forking a
// prompt's KV to a group's other samples, and swapping in new weights. The engine samples on the
// host from the logits Extend returns (or, on the GPU, untruncated rows where the logits are),
// and stop conditions are one code path whatever the device.
//
//   - CPU (MakeCpuDecodeModel): Model<float> over KvCache<float>::Pooled, batch-invariant
//     kernels on pre-packed weights: logprobs bitwise equal to the learner's deterministic
//     forward, and completions independent of what else is batched.
//   - CUDA (MakeCudaDecodeModel): CudaModel (bf16 weights and K/V, fp32 accumulation); it
//     samples untruncated rows on the device (samples_on_device), the rest on the host. Its
//     cuBLAS GEMMs are not batch-invariant, so logprobs agree with the CPU learner to bf16
//     precision and a seed's completion can depend on the batch in near-ties:
//     batch_invariant() is false and the engine refuses `deterministic` requests.
//   Both: a group's samples read their prompt's K/V rows in place (SharePrefix).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/cuda_model.h"
#include "model/model.h"
#include "rollout/sampling.h"

namespace grpo {

class DecodeModel {
 public:
  virtual ~DecodeModel() = default;

  virtual const char* device() const = 0;
  // Bytes one cached token takes over all layers (K and V).
  virtual int64_t kv_bytes_per_token() const = 0;
  // Completions independent of batch composition, logprobs bitwise the learner's deterministic
  // forward (SamplingParams::deterministic can be honoured).
  virtual bool batch_invariant() const = 0;

  // Allocates the pool: num_slots slots sharing pool_rows token rows. Call once, first.
  virtual absl::Status InitPool(int64_t num_slots, int64_t pool_rows) = 0;
  // Slot `slot` (empty) may fill rows [row_offset, row_offset + capacity) of the pool.
  virtual absl::Status Assign(int64_t slot, int64_t row_offset, int64_t capacity) = 0;
  // Slot dst (assigned, empty) starts with the first n tokens of slot src, copied into dst's rows.
  virtual absl::Status CopyPrefix(int64_t src, int64_t dst, int64_t n) = 0;
  // Whether SharePrefix works: forks then read the prompt's rows in place, and a fork's own rows
  // need hold only its completion.
  virtual bool shares_prefix() const { return false; }
  // Slot dst (assigned, empty) starts with the first n tokens of slot src, read from src's rows
  // (which the caller keeps allocated and unchanged until dst is done); dst's own rows hold
  // positions n onward. UNIMPLEMENTED unless shares_prefix().
  virtual absl::Status SharePrefix(int64_t src, int64_t dst, int64_t n) {
    return absl::UnimplementedError("this model copies prompt prefixes");
  }
  // Model<float>::Extend's contract: logits (slots.size(), V) at temperature 1 for each slot's
  // last new token; routing (num_moe_layers, T, K) when non-null.
  virtual absl::Status Extend(absl::Span<const int64_t> slots,
                              absl::Span<const absl::Span<const int32_t>> feeds, float* logits,
                              std::vector<int32_t>* routing) = 0;
  // New weights (num_params floats, the CPU model's flat layout). No sequence may be running.
  virtual absl::Status SetParams(const float* params) = 0;
  // New weights copied device to device from `src` (a colocated learner's GPU copy, the buffers
  // of CudaModel::weight_buffers(); the same config). No sequence may be running. UNIMPLEMENTED on
  // the CPU.
  virtual absl::Status SetParamsFrom(const CudaModel::WeightBuffers& src) {
    return absl::UnimplementedError("a CPU rollout engine takes its weights from the host");
  }

  // Whether SampleOnDevice works: the next tokens of the last Extend (called with null logits)
  // drawn where the logits are.
  virtual bool samples_on_device() const { return false; }
  // Untruncated sampling (top_k 0, top_p 1) of every slot of the last Extend at `temperature`
  // (0: greedy) with one uniform in [0, 1) per slot; logprobs as SampleFromLogits reports them
  // (rollout/sampling.h). UNIMPLEMENTED unless samples_on_device().
  virtual absl::Status SampleOnDevice(float temperature, absl::Span<const float> u,
                                      std::vector<SampledToken>* out) {
    return absl::UnimplementedError("this model samples on the host");
  }
};

// Takes the loaded model.
std::unique_ptr<DecodeModel> MakeCpuDecodeModel(std::unique_ptr<Model<float>> model);
// Copies the loaded model's config and weights to a new CudaModel; the CPU model is released.
// UNAVAILABLE when this build or machine has no CUDA.
absl::StatusOr<std::unique_ptr<DecodeModel>> MakeCudaDecodeModel(
    std::unique_ptr<Model<float>> model);

}  // namespace grpo
