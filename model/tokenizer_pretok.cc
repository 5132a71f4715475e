// Tokenizer text plumbing: UTF-8 checks, the GPT-2 byte<->unicode table, the normalizer
// (utf8proc) and the regex pre-tokenizer (PCRE2 with UTF + UCP). See FORMATS.md A3.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/tokenizer_internal.h"

namespace grpo::tokenizer_internal {
namespace {

using nlohmann::json;

// The GPT-2 pattern ByteLevel uses when use_regex is true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Length of the UTF-8 sequence a lead byte starts and the valid range of its second byte
// (Unicode Table 3-7); 0 for a byte that cannot start a sequence.
int SequenceInfo(uint8_t b, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b == 0xE0) {
    *lo = 0xA0;
    return 3;
  }
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return 3;
  if (b == 0xED) {
    *hi = 0x9F;
    return 3;
  }
  if (b == 0xF0) {
    *lo = 0x90;
    return 4;
  }
  if (b >= 0xF1 && b <= 0xF3) return 4;
  if (b == 0xF4) {
    *hi = 0x8F;
    return 4;
  }
  return 0;
}

// Length of the valid prefix of the sequence at s[i] (>= 1 when it is a complete sequence of
// `*width` bytes; otherwise the maximal invalid subpart's length, at least 1).
size_t ScanSequence(std::string_view s, size_t i, int* width) {
  const uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) {
    *width = 1;
    return 1;
  }
  uint8_t lo, hi;
  *width = SequenceInfo(b, &lo, &hi);
  if (*width == 0) return 1;
  if (i + 1 >= s.size()) return 1;
  const uint8_t b1 = static_cast<uint8_t>(s[i + 1]);
  if (b1 < lo || b1 > hi) return 1;
  for (int k = 2; k < *width; ++k) {
    if (i + k >= s.size()) return k;
    const uint8_t bk = static_cast<uint8_t>(s[i + k]);
    if (bk < 0x80 || bk > 0xBF) return k;
  }
  return *width;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

}  // namespace

const ByteLevelTable& ByteLevel() {
  static const ByteLevelTable* table = [] {
    auto* t = new ByteLevelTable();
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool identity = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t->code_point[b] = identity ? static_cast<uint32_t>(b) : 0x100 + n++;
      AppendUtf8(t->code_point[b], &t->utf8[b]);
      t->to_byte[t->code_point[b]] = static_cast<uint8_t>(b);
    }
    return t;
  }();
  return *table;
}

int64_t FindInvalidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int width;
    const size_t n = ScanSequence(s, i, &width);
    if (width == 0 || static_cast<int>(n) != width) return static_cast<int64_t>(i);
    i += n;
  }
  return -1;
}

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int width;
    const size_t n = ScanSequence(s, i, &width);
    if (width != 0 && static_cast<int>(n) == width) {
      out.append(s.data() + i, n);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += n;
  }
  return out;
}

uint32_t NextCodePoint(std::string_view s, size_t* pos) {
  const uint8_t b = static_cast<uint8_t>(s[*pos]);
  int width = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  uint32_t cp = width == 1 ? b : width == 2 ? (b & 0x1F) : width == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < width; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[*pos + k]) & 0x3F);
  *pos += width;
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---- Normalizer ----

absl::StatusOr<Normalizer> Normalizer::FromJson(const json& j, const std::string& source) {
  Normalizer n;
  if (j.is_null()) return n;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": normalizer must be null or an object with a \"type\""));
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": normalizer Sequence needs a \"normalizers\" array"));
    }
    for (const json& step : j["normalizers"]) {
      ASSIGN_OR_RETURN(Normalizer inner, FromJson(step, source));
      n.forms_.insert(n.forms_.end(), inner.forms_.begin(), inner.forms_.end());
    }
    return n;
  }
  const int stable = UTF8PROC_STABLE;
  if (type == "NFC") {
    n.forms_.push_back(stable | UTF8PROC_COMPOSE);
  } else if (type == "NFD") {
    n.forms_.push_back(stable | UTF8PROC_DECOMPOSE);
  } else if (type == "NFKC") {
    n.forms_.push_back(stable | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  } else if (type == "NFKD") {
    n.forms_.push_back(stable | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  } else {
    return absl::UnimplementedError(absl::StrCat(
        source, ": normalizer type \"", type,
        "\" is not supported (supported: null, NFC, NFD, NFKC, NFKD, Sequence of these)"));
  }
  return n;
}

absl::Status Normalizer::Apply(std::string_view in, std::string* out) const {
  out->assign(in.data(), in.size());
  bool ascii = true;
  for (char c : in) ascii &= static_cast<uint8_t>(c) < 0x80;
  if (ascii) return absl::OkStatus();  // every normal form leaves ASCII as it is
  for (int form : forms_) {
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out->data()),
                                            static_cast<utf8proc_ssize_t>(out->size()), &dst,
                                            static_cast<utf8proc_option_t>(form));
    if (n < 0) {
      return absl::InvalidArgumentError(absl::StrCat("normalizer failed: ", utf8proc_errmsg(n)));
    }
    out->assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
    std::free(dst);
  }
  return absl::OkStatus();
}

