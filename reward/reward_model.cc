// RewardModel: sequence-classification checkpoints and packed batched scoring
// (reward/reward_model.h).
#include "reward/reward_model.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status.h"
#include "model/safetensors.h"

namespace grpo {
namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
  return out + "]";
}

// config.json's pad_token_id: absent or null = none; else an id in [0, vocab).
absl::StatusOr<std::optional<int32_t>> ReadPadTokenId(const ModelConfig& config,
                                                      const std::string& source) {
  auto it = config.raw.find("pad_token_id");
  if (it == config.raw.end() || it->is_null()) return std::optional<int32_t>();
  if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
      it->get<int64_t>() >= config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field 'pad_token_id' must be null or a token id in [0, ",
                     config.vocab_size, "), got ", it->dump()));
  }
  return std::optional<int32_t>(static_cast<int32_t>(it->get<int64_t>()));
}

}  // namespace

absl::Status RewardModelBatching::Validate() const {
  if (max_batch_tokens < 1 || max_batch_seqs < 1) {
    return absl::InvalidArgumentError("max_batch_tokens and max_batch_seqs must be >= 1");
  }
  return absl::OkStatus();
}

RewardModel::RewardModel(std::unique_ptr<Model<float>> backbone, std::vector<float> score_weight,
                         int64_t num_labels, std::optional<int32_t> pad_token_id)
    : backbone_(std::move(backbone)),
      score_(std::move(score_weight)),
      num_labels_(num_labels),
      pad_token_id_(pad_token_id) {}

absl::StatusOr<std::unique_ptr<RewardModel>> RewardModel::Create(
    std::unique_ptr<Model<float>> backbone, std::vector<float> score_weight,
    std::optional<int32_t> pad_token_id) {
  if (backbone == nullptr) return absl::InvalidArgumentError("reward model: no backbone");
  const int64_t H = backbone->config().hidden_size;
  if (score_weight.empty() || score_weight.size() % H != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward model: score weight has ", score_weight.size(),
                     " values, not a positive multiple of hidden ", H));
  }
  if (pad_token_id && (*pad_token_id < 0 || *pad_token_id >= backbone->config().vocab_size)) {
    return absl::InvalidArgumentError("reward model: pad_token_id outside the vocabulary");
  }
  const int64_t num_labels = static_cast<int64_t>(score_weight.size()) / H;
  return std::unique_ptr<RewardModel>(
      new RewardModel(std::move(backbone), std::move(score_weight), num_labels, pad_token_id));
}

absl::StatusOr<std::unique_ptr<RewardModel>> RewardModel::Load(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(config_path));
  ASSIGN_OR_RETURN(std::optional<int32_t> pad, ReadPadTokenId(config, config_path));
  // No LM head: tying it to the embedding makes the layout expect no lm_head tensor and allocate
  // nothing for one. FinalHidden never reads it.
  config.tie_word_embeddings = true;
  ASSIGN_OR_RETURN(std::unique_ptr<Model<float>> backbone, Model<float>::Create(config));
  const ParamLayout& layout = backbone->layout();
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointDir> ckpt, CheckpointDir::Open(dir));

  std::set<std::string> expected = {"score.weight"};
  for (const ParamTensor& t : layout.tensors) {
    expected.insert(t.name);
    CheckpointDir::Entry e = ckpt->Find(t.name);
    if (e.file == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": tensor '", t.name,
                       "' is missing; the checkpoint does not match its config.json"));
    }
    if (e.info->shape != t.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(e.file->path(), ": tensor '", t.name, "' has shape ",
                       ShapeString(e.info->shape), ", config.json implies ", ShapeString(t.shape)));
    }
    RETURN_IF_ERROR(e.file->ReadAsFloat(*e.info, backbone->params() + t.offset));
  }
  const int64_t H = config.hidden_size;
  CheckpointDir::Entry head = ckpt->Find("score.weight");
  if (head.file == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no 'score.weight': not a sequence-classification (reward model) checkpoint"));
  }
  if (head.info->shape.size() != 2 || head.info->shape[1] != H || head.info->shape[0] < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(head.file->path(), ": tensor 'score.weight' has shape ",
                     ShapeString(head.info->shape), ", expected [num_labels, ", H, "]"));
  }
  const int64_t num_labels = head.info->shape[0];
  std::vector<float> score(num_labels * H);
  RETURN_IF_ERROR(head.file->ReadAsFloat(*head.info, score.data()));
  auto id2label = config.raw.find("id2label");
  if (id2label != config.raw.end() && id2label->is_object() &&
      static_cast<int64_t>(id2label->size()) != num_labels) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": field 'id2label' has ", id2label->size(),
                     " labels but score.weight has ", num_labels, " rows"));
  }
  for (const std::string& name : ckpt->TensorNames()) {
    if (expected.count(name) != 0) continue;
    if (name == "lm_head.weight") {
      GRPO_LOG(WARNING, "%s: ignoring lm_head.weight (a reward model scores with score.weight)",
               dir);
      continue;
    }
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": unexpected tensor '", name,
                     "' that config.json does not account for (wrong model_type or layer count?)"));
  }
  return std::unique_ptr<RewardModel>(
      new RewardModel(std::move(backbone), std::move(score), num_labels, pad));
}

