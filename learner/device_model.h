// Where the learner computes a model's forward and backward: the CPU, or a CUDA GPU.
//
// The learner's weights always live in a host Model<float> (the optimizer's parameters, what
// checkpoints save, what weight updates publish, what in-process rollout workers copy). On the
// CPU, DeviceModel just forwards to it. On CUDA it holds a CudaModel computing with a bf16 copy
// of those weights (fp32 accumulation; no fp32 master on the device, since AdamW runs on the
// host: 2 bytes per parameter plus 4 for the gradients; model/cuda_model.h):
//   - Forward uploads the host weights first when they changed since the last upload (the
//     caller says so with ParamsChanged(): after an optimizer step, a resume, a reference
//     refresh);
//   - Backward accumulates the gradients on the device; FetchGrads() brings the sum since
//     ZeroGrads() into host().grads() for the host optimizer.
// So one optimizer step moves the parameters up once and the gradients down once (8 bytes per
// parameter over PCIe), whatever the number of micro-batches.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/cuda_model.h"
#include "model/model.h"

namespace grpo {

// ResolveDevice (model/cuda_model.h) for a config value: errors start with `what`, e.g.
// "config 'device'".
absl::StatusOr<Device> ResolveConfigDevice(const std::string& value, const std::string& what);

class DeviceModel {
 public:
  // `host` outlives this. kCuda: on GPU `cuda_device` (data-parallel rank r uses r modulo the
  // GPUs present); UNAVAILABLE when this build or machine has no CUDA, and UNIMPLEMENTED for what
  // CudaModel does not support (e.g. a shared expert).
  static absl::StatusOr<std::unique_ptr<DeviceModel>> Create(Model<float>* host, Device device,
                                                             int cuda_device = 0);
  ~DeviceModel();

  Device device() const { return gpu_ != nullptr ? Device::kCuda : Device::kCpu; }
  Model<float>& host() { return *host_; }
  const Model<float>& host() const { return *host_; }

  // host().params() changed: the next Forward uploads them (CUDA; no-op on the CPU).
  void ParamsChanged() { stale_ = true; }
  // The GPU copy of host().params(), uploaded first if stale: the source of a colocated rollout
  // engine's device-to-device weight update (weight_sync.transport "ipc"). It stays valid and
  // unchanged until this model's next upload (after the next optimizer step). FAILED_PRECONDITION
  // on the CPU.
  absl::StatusOr<const CudaModel*> DeviceWeights();

  // Model<float>'s contracts (model.h).
  absl::Status Forward(const TokenBatch& batch, const ForwardOptions& options,
                       ForwardResult<float>* result);
  absl::Status ZeroGrads();
  absl::Status Backward(absl::Span<const float> dlogprobs, absl::Span<const float> dentropy);
  // host().grads() = the gradients accumulated since ZeroGrads() (a download on CUDA; the CPU
  // model accumulates there already).
  absl::Status FetchGrads();
  // CUDA: the device buffer Backward accumulates into (num_params floats), for an all-reduce on
  // the device before FetchGrads. FAILED_PRECONDITION on the CPU.
  absl::StatusOr<float*> DeviceGrads();
  // CUDA: Backward reports gradient blocks with a fence each as their kernels are queued
  // (CudaModel::set_grad_ready_callback), for an all-reduce overlapped with the rest of the
  // backward. The CPU: ignored (the host model has its own, Model::set_grad_ready_callback).
  void set_grad_ready_callback(CudaModel::GradReadyCallback callback);

 private:
  DeviceModel(Model<float>* host, std::unique_ptr<CudaModel> gpu);
  // CUDA: host().params() to the device if they changed since the last upload.
  absl::Status UploadIfStale();

  Model<float>* host_;
  std::unique_ptr<CudaModel> gpu_;  // null on the CPU
  bool stale_ = true;
};

}  // namespace grpo
