// Hugging Face checkpoint directories <-> Model<float>: config.json plus model.safetensors or
// sharded safetensors with an index. Loading checks that every tensor the config needs is there
// with the right shape and a float dtype (F32, BF16, F16, F64), and that nothing else is.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace grpo {

// Reads DIR/config.json and the weights. Errors name the directory, file and tensor.
absl::StatusOr<std::unique_ptr<Model<float>>> LoadModel(const std::string& dir);

// Fills params (layout.total floats) from the checkpoint in `dir`.
absl::Status LoadWeights(const std::string& dir, const ParamLayout& layout, float* params);

struct SaveOptions {
  Dtype dtype = Dtype::kF32;  // kF32 or kBF16
  int64_t max_shard_bytes = int64_t{5} << 30;
};

// Writes DIR/config.json and the weights (creating DIR). HF tensor names, per-expert tensors,
// no lm_head.weight when embeddings are tied: loadable by transformers unchanged.
absl::Status SaveModel(const Model<float>& model, const std::string& dir,
                       const SaveOptions& options = {});

}  // namespace grpo