int64_t RewardModel::ScoredLength(absl::Span<const int32_t> seq) const {
  int64_t n = static_cast<int64_t>(seq.size());
  if (pad_token_id_) {
    while (n > 0 && seq[n - 1] == *pad_token_id_) --n;
  }
  // All pad: transformers' argmax over zeros picks position 0.
  return seq.empty() ? 0 : std::max<int64_t>(n, 1);
}

absl::Status RewardModel::CheckSequence(absl::Span<const int32_t> seq) const {
  if (seq.empty()) return absl::InvalidArgumentError("no tokens to score");
  const int64_t V = config().vocab_size;
  for (size_t i = 0; i < seq.size(); ++i) {
    if (seq[i] < 0 || seq[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", seq[i], " at position ", i,
                       " is outside the reward model's vocabulary [0, ", V, ")"));
    }
  }
  const int64_t n = ScoredLength(seq);
  if (n > max_length()) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " tokens exceed the reward model's context (", max_length(), ")"));
  }
  return absl::OkStatus();
}

absl::Status RewardModel::Score(absl::Span<const std::vector<int32_t>> seqs,
                                const RewardModelBatching& batching,
                                std::vector<float>* logits) const {
  RETURN_IF_ERROR(batching.Validate());
  for (size_t i = 0; i < seqs.size(); ++i) {
    RETURN_IF_ERROR(WithContext(CheckSequence(seqs[i]), absl::StrCat("sequence ", i)));
  }
  const int64_t N = static_cast<int64_t>(seqs.size()), H = config().hidden_size, L = num_labels_;
  logits->assign(N * L, 0.0f);
  std::vector<float> hidden;  // (B, H)
  TokenBatch batch;
  std::vector<int64_t> members;  // seqs index of batch sequence b
  auto flush = [&]() -> absl::Status {
    if (members.empty()) return absl::OkStatus();
    {
      absl::MutexLock lock(&mu_);
      RETURN_IF_ERROR(backbone_->FinalHidden(batch, &hidden));
    }
    // The head in double, one row at a time: a row's logits never depend on the batch's size.
    for (size_t b = 0; b < members.size(); ++b) {
      const float* h = hidden.data() + b * H;
      for (int64_t l = 0; l < L; ++l) {
        const float* w = score_.data() + l * H;
        double acc = 0;
        for (int64_t k = 0; k < H; ++k) acc += static_cast<double>(h[k]) * w[k];
        (*logits)[members[b] * L + l] = static_cast<float>(acc);
      }
    }
    batch = TokenBatch();
    members.clear();
    return absl::OkStatus();
  };
  for (int64_t i = 0; i < N; ++i) {
    const int64_t n = ScoredLength(seqs[i]);
    if (!members.empty() && (batch.num_tokens() + n > batching.max_batch_tokens ||
                             static_cast<int64_t>(members.size()) >= batching.max_batch_seqs)) {
      RETURN_IF_ERROR(flush());
    }
    batch.Add(absl::MakeConstSpan(seqs[i]).subspan(0, n));
    members.push_back(i);
  }
  return flush();
}

}  // namespace grpo
