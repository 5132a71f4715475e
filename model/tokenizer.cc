// Tokenizer: loads tokenizer.json, matches added tokens, runs normalizer -> pre-tokenizer ->
// BPE, applies the post-processor template, and decodes ids back through the ByteLevel decoder.
// Also writes the toy tokenizer. See model/tokenizer.h.
#include "model/tokenizer.h"

#include <omp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "model/tokenizer_internal.h"

namespace grpo {
namespace tokenizer_internal {
namespace {

using nlohmann::json;

// Rust's char::is_whitespace (the White_Space property), for lstrip / rstrip.
bool IsWhitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

struct AddedToken {
  int32_t id = 0;
  // As matched and decoded: normalized when `normalized` is set. HF 0.23 decodes a normalized
  // token from its normalized text too (so "nai\u0308ve" decodes as NFC "naïve" put through
  // the byte-level table); we do the same for parity.
  std::string content;
  std::string raw;  // as written in the file (what TokenToId looks up)
  bool special = false, lstrip = false, rstrip = false, normalized = false;
};

// A piece of input: either an added token's id or a range of text to tokenize.
struct Segment {
  int32_t id;  // -1 for text
  std::string_view text;
};

// Leftmost-longest matching of a set of added tokens (HF uses Aho-Corasick LeftmostLongest).
class AddedMatcher {
 public:
  void Add(const AddedToken* t) {
    if (t->content.empty()) return;
    auto& list = by_first_byte_[static_cast<uint8_t>(t->content[0])];
    list.push_back(t);
    std::stable_sort(list.begin(), list.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
  }
  bool empty() const {
    for (const auto& l : by_first_byte_)
      if (!l.empty()) return false;
    return true;
  }
  // Splits `text` into added-token and text segments, appended to *out.
  void Split(std::string_view text, std::vector<Segment>* out) const {
    size_t text_start = 0, i = 0;
    while (i < text.size()) {
      const auto& list = by_first_byte_[static_cast<uint8_t>(text[i])];
      const AddedToken* hit = nullptr;
      for (const AddedToken* t : list) {
        if (text.compare(i, t->content.size(), t->content) == 0) {
          hit = t;
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + hit->content.size();
      if (hit->lstrip) {
        size_t p = text_start, last_non_ws_end = text_start;
        while (p < start) {
          const uint32_t c = NextCodePoint(text, &p);
          if (!IsWhitespace(c)) last_non_ws_end = p;
        }
        start = last_non_ws_end;
      }
      if (hit->rstrip) {
        size_t p = stop;
        while (p < text.size()) {
          size_t q = p;
          if (!IsWhitespace(NextCodePoint(text, &q))) break;
          p = q;
        }
        stop = p;
      }
      if (start > text_start) out->push_back({-1, text.substr(text_start, start - text_start)});
      out->push_back({hit->id, {}});
      text_start = i = stop;
    }
    if (text_start < text.size()) out->push_back({-1, text.substr(text_start)});
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_byte_;
};

}  // namespace

class TokenizerImpl {
 public:
  static absl::StatusOr<std::unique_ptr<TokenizerImpl>> FromJson(const json& j,
                                                                 const std::string& source);
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special) const;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special) const;

  int64_t vocab_size_ = 0;
  std::unique_ptr<Bpe> bpe_;
  Normalizer normalizer_;
  PreTokenizer pretok_;
  std::vector<AddedToken> added_;
  absl::flat_hash_map<int32_t, const AddedToken*> added_by_id_;
  AddedMatcher raw_matcher_, normalized_matcher_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // the post-processor's single template

 private:
  absl::Status ParsePostProcessor(const json& j, const std::string& source);
};

absl::Status TokenizerImpl::ParsePostProcessor(const json& j, const std::string& source) {
  if (j.is_null()) return absl::OkStatus();
  const std::string where = absl::StrCat(source, ": post_processor");
  const std::string type = j.is_object() && j.contains("type") && j["type"].is_string()
                               ? j["type"].get<std::string>()
                               : "";
  if (type == "ByteLevel") return absl::OkStatus();  // adds no tokens; offsets only
  if (type == "Sequence" && j.contains("processors") && j["processors"].is_array()) {
    for (const json& p : j["processors"]) RETURN_IF_ERROR(ParsePostProcessor(p, source));
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return absl::UnimplementedError(absl::StrCat(
        where, " type \"", type,
        "\" is not supported (supported: null, ByteLevel, TemplateProcessing, Sequence)"));
  }
  if (!prefix_ids_.empty() || !suffix_ids_.empty()) {
    return absl::UnimplementedError(absl::StrCat(where, ": only one TemplateProcessing allowed"));
  }
  if (!j.contains("single") || !j["single"].is_array() || !j.contains("special_tokens") ||
      !j["special_tokens"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": TemplateProcessing needs a \"single\" array and a \"special_tokens\" object"));
  }
  int num_sequences = 0;
  for (const json& item : j["single"]) {
    if (item.is_object() && item.contains("Sequence")) {
      const json& seq = item["Sequence"];
      if (!seq.is_object() || seq.value("id", "") != "A") {
        return absl::UnimplementedError(
            absl::StrCat(where, ": TemplateProcessing single may only hold sequence A"));
      }
      ++num_sequences;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].is_object() ||
        !item["SpecialToken"].contains("id") || !item["SpecialToken"]["id"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": TemplateProcessing single items must be {\"SpecialToken\"|\"Sequence\": ...}"));
    }
    const std::string name = item["SpecialToken"]["id"].get<std::string>();
    const json& st = j["special_tokens"];
    if (!st.contains(name) || !st[name].is_object() || !st[name].contains("ids") ||
        !st[name]["ids"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": special token \"", name, "\" is missing from special_tokens"));
    }
    for (const json& id : st[name]["ids"]) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": special token \"", name, "\" has a bad id"));
      }
      (num_sequences == 0 ? prefix_ids_ : suffix_ids_).push_back(id.get<int32_t>());
    }
  }
  if (num_sequences != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": TemplateProcessing single must hold $A exactly once"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TokenizerImpl>> TokenizerImpl::FromJson(const json& j,
                                                                       const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tokenizer.json must be an object"));
  }
  for (const char* key : {"truncation", "padding"}) {
    if (j.contains(key) && !j[key].is_null()) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": ", key, " is not supported (set it to null)"));
    }
  }
  if (!j.contains("model")) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no \"model\""));
  }
  auto impl = std::make_unique<TokenizerImpl>();
  ASSIGN_OR_RETURN(impl->bpe_, Bpe::FromJson(j["model"], source));
  ASSIGN_OR_RETURN(impl->normalizer_, Normalizer::FromJson(j.value("normalizer", json()), source));
  ASSIGN_OR_RETURN(impl->pretok_, PreTokenizer::FromJson(j.value("pre_tokenizer", json()), source));
  const json decoder = j.value("decoder", json());
  if (!decoder.is_object() || decoder.value("type", "") != "ByteLevel") {
    return absl::UnimplementedError(absl::StrCat(
        source, ": decoder ", decoder.is_object() ? decoder.value("type", "?") : decoder.dump(),
        " is not supported (only ByteLevel)"));
  }
  RETURN_IF_ERROR(impl->ParsePostProcessor(j.value("post_processor", json()), source));

  const json added = j.value("added_tokens", json::array());
  if (!added.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": added_tokens must be an array"));
  }
  impl->added_.reserve(added.size());  // the matchers keep pointers into added_
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    const std::string where = absl::StrCat(source, ": added_tokens[", i, "]");
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() > INT32_MAX / 2 ||
        !a.contains("content") || !a["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " needs a non-negative integer \"id\" and a string \"content\""));
    }
    AddedToken t;
    t.id = a["id"].get<int32_t>();
    t.raw = a["content"].get<std::string>();
    if (FindInvalidUtf8(t.raw) >= 0 || t.raw.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": content must be non-empty UTF-8"));
    }
    auto flag = [&](const char* key, bool* v) {
      if (a.contains(key) && a[key].is_boolean()) *v = a[key].get<bool>();
    };
    bool single_word = false;
    flag("single_word", &single_word);
    flag("special", &t.special);
    flag("lstrip", &t.lstrip);
    flag("rstrip", &t.rstrip);
    t.normalized = !t.special;  // HF's default when the field is absent
    flag("normalized", &t.normalized);
    if (single_word) {
      return absl::UnimplementedError(
          absl::StrCat(where, " (\"", t.raw, "\"): single_word: true is not supported"));
    }
    t.content = t.raw;
    if (t.normalized) RETURN_IF_ERROR(impl->normalizer_.Apply(t.raw, &t.content));
    if (impl->added_by_id_.contains(t.id)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": id ", t.id, " is used twice"));
    }
    impl->added_.push_back(std::move(t));
    const AddedToken* p = &impl->added_.back();
    impl->added_by_id_[p->id] = p;
    (p->normalized ? impl->normalized_matcher_ : impl->raw_matcher_).Add(p);
  }
  impl->vocab_size_ = static_cast<int64_t>(impl->bpe_->id_to_token().size());
  for (const AddedToken& t : impl->added_) {
    impl->vocab_size_ = std::max<int64_t>(impl->vocab_size_, t.id + 1);
  }
  for (int32_t id : impl->prefix_ids_) {
    if (id >= impl->vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": post_processor id ", id, " is outside the vocabulary"));
    }
  }
  return impl;
}

