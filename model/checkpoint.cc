#include "model/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"

namespace grpo {

absl::Status LoadWeights(const std::string& dir, const ParamLayout& layout, float* params) {
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointDir> ckpt, CheckpointDir::Open(dir));
  std::set<std::string> expected;
  for (const ParamTensor& t : layout.tensors) {
    expected.insert(t.name);
    CheckpointDir::Entry e = ckpt->Find(t.name);
    if (e.file == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          dir, ": tensor '", t.name, "' is missing; the checkpoint does not match its config.json"));
    }
    if (e.info->shape != t.shape) {
      auto fmt = [](const std::vector<int64_t>& s) {
        std::string out = "[";
        for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
        return out + "]";
      };
      return absl::InvalidArgumentError(absl::StrCat(e.file->path(), ": tensor '", t.name,
                                                     "' has shape ", fmt(e.info->shape),
                                                     ", config.json implies ", fmt(t.shape)));
    }
    RETURN_IF_ERROR(e.file->ReadAsFloat(*e.info, params + t.offset));
  }
  for (const std::string& name : ckpt->TensorNames()) {
    if (name == "lm_head.weight" && layout.lm_head == layout.embed) {
      // Some exporters write the tied head anyway; accept it only if it is the embedding.
      CheckpointDir::Entry e = ckpt->Find(name);
      const ParamTensor& embed = layout.tensors.front();
      if (e.info->shape != embed.shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            e.file->path(), ": lm_head.weight does not match model.embed_tokens.weight's shape, "
            "but config.json says tie_word_embeddings: true"));
      }
      std::vector<float> head(embed.numel);
      RETURN_IF_ERROR(e.file->ReadAsFloat(*e.info, head.data()));
      if (!std::equal(head.begin(), head.end(), params + embed.offset)) {
        return absl::InvalidArgumentError(absl::StrCat(
            e.file->path(), ": lm_head.weight differs from model.embed_tokens.weight, but "
            "config.json says tie_word_embeddings: true; set it to false to load an untied head"));
      }
      continue;
    }
    if (expected.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": unexpected tensor '", name,
          "' that config.json does not account for (wrong model_type or layer count?)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model<float>>> LoadModel(const std::string& dir) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> model, Model<float>::Create(config));
  RETURN_IF_ERROR(LoadWeights(dir, model->layout(), model->params()));
  return model;
}

absl::Status SaveModel(const Model<float>& model, const std::string& dir,
                       const SaveOptions& options) {
  if (options.dtype != Dtype::kF32 && options.dtype != Dtype::kBF16) {
    return absl::InvalidArgumentError("save: dtype must be F32 or BF16");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  std::vector<TensorToWrite> tensors;
  for (const ParamTensor& t : model.layout().tensors) {
    tensors.push_back({t.name, t.shape, model.params() + t.offset, options.dtype});
  }
  RETURN_IF_ERROR(WriteCheckpointWeights(dir, tensors, options.max_shard_bytes));
  nlohmann::json j = model.config().ToJson();
  j["torch_dtype"] = options.dtype == Dtype::kBF16 ? "bfloat16" : "float32";
  j.erase("dtype");
  return WriteFileAtomic(dir + "/config.json", j.dump(2) + "\n");
}

}  // namespace grpo
