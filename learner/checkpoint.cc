// Learner checkpoints (see checkpoint.h).
#include "learner/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json_util.h"
#include "common/status.h"
#include "model/checkpoint.h"

namespace grpo {
namespace {

namespace fs = std::filesystem;

constexpr char kPrefix[] = "step_";
constexpr char kTmpPrefix[] = ".tmp-";

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return Errno("open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("fsync", path);
  return absl::OkStatus();
}

std::string StepName(int64_t step) { return absl::StrFormat("%s%08d", kPrefix, step); }

}  // namespace

nlohmann::json TrainerState::ToJson() const {
  return {{"format", 1},
          {"step", step},
          {"seed", seed},
          {"weight_version", weight_version},
          {"dataset", dataset.ToJson()},
          {"rng", "every stream is SplitMix64 keyed by (seed, step, ...): the step restores it"}};
}

absl::StatusOr<TrainerState> TrainerState::FromJson(const nlohmann::json& j,
                                                    const std::string& source) {
  TrainerState s;
  try {
    if (j.at("format").get<int>() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported trainer state format"));
    }
    s.step = j.at("step").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.weight_version = j.at("weight_version").get<int64_t>();
    auto pos = DatasetPosition::FromJson(j.at("dataset"));
    if (!pos.ok()) return WithContext(pos.status(), absl::StrCat(source, ": dataset"));
    s.dataset = *pos;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": bad trainer state: ", e.what()));
  }
  if (s.step < 0) return absl::InvalidArgumentError(absl::StrCat(source, ": negative step"));
  return s;
}

absl::Status SaveCheckpoint(const std::string& root, const Model<float>& policy,
                            const Model<float>* reference, const AdamW& optimizer,
                            const TrainerState& state, const CheckpointSaveOptions& options) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", root, ": ", ec.message()));
  // Leftovers of an interrupted save are never loadable; clear them first.
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (e.path().filename().string().rfind(kTmpPrefix, 0) == 0) fs::remove_all(e.path(), ec);
  }
  const std::string name = StepName(state.step);
  const std::string tmp = (fs::path(root) / (std::string(kTmpPrefix) + name)).string();
  const std::string final_dir = (fs::path(root) / name).string();
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", tmp, ": ", ec.message()));
  auto step = [&](const std::string& file) {
    return options.after_file ? options.after_file(file) : absl::OkStatus();
  };

  // bf16 weights (optimizer.weight_dtype) are bf16-valued: written as bf16, losslessly, at half
  // the bytes; the fp32 master copy is in optimizer.bin.
  SaveOptions save;
  if (optimizer.bf16_weights()) save.dtype = Dtype::kBF16;
  RETURN_IF_ERROR(SaveModel(policy, tmp, save));
  RETURN_IF_ERROR(step("model.safetensors"));
  if (!options.tokenizer_path.empty()) {
    fs::copy_file(options.tokenizer_path, fs::path(tmp) / "tokenizer.json",
                  fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("copy ", options.tokenizer_path, " into ", tmp, ": ", ec.message()));
    }
    RETURN_IF_ERROR(step("tokenizer.json"));
    // The tokenizer's companions, when they sit beside it (HF loaders read them).
    for (const char* name :
         {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
      const fs::path src = fs::path(options.tokenizer_path).parent_path() / name;
      if (!fs::exists(src)) continue;
      fs::copy_file(src, fs::path(tmp) / name, fs::copy_options::overwrite_existing, ec);
      if (ec) return absl::InternalError(absl::StrCat("copy ", src.string(), ": ", ec.message()));
    }
  }
  if (reference != nullptr) {
    RETURN_IF_ERROR(SaveModel(*reference, (fs::path(tmp) / "reference").string(), save));
    RETURN_IF_ERROR(step("reference"));
  }
  RETURN_IF_ERROR(
      WriteFileAtomic((fs::path(tmp) / "optimizer.bin").string(), optimizer.SerializeState()));
  RETURN_IF_ERROR(step("optimizer.bin"));
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(tmp) / "trainer_state.json").string(),
                                  state.ToJson().dump(2) + "\n"));
  RETURN_IF_ERROR(step("trainer_state.json"));

  for (const auto& e : fs::recursive_directory_iterator(tmp, ec)) {
    RETURN_IF_ERROR(FsyncPath(e.path().string(), e.is_directory()));
  }
  RETURN_IF_ERROR(FsyncPath(tmp, true));
  if (fs::exists(final_dir)) {  // a re-save of the same step: move the old one out of the way
    const std::string doomed =
        (fs::path(root) / (std::string(kTmpPrefix) + "delete-" + name)).string();
    if (::rename(final_dir.c_str(), doomed.c_str()) != 0)
      return Errno("rename for removal", final_dir);
    fs::remove_all(doomed, ec);
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) return Errno("rename to", final_dir);
  RETURN_IF_ERROR(FsyncPath(root, true));

  // Pruning renames first (atomic), then deletes: a crash mid-delete leaves a .tmp-* directory
  // that readers ignore, never a half-deleted checkpoint that looks complete.
  std::vector<std::string> all = ListCheckpoints(root);
  for (size_t i = 0; i + static_cast<size_t>(options.keep) < all.size(); ++i) {
    const fs::path old(all[i]);
    const fs::path doomed =
        old.parent_path() / (std::string(kTmpPrefix) + "delete-" + old.filename().string());
    if (::rename(old.c_str(), doomed.c_str()) != 0) return Errno("rename for removal", all[i]);
    fs::remove_all(doomed, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("remove old checkpoint ", all[i], ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> ListCheckpoints(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (!e.is_directory() || n.rfind(kPrefix, 0) != 0) continue;
    const std::string digits = n.substr(std::strlen(kPrefix));
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;
    found.emplace_back(std::stoll(digits), e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

absl::Status LoadCheckpoint(const std::string& dir, Model<float>* policy, Model<float>* reference,
                            AdamW* optimizer, TrainerState* state) {
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  ASSIGN_OR_RETURN(nlohmann::json sj, ReadJsonFile(state_path));
  ASSIGN_OR_RETURN(*state, TrainerState::FromJson(sj, state_path));
  RETURN_IF_ERROR(LoadWeights(dir, policy->layout(), policy->params()));
  const fs::path ref_dir = fs::path(dir) / "reference";
  if (reference != nullptr && fs::exists(ref_dir)) {
    RETURN_IF_ERROR(LoadWeights(ref_dir.string(), reference->layout(), reference->params()));
  }
  const std::string opt_path = (fs::path(dir) / "optimizer.bin").string();
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(opt_path));
  RETURN_IF_ERROR(optimizer->RestoreState(bytes, opt_path));
  return absl::OkStatus();
}

}  // namespace grpo
