// Learner checkpoints: ROOT/step_NNNNNNNN/ holds a Hugging Face directory (config.json,
// model.safetensors, tokenizer.json) that transformers or vLLM load unchanged, plus what an exact
// resume needs beside it:
//   optimizer.bin        AdamW state (learner/optimizer.h; checksummed)
//   reference/           the KL reference model when it can differ from the initial policy
//   trainer_state.json   {"step", "seed", "weight_version", "dataset": DatasetPosition,
//                         "rng": how the random streams are keyed, "format": 1}
// There is no hidden RNG state to save: every random stream of a step is keyed by (seed, step,
// ...) (learner/trainer.h), so the step number restores them.
//
// Atomicity: everything is written into ROOT/.tmp-step_NNNNNNNN, each file and the directory are
// fsync'ed, then the directory is renamed to its final name and ROOT is fsync'ed. A crash at any
// point leaves either the complete new checkpoint or none of it; readers ignore .tmp-* entries and
// the next save removes them. After a save only the newest `keep` checkpoints remain; older ones
// are renamed to .tmp-delete-* before being deleted, so a crash mid-delete cannot leave a
// half-deleted directory that looks like a checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/dataset.h"
#include "learner/optimizer.h"
#include "model/model.h"

namespace grpo {

struct TrainerState {
  int64_t step = 0;  // steps completed
  uint64_t seed = 0;
  int64_t weight_version = 0;  // version of the weights last published
  DatasetPosition dataset;

  nlohmann::json ToJson() const;
  static absl::StatusOr<TrainerState> FromJson(const nlohmann::json& j, const std::string& source);
};

struct CheckpointSaveOptions {
  int64_t keep = 3;
  std::string tokenizer_path;  // copied in as tokenizer.json ("" = none)
  // Called after each file is written with its name; a non-OK return aborts the save right there
  // (tests use it to simulate a crash mid-write: the temporary directory is left behind).
  std::function<absl::Status(const std::string& file)> after_file;
};

// Writes ROOT/step_<step>. `reference` may be null (not saved).
absl::Status SaveCheckpoint(const std::string& root, const Model<float>& policy,
                            const Model<float>* reference, const AdamW& optimizer,
                            const TrainerState& state, const CheckpointSaveOptions& options);

// Complete checkpoints under ROOT, oldest first (full paths); empty when there are none.
std::vector<std::string> ListCheckpoints(const std::string& root);

// Loads a checkpoint into existing objects (built from the same model config). `reference` may be
// null; when non-null and the checkpoint has no reference/, it is left as is.
absl::Status LoadCheckpoint(const std::string& dir, Model<float>* policy, Model<float>* reference,
                            AdamW* optimizer, TrainerState* state);

}  // namespace grpo
