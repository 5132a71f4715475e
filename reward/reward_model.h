// A reward model: a decoder backbone of any supported family (model/config.h) plus a linear
// sequence-classification head, loaded from a Hugging Face `*ForSequenceClassification`
// checkpoint, scoring token sequences in packed batches. Token ids in, logits out; text,
// templates and normalization are reward/model_reward.h.
//
// Checkpoint layout (what transformers' GenericForSequenceClassification saves): config.json of
// the backbone family (model_type qwen3_moe, qwen2_moe, qwen3, qwen2, llama) and safetensors
// holding the backbone's tensors (model.*) plus `score.weight` [num_labels, hidden] (no bias, no
// lm_head). A stray `lm_head.weight` (a converted causal-LM checkpoint) is ignored, as
// transformers ignores it; any other unknown tensor, a missing one or a wrong shape is an error
// naming it. num_labels is score.weight's first dimension; config.json's id2label, when
// present, must agree.
//
// Which token is scored: transformers reads the logits at the rightmost token that is not
// config.pad_token_id (argmax of index * (id != pad), so position 0 when every token is pad), and
// at the last token when pad_token_id is null. Sequences here are packed without padding, so for
// a sequence that does not end in pad_token_id that is its last token — the same token
// transformers scores in a right-padded batch. A sequence that does end in pad_token_id ids (a
// completion ending in <|endoftext|> when that is also the pad token) is scored where transformers
// scores it: trailing pad ids are cut before the forward (causal attention: nothing after a
// position changes its hidden state). Left padding in transformers shifts positions and is not
// reproduced; nobody should score that way.
//
// Backends: the forward runs on the CPU model (model/model.h, Model<float>::FinalHidden). The
// batching, the head and the contract do not depend on it; a CUDA backbone with the same
// FinalHidden call slots in behind `device` once kernels/cuda has a model forward.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "model/model.h"

namespace grpo {

struct RewardModelBatching {
  // Packed tokens per forward. Sequences are taken in order until the next would pass this; a
  // sequence longer than the budget runs alone. Memory of a forward grows with it.
  int64_t max_batch_tokens = 8192;
  int64_t max_batch_seqs = 256;  // sequences per forward

  absl::Status Validate() const;
};

class RewardModel {
 public:
  // Loads DIR/config.json and DIR's safetensors (see the file comment). Errors name the file and
  // the tensor or field.
  static absl::StatusOr<std::unique_ptr<RewardModel>> Load(const std::string& dir);
  // From parts (tests, benchmarks): the backbone (its lm_head is never used), the head
  // (num_labels, H) row-major, and the pad token id (nullopt: none).
  static absl::StatusOr<std::unique_ptr<RewardModel>> Create(std::unique_ptr<Model<float>> backbone,
                                                             std::vector<float> score_weight,
                                                             std::optional<int32_t> pad_token_id);

  const ModelConfig& config() const { return backbone_->config(); }
  int64_t num_labels() const { return num_labels_; }
  std::optional<int32_t> pad_token_id() const { return pad_token_id_; }
  // The longest sequence a forward accepts (max_position_embeddings).
  int64_t max_length() const { return config().max_position_embeddings; }

  // Batch-invariant kernels (Model::set_batch_invariant): a sequence's logits are then bitwise
  // the same however it is batched, at some speed cost. Off by default. Set before sharing.
  void set_batch_invariant(bool on) { backbone_->set_batch_invariant(on); }

  // The tokens of `seq` that decide its score: seq without trailing pad_token_id ids (one token
  // if all are pad; see the file comment). Its length, >= 1 for a non-empty seq.
  int64_t ScoredLength(absl::Span<const int32_t> seq) const;
  // Why `seq` cannot be scored (empty, an id outside [0, vocab), ScoredLength over
  // max_length()), or OK. Score() fails as a whole on such a sequence, so callers check first.
  absl::Status CheckSequence(absl::Span<const int32_t> seq) const;

  // The head's logits for every sequence, (N, num_labels) row-major into *logits. Packs the
  // sequences into forwards of at most `batching`'s budget. A sequence's logits do not depend on
  // the others or on how they are batched: bitwise with set_batch_invariant(true), else up to
  // fp32 rounding (oneDNN blocks GEMMs by their row count). Thread-safe: concurrent calls run
  // one forward at a time.
  absl::Status Score(absl::Span<const std::vector<int32_t>> seqs,
                     const RewardModelBatching& batching, std::vector<float>* logits) const;

 private:
  RewardModel(std::unique_ptr<Model<float>> backbone, std::vector<float> score_weight,
              int64_t num_labels, std::optional<int32_t> pad_token_id);

  // Model::FinalHidden reuses scratch buffers (not reentrant): mu_ is held around every forward.
  // config() reads only the immutable config.
  mutable absl::Mutex mu_;
  const std::unique_ptr<Model<float>> backbone_;
  const std::vector<float> score_;  // (num_labels, H)
  const int64_t num_labels_;
  const std::optional<int32_t> pad_token_id_;
};

}  // namespace grpo