absl::StatusOr<std::vector<int32_t>> TokenizerImpl::Encode(std::string_view text,
                                                           bool add_special) const {
  const int64_t bad = FindInvalidUtf8(text);
  if (bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte offset ", bad));
  }
  std::vector<int32_t> ids;
  if (add_special) ids = prefix_ids_;
  std::vector<Segment> raw_segments, norm_segments;
  raw_matcher_.Split(text, &raw_segments);
  std::string normalized;
  std::deque<std::string> arena;
  std::vector<std::string_view> pieces;
  for (const Segment& raw : raw_segments) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    std::string_view norm_text = raw.text;
    if (!normalizer_.identity()) {
      RETURN_IF_ERROR(normalizer_.Apply(raw.text, &normalized));
      norm_text = normalized;
    }
    norm_segments.clear();
    normalized_matcher_.Split(norm_text, &norm_segments);
    for (const Segment& seg : norm_segments) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
        continue;
      }
      arena.clear();
      RETURN_IF_ERROR(pretok_.Split(seg.text, &arena, &pieces));
      for (std::string_view piece : pieces) bpe_->EncodePiece(piece, &ids);
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

absl::StatusOr<std::string> TokenizerImpl::Decode(absl::Span<const int32_t> ids,
                                                  bool skip_special) const {
  const auto& to_byte = ByteLevel().to_byte;
  const auto& id_to_token = bpe_->id_to_token();
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    const std::string* token = nullptr;
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) {
      if (skip_special && it->second->special) continue;
      token = &it->second->content;
    } else if (id >= 0 && static_cast<size_t>(id) < id_to_token.size() &&
               !id_to_token[id].empty()) {
      token = &id_to_token[id];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "id ", id, " at position ", i, " is not in the vocabulary (size ", vocab_size_, ")"));
    }
    // Every character maps back to a byte, or else the token is taken as raw UTF-8.
    const size_t mark = bytes.size();
    bool all_mapped = true;
    for (size_t p = 0; p < token->size();) {
      auto b = to_byte.find(NextCodePoint(*token, &p));
      if (b == to_byte.end()) {
        all_mapped = false;
        break;
      }
      bytes += static_cast<char>(b->second);
    }
    if (!all_mapped) {
      bytes.resize(mark);
      bytes += *token;
    }
  }
  return Utf8Lossy(bytes);
}

}  // namespace tokenizer_internal

