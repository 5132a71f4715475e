#include "rollout/decode_model.h"

#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "model/cuda_model.h"

namespace grpo {
namespace {

class CpuDecodeModel final : public DecodeModel {
 public:
  explicit CpuDecodeModel(std::unique_ptr<Model<float>> model) : model_(std::move(model)) {
    Prepack();
  }

  const char* device() const override { return "cpu"; }
  int64_t kv_bytes_per_token() const override {
    return KvBytesPerToken(model_->config(), sizeof(float));
  }
  bool batch_invariant() const override { return true; }

  absl::Status InitPool(int64_t num_slots, int64_t pool_rows) override {
    cache_.emplace(KvCache<float>::Pooled(model_->config(), num_slots, pool_rows));
    return absl::OkStatus();
  }
  absl::Status Assign(int64_t slot, int64_t row_offset, int64_t capacity) override {
    cache_->Assign(slot, row_offset, capacity);
    return absl::OkStatus();
  }
  absl::Status CopyPrefix(int64_t src, int64_t dst, int64_t n) override {
    cache_->CopyPrefix(src, dst, n);
    return absl::OkStatus();
  }
  bool shares_prefix() const override { return true; }
  absl::Status SharePrefix(int64_t src, int64_t dst, int64_t n) override {
    cache_->SharePrefix(src, dst, n);
    return absl::OkStatus();
  }
  absl::Status Extend(absl::Span<const int64_t> slots,
                      absl::Span<const absl::Span<const int32_t>> feeds, float* logits,
                      std::vector<int32_t>* routing) override {
    model_->set_batch_invariant(true);
    return model_->Extend(&*cache_, slots, feeds, logits, routing);
  }
  absl::Status SetParams(const float* params) override {
    std::memcpy(model_->params(), params, sizeof(float) * model_->num_params());
    Prepack();
    return absl::OkStatus();
  }

 private:
  // Decode runs on packed weights (model.h PrepackWeights): packed once per weight version
  // instead of on every step. Bitwise the same results.
  void Prepack() {
    if (!model_->PrepackWeights()) return;
    GRPO_LOG(INFO, "rollout engine: %d of %d weights packed at 2 bytes (bf16-exact), the rest at 4",
             model_->prepacked_bf16_weights(), model_->prepacked_weights());
  }

  std::unique_ptr<Model<float>> model_;
  std::optional<KvCache<float>> cache_;  // from InitPool
};

class CudaDecodeModel final : public DecodeModel {
 public:
  explicit CudaDecodeModel(std::unique_ptr<CudaModel> model) : model_(std::move(model)) {}

  const char* device() const override { return "cuda"; }
  int64_t kv_bytes_per_token() const override {
    return KvBytesPerToken(model_->config(), 2);  // bf16
  }
  bool batch_invariant() const override { return false; }

  absl::Status InitPool(int64_t num_slots, int64_t pool_rows) override {
    return model_->InitPooledCache(num_slots, pool_rows);
  }
  absl::Status Assign(int64_t slot, int64_t row_offset, int64_t capacity) override {
    return model_->AssignSlot(slot, row_offset, capacity);
  }
  absl::Status CopyPrefix(int64_t src, int64_t dst, int64_t n) override {
    return model_->CopyPrefix(src, dst, n);
  }
  bool shares_prefix() const override { return true; }
  absl::Status SharePrefix(int64_t src, int64_t dst, int64_t n) override {
    return model_->SharePrefix(src, dst, n);
  }
  absl::Status Extend(absl::Span<const int64_t> slots,
                      absl::Span<const absl::Span<const int32_t>> feeds, float* logits,
                      std::vector<int32_t>* routing) override {
    return model_->Extend(slots, feeds, logits, routing);
  }
  absl::Status SetParams(const float* params) override {
    return model_->SetParams(absl::MakeConstSpan(params, model_->num_params()));
  }
  absl::Status SetParamsFrom(const CudaModel::WeightBuffers& src) override {
    return model_->CopyWeightsFrom(src);
  }
  bool samples_on_device() const override { return true; }
  absl::Status SampleOnDevice(float temperature, absl::Span<const float> u,
                              std::vector<SampledToken>* out) override {
    RETURN_IF_ERROR(model_->SampleWithLogprobs(temperature, u, &tokens_, &logprobs_));
    out->resize(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i) (*out)[i] = {tokens_[i], logprobs_[i]};
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<CudaModel> model_;
  std::vector<int32_t> tokens_;  // SampleOnDevice's buffers
  std::vector<float> logprobs_;
};

}  // namespace

std::unique_ptr<DecodeModel> MakeCpuDecodeModel(std::unique_ptr<Model<float>> model) {
  return std::make_unique<CpuDecodeModel>(std::move(model));
}

absl::StatusOr<std::unique_ptr<DecodeModel>> MakeCudaDecodeModel(
    std::unique_ptr<Model<float>> model) {
  // Decode reads the bf16 weights only: no fp32 masters on the device (2 bytes per parameter).
  ASSIGN_OR_RETURN(std::unique_ptr<CudaModel> gpu,
                   CudaModel::Create(model->config(), {.master_weights = false}));
  RETURN_IF_ERROR(
      WithContext(gpu->SetParams(absl::MakeConstSpan(model->params(), model->num_params())),
                  "rollout engine: copying the weights to the GPU"));
  model.reset();
  return std::unique_ptr<DecodeModel>(std::make_unique<CudaDecodeModel>(std::move(gpu)));
}

}  // namespace grpo
