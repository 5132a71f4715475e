// Hugging Face `tokenizer.json` byte-level BPE (Qwen2/Qwen3, Llama-3, GPT-2 style), in C++.
// Reads the file, encodes text to ids and decodes ids to text with the same ids as HF
// `tokenizers` (see FORMATS.md A3; parity is checked by tests/model/tokenizer_test.cc against
// fixtures from scripts/make_tokenizer_fixtures.py).
//
// Supported: model BPE (vocab, merges in "a b" or [["a","b"]] form, ignore_merges, unk_token,
// no dropout, no byte_fallback); normalizer null / NFC / NFD / NFKC / NFKD / Sequence of these;
// pre_tokenizer Split (Regex or String pattern, Isolated or Removed, not inverted), ByteLevel
// (add_prefix_space, use_regex) and Sequence of these, ByteLevel last; added tokens (leftmost-
// longest, normalized or not, lstrip / rstrip); post_processor null / ByteLevel /
// TemplateProcessing (single template) / Sequence of these; decoder ByteLevel.
// Anything else is an InvalidArgument / Unimplemented error naming the component and the file;
// nothing is silently ignored.
//
// Not here: chat templates, truncation/padding, offsets, pair encoding.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace grpo {

namespace tokenizer_internal {
class TokenizerImpl;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Loads a tokenizer.json. Errors name the file and, for unsupported parts, the component.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // Same, from parsed JSON; `source` names it in error messages (a path, or "<memory>").
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const nlohmann::json& j,
                                                             const std::string& source);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes UTF-8 text. Added / special tokens written in the text are recognized (HF's
  // default). `add_special_tokens` applies the post-processor template (e.g. Llama-3's BOS).
  // Invalid UTF-8 is an InvalidArgument error naming the byte offset (HF takes only valid str).
  // Thread-safe.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // Encodes every text, in parallel over `num_threads` threads (0: OpenMP's default).
  // Result i is Encode(texts[i]); the first failing text's error names its index.
  absl::StatusOr<std::vector<std::vector<int32_t>>> EncodeBatch(absl::Span<const std::string> texts,
                                                                bool add_special_tokens = true,
                                                                int num_threads = 0) const;
  // Decodes ids to text: byte-level tokens back to bytes, added tokens as written, the byte
  // string then read as UTF-8 with each invalid sequence replaced by U+FFFD (as HF does).
  // `skip_special_tokens` drops added tokens marked special. An unknown id is an error.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  // One past the largest id (vocab and added tokens): the embedding rows a model needs.
  int64_t vocab_size() const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // True for added tokens with "special": true.
  bool IsSpecial(int32_t id) const;

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer_internal::TokenizerImpl> impl);
  std::unique_ptr<tokenizer_internal::TokenizerImpl> impl_;
};

// The toy character-level tokenizer for toy tasks, as tokenizer.json (BPE with no merges +
// ByteLevel, which HF `tokenizers` also loads): ids 0..255 are the 256 bytes (id == byte value,
// so no input is ever lost), then the added tokens <|endoftext|> 256, <|im_start|> 257,
// <|im_end|> 258 (special), <think> 259, </think> 260, <answer> 261, </answer> 262 (not special,
// so they survive skip_special_tokens). configs/toy_tokenizer.json is this file.
nlohmann::json ToyTokenizerJson();
absl::Status WriteToyTokenizer(const std::string& path);

}  // namespace grpo