// ---- Regex ----

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(const std::string& pattern, bool literal) {
  std::unique_ptr<Regex> r(new Regex());
  r->pattern_ = pattern;
  // NOTES: PCRE2's UCP \s is Unicode White_Space, U+0085 included, as Oniguruma's is (HF).
  const std::string& p = pattern;
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // PCRE2 refuses UCP with LITERAL (a literal has no classes for it to change anyway).
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options, &err,
                                   &err_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return absl::InvalidArgumentError(absl::StrCat("regex /", pattern, "/ does not compile at ",
                                                   err_offset, ": ",
                                                   reinterpret_cast<const char*>(msg)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT fails
  r->code_ = code;
  return r;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* matches) const {
  thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
      pcre2_match_data_create(1, nullptr));
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    const int rc =
        pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      return absl::ResourceExhaustedError(
          absl::StrCat("regex /", pattern_, "/ failed: ", reinterpret_cast<const char*>(msg)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    if (ov[1] == ov[0]) {  // an empty match: step over one character
      size_t pos = ov[1];
      if (pos >= text.size()) break;
      NextCodePoint(text, &pos);
      start = pos;
      continue;
    }
    matches->emplace_back(ov[0], ov[1]);
    start = ov[1];
  }
  return absl::OkStatus();
}

// ---- PreTokenizer ----

namespace {

absl::Status ParseStep(const json& j, const std::string& source, std::vector<PreTokStep>* steps) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": pre_tokenizer must be an object with a \"type\""));
  }
  const std::string type = j["type"].get<std::string>();
  auto flag = [&](const char* key, bool dflt) -> absl::StatusOr<bool> {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    if (!j[key].is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": pre_tokenizer ", type, ".", key, " must be a boolean"));
    }
    return j[key].get<bool>();
  };
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": pre_tokenizer Sequence needs a \"pretokenizers\" array"));
    }
    for (const json& step : j["pretokenizers"]) RETURN_IF_ERROR(ParseStep(step, source, steps));
    return absl::OkStatus();
  }
  PreTokStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokStep::Kind::kByteLevel;
    ASSIGN_OR_RETURN(step.add_prefix_space, flag("add_prefix_space", true));
    ASSIGN_OR_RETURN(bool use_regex, flag("use_regex", true));
    if (use_regex) {
      auto re = Regex::Compile(kGpt2Pattern, false);
      GRPO_CHECK(re.ok());
      step.regex = std::move(*re);
    }
  } else if (type == "Split") {
    const json& pat = j.contains("pattern") ? j["pattern"] : json();
    const bool is_regex = pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string();
    const bool is_string = pat.is_object() && pat.contains("String") && pat["String"].is_string();
    if (!is_regex && !is_string) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": pre_tokenizer Split.pattern must be {\"Regex\": ...} or {\"String\": ...}"));
    }
    auto re = Regex::Compile(pat[is_regex ? "Regex" : "String"].get<std::string>(), !is_regex);
    if (!re.ok()) return WithContext(re.status(), absl::StrCat(source, ": pre_tokenizer Split"));
    step.regex = std::move(*re);
    ASSIGN_OR_RETURN(bool invert, flag("invert", false));
    if (invert) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": pre_tokenizer Split with invert: true is not supported"));
    }
    const std::string behavior =
        j.contains("behavior") && j["behavior"].is_string() ? j["behavior"].get<std::string>() : "";
    if (behavior == "Removed") {
      step.remove_matches = true;
    } else if (behavior != "Isolated") {
      return absl::UnimplementedError(
          absl::StrCat(source, ": pre_tokenizer Split behavior \"", behavior,
                       "\" is not supported (supported: Isolated, Removed)"));
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat(source, ": pre_tokenizer type \"", type,
                     "\" is not supported (supported: Split, ByteLevel, Sequence of these)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const json& j, const std::string& source) {
  PreTokenizer p;
  if (j.is_null()) {
    return absl::UnimplementedError(
        absl::StrCat(source,
                     ": pre_tokenizer null is not supported; only byte-level BPE (a ByteLevel "
                     "pre_tokenizer) is"));
  }
  RETURN_IF_ERROR(ParseStep(j, source, &p.steps_));
  for (size_t i = 0; i < p.steps_.size(); ++i) {
    const bool byte_level = p.steps_[i].kind == PreTokStep::Kind::kByteLevel;
    if (byte_level != (i + 1 == p.steps_.size())) {
      return absl::UnimplementedError(
          absl::StrCat(source,
                       ": pre_tokenizer must end with exactly one ByteLevel step (only byte-level "
                       "BPE is supported)"));
    }
  }
  return p;
}

absl::Status PreTokenizer::Split(std::string_view text, std::deque<std::string>* arena,
                                 std::vector<std::string_view>* pieces) const {
  pieces->clear();
  if (text.empty()) return absl::OkStatus();
  pieces->push_back(text);
  std::vector<std::string_view> next;
  std::vector<std::pair<size_t, size_t>> matches;
  auto split = [&](const Regex& re, bool remove) -> absl::Status {
    next.clear();
    for (std::string_view piece : *pieces) {
      matches.clear();
      RETURN_IF_ERROR(re.FindAll(piece, &matches));
      size_t prev = 0;
      for (const auto& [b, e] : matches) {
        if (b > prev) next.push_back(piece.substr(prev, b - prev));
        if (!remove) next.push_back(piece.substr(b, e - b));
        prev = e;
      }
      if (prev < piece.size()) next.push_back(piece.substr(prev));
    }
    pieces->swap(next);
    return absl::OkStatus();
  };
  for (const PreTokStep& step : steps_) {
    if (step.kind == PreTokStep::Kind::kSplit) {
      RETURN_IF_ERROR(split(*step.regex, step.remove_matches));
      continue;
    }
    if (step.add_prefix_space) {
      for (std::string_view& piece : *pieces) {
        if (piece.front() == ' ') continue;
        arena->push_back(absl::StrCat(" ", absl::string_view(piece.data(), piece.size())));
        piece = arena->back();
      }
    }
    if (step.regex) RETURN_IF_ERROR(split(*step.regex, false));
  }
  return absl::OkStatus();
}

}  // namespace grpo::tokenizer_internal
