#include "learner/device_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo {

absl::StatusOr<Device> ResolveConfigDevice(const std::string& value, const std::string& what) {
  absl::StatusOr<Device> d = ResolveDevice(value);
  if (d.ok()) return d;
  return absl::Status(d.status().code(), absl::StrCat(what, ": ", d.status().message()));
}

DeviceModel::DeviceModel(Model<float>* host, std::unique_ptr<CudaModel> gpu)
    : host_(host), gpu_(std::move(gpu)) {}

DeviceModel::~DeviceModel() = default;

absl::StatusOr<std::unique_ptr<DeviceModel>> DeviceModel::Create(Model<float>* host, Device device,
                                                                 int cuda_device) {
  std::unique_ptr<CudaModel> gpu;
  if (device == Device::kCuda) {
    // AdamW and the fp32 weights stay on the host: the device needs the bf16 copy only.
    ASSIGN_OR_RETURN(
        gpu, CudaModel::Create(host->config(), {.master_weights = false, .device = cuda_device}));
  }
  return std::unique_ptr<DeviceModel>(new DeviceModel(host, std::move(gpu)));
}

absl::Status DeviceModel::Forward(const TokenBatch& batch, const ForwardOptions& options,
                                  ForwardResult<float>* result) {
  if (gpu_ == nullptr) return host_->Forward(batch, options, result);
  RETURN_IF_ERROR(UploadIfStale());
  return gpu_->Forward(batch, options, result);
}

absl::StatusOr<const CudaModel*> DeviceModel::DeviceWeights() {
  if (gpu_ == nullptr) {
    return absl::FailedPreconditionError("the learner's model is on the CPU: no device weights");
  }
  RETURN_IF_ERROR(UploadIfStale());
  return gpu_.get();
}

absl::Status DeviceModel::UploadIfStale() {
  if (!stale_) return absl::OkStatus();
  RETURN_IF_ERROR(WithContext(
      gpu_->SetParams(absl::MakeConstSpan(std::as_const(*host_).params(), host_->num_params())),
      "copying the weights to the GPU"));
  stale_ = false;
  return absl::OkStatus();
}

absl::Status DeviceModel::ZeroGrads() {
  if (gpu_ == nullptr) {
    host_->ZeroGrads();
    return absl::OkStatus();
  }
  return gpu_->ZeroGrads();
}

absl::Status DeviceModel::Backward(absl::Span<const float> dlogprobs,
                                   absl::Span<const float> dentropy) {
  if (gpu_ == nullptr) return host_->Backward(dlogprobs, dentropy);
  return gpu_->Backward(dlogprobs, dentropy);
}

absl::Status DeviceModel::FetchGrads() {
  if (gpu_ == nullptr) return absl::OkStatus();
  return gpu_->GetGrads(absl::MakeSpan(host_->grads(), host_->num_params()));
}

absl::StatusOr<float*> DeviceModel::DeviceGrads() {
  if (gpu_ == nullptr) {
    return absl::FailedPreconditionError("a CPU model's gradients are in host memory");
  }
  return gpu_->GradsOnDevice();
}

void DeviceModel::set_grad_ready_callback(CudaModel::GradReadyCallback callback) {
  if (gpu_ != nullptr) gpu_->set_grad_ready_callback(std::move(callback));
}

}  // namespace grpo
