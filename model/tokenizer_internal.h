// Internals of model/tokenizer.h, shared by tokenizer.cc (loading, encode, decode),
// tokenizer_pretok.cc (normalizer, regex pre-tokenizer, byte-level table) and tokenizer_bpe.cc
// (the BPE merge loop and its per-thread cache). Not a public API.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace grpo::tokenizer_internal {

// GPT-2 bytes_to_unicode: byte -> code point, and the UTF-8 of that code point.
struct ByteLevelTable {
  std::array<uint32_t, 256> code_point;
  std::array<std::string, 256> utf8;
  absl::flat_hash_map<uint32_t, uint8_t> to_byte;  // the inverse
};
const ByteLevelTable& ByteLevel();

// Index of the first byte that is not valid UTF-8 (overlong, surrogate, > U+10FFFF and
// truncated sequences are invalid), or -1 when all of `s` is valid.
int64_t FindInvalidUtf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// Decodes one code point at s[*pos] (valid UTF-8 assumed) and advances *pos.
uint32_t NextCodePoint(std::string_view s, size_t* pos);
void AppendUtf8(uint32_t cp, std::string* out);

// A normalizer chain (NFC, NFD, NFKC, NFKD); empty = identity.
class Normalizer {
 public:
  static absl::StatusOr<Normalizer> FromJson(const nlohmann::json& j, const std::string& source);
  bool identity() const { return forms_.empty(); }
  // Normalizes valid UTF-8 `in` into *out.
  absl::Status Apply(std::string_view in, std::string* out) const;

 private:
  std::vector<int> forms_;  // utf8proc option bits per step
};

// A compiled PCRE2 pattern (UTF + UCP, JIT where available) that finds non-overlapping
// matches like Oniguruma does for HF (leftmost-first alternation).
class Regex {
 public:
  // `literal`: the pattern is a plain string (Split's {"String": ...}).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal);
  ~Regex();
  // Appends [begin, end) byte ranges of every non-empty match in `text` to *matches.
  // Fails only on a PCRE2 runtime error (e.g. a resource limit), naming the pattern.
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
  std::string pattern_;
};

// One step of the pre-tokenizer.
struct PreTokStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  std::unique_ptr<Regex> regex;   // kSplit, or kByteLevel with use_regex
  bool remove_matches = false;    // Split behavior Removed (else Isolated)
  bool add_prefix_space = false;  // kByteLevel
};

// The pre-tokenizer: Split steps, then exactly one ByteLevel step last.
class PreTokenizer {
 public:
  static absl::StatusOr<PreTokenizer> FromJson(const nlohmann::json& j, const std::string& source);
  // Splits normalized text into pre-tokens (raw UTF-8, before the byte-level mapping). Pieces
  // are views into `text` or into *arena (pieces given a prefix space).
  absl::Status Split(std::string_view text, std::deque<std::string>* arena,
                     std::vector<std::string_view>* pieces) const;

 private:
  std::vector<PreTokStep> steps_;
};

// The BPE model over byte-level symbols.
class Bpe {
 public:
  static absl::StatusOr<std::unique_ptr<Bpe>> FromJson(const nlohmann::json& model,
                                                       const std::string& source);
  // Appends the ids of one pre-token (raw bytes; mapped to byte-level symbols here).
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;

  const absl::flat_hash_map<std::string, int32_t>& vocab() const { return vocab_; }
  const std::vector<std::string>& id_to_token() const { return id_to_token_; }

 private:
  void Merge(std::string_view piece, std::vector<int32_t>* ids) const;

  uint64_t instance_id_ = 0;                         // keys this model's per-thread cache
  absl::flat_hash_map<std::string, int32_t> vocab_;  // byte-level string -> id
  std::vector<std::string> id_to_token_;             // id -> byte-level string ("" if none)
  // (left id << 32 | right id) -> (rank, merged id)
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::array<int32_t, 256> byte_id_;  // id of each byte's one-symbol token, -1 if absent
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
};

}  // namespace grpo::tokenizer_internal