using tokenizer_internal::TokenizerImpl;

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(path));
  return FromJson(j, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const nlohmann::json& j,
                                                               const std::string& source) {
  try {
    ASSIGN_OR_RETURN(auto impl, TokenizerImpl::FromJson(j, source));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  } catch (const nlohmann::json::exception& e) {  // a field of an unexpected type
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": malformed tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  return impl_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> Tokenizer::EncodeBatch(
    absl::Span<const std::string> texts, bool add_special_tokens, int num_threads) const {
  const int64_t n = static_cast<int64_t>(texts.size());
  std::vector<std::vector<int32_t>> out(n);
  std::vector<absl::Status> status(n);
  if (num_threads <= 0) num_threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t i = 0; i < n; ++i) {
    auto r = impl_->Encode(texts[i], add_special_tokens);
    if (r.ok()) {
      out[i] = std::move(*r);
    } else {
      status[i] = r.status();
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!status[i].ok()) return WithContext(status[i], absl::StrCat("text ", i));
  }
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size_; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const auto& t : impl_->added_) {
    if (t.raw == token) return t.id;
  }
  const auto& vocab = impl_->bpe_->vocab();
  auto it = vocab.find(absl::string_view(token.data(), token.size()));
  if (it == vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  auto it = impl_->added_by_id_.find(id);
  if (it != impl_->added_by_id_.end()) return it->second->content;
  const auto& tokens = impl_->bpe_->id_to_token();
  if (id < 0 || static_cast<size_t>(id) >= tokens.size() || tokens[id].empty()) {
    return std::nullopt;
  }
  return tokens[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = impl_->added_by_id_.find(id);
  return it != impl_->added_by_id_.end() && it->second->special;
}

nlohmann::json ToyTokenizerJson() {
  using nlohmann::json;
  const auto& table = tokenizer_internal::ByteLevel();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[table.utf8[b]] = b;
  struct Special {
    const char* content;
    bool special;
  };
  const Special kAdded[] = {{"<|endoftext|>", true}, {"<|im_start|>", true}, {"<|im_end|>", true},
                            {"<think>", false},      {"</think>", false},    {"<answer>", false},
                            {"</answer>", false}};
  json added = json::array();
  int id = 256;
  for (const Special& s : kAdded) {
    added.push_back({{"id", id++},
                     {"content", s.content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", s.special}});
  }
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", false},
                           {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", nullptr},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", json::array()}}}};
}

absl::Status WriteToyTokenizer(const std::string& path) {
  return WriteFileAtomic(path, ToyTokenizerJson().dump(1) + "\n");
}

}  // namespace grpo
