// `grpo tokenize` and `grpo detokenize`: JSONL text <-> token ids through a HF tokenizer.json
// (model/tokenizer.h). Every user error is one line on stderr naming the file and line; exit
// code 1 (2 for usage errors).
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/status.h"
#include "model/tokenizer.h"

namespace grpo::cli {
namespace {

// Reads the `key` field of each non-blank JSONL line (their 1-based numbers go to *line_nos);
// `parse` converts it or returns false. Errors name file:line.
template <typename T, typename Parse>
absl::StatusOr<std::vector<T>> ReadField(const std::string& path, const std::string& key,
                                         const std::string& expected, Parse parse,
                                         std::vector<int64_t>* line_nos) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open for reading"));
  std::vector<T> values;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
    }
    auto it = j.is_object() ? j.find(key) : j.end();
    T value;
    if (it == j.end() || !parse(*it, &value)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected ", expected));
    }
    values.push_back(std::move(value));
    line_nos->push_back(line_no);
  }
  return values;
}

absl::StatusOr<bool> BoolFlag(const Flags& f, const std::string& name) {
  const std::string v = f.Get(name);
  if (v != "true" && v != "false") {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be true or false"));
  }
  return v == "true";
}

absl::Status Tokenize(const Flags& f) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(f.Get("tokenizer")));
  ASSIGN_OR_RETURN(bool add_special, BoolFlag(f, "add-special-tokens"));
  ASSIGN_OR_RETURN(int64_t threads, f.GetInt("threads"));
  const std::string in = f.Get("in");
  std::vector<int64_t> line_nos;
  ASSIGN_OR_RETURN(auto texts, ReadField<std::string>(
                                   in, "text", "an object {\"text\": \"...\"}",
                                   [](const nlohmann::json& v, std::string* out) {
                                     if (!v.is_string()) return false;
                                     *out = v.get<std::string>();
                                     return true;
                                   },
                                   &line_nos));
  auto ids = tok->EncodeBatch(texts, add_special, static_cast<int>(threads));
  if (!ids.ok()) {  // find the failing line to name it
    for (size_t i = 0; i < texts.size(); ++i) {
      auto one = tok->Encode(texts[i], add_special);
      if (!one.ok()) return WithContext(one.status(), absl::StrCat(in, ":", line_nos[i]));
    }
    return ids.status();
  }
  std::string out;
  for (const auto& seq : *ids) absl::StrAppend(&out, nlohmann::json{{"ids", seq}}.dump(), "\n");
  return WriteFileAtomic(f.Get("out"), out);
}

absl::Status Detokenize(const Flags& f) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(f.Get("tokenizer")));
  ASSIGN_OR_RETURN(bool skip_special, BoolFlag(f, "skip-special-tokens"));
  const std::string in = f.Get("in");
  std::vector<int64_t> line_nos;
  ASSIGN_OR_RETURN(auto seqs, ReadField<std::vector<int32_t>>(
                                  in, "ids", "an object {\"ids\": [non-negative integer ids]}",
                                  [](const nlohmann::json& v, std::vector<int32_t>* out) {
                                    if (!v.is_array()) return false;
                                    for (const auto& id : v) {
                                      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
                                          id.get<int64_t>() > INT32_MAX) {
                                        return false;
                                      }
                                      out->push_back(id.get<int32_t>());
                                    }
                                    return true;
                                  },
                                  &line_nos));
  std::string out;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto text = tok->Decode(seqs[i], skip_special);
    if (!text.ok()) return WithContext(text.status(), absl::StrCat(in, ":", line_nos[i]));
    absl::StrAppend(&out, nlohmann::json{{"text", *text}}.dump(), "\n");
  }
  return WriteFileAtomic(f.Get("out"), out);
}

int Run(Flags& f, const std::vector<std::string>& args, absl::Status (*fn)(const Flags&)) {
  absl::Status s = f.Parse(args);
  if (!s.ok()) {
    std::fprintf(stderr, "grpo: %s\n\n%s", std::string(s.message()).c_str(), f.Help().c_str());
    return 2;
  }
  if (f.help_requested()) {
    std::fputs(f.Help().c_str(), stdout);
    return 0;
  }
  s = fn(f);
  if (!s.ok()) {
    std::fprintf(stderr, "grpo: error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int RunTokenizeCommand(const std::vector<std::string>& args) {
  Flags f("grpo tokenize --tokenizer FILE --in IN.jsonl --out OUT.jsonl",
          "For each input line {\"text\": \"...\"} writes {\"ids\": [...]}, encoded with a HF "
          "tokenizer.json\n(byte-level BPE). Added/special tokens written in the text are "
          "recognized.");
  f.Add("tokenizer", "tokenizer.json (e.g. configs/toy_tokenizer.json)", "", true);
  f.Add("in", "input JSONL, one {\"text\": ...} per line", "", true);
  f.Add("out", "output JSONL", "", true);
  f.Add("add-special-tokens", "apply the post-processor template (e.g. BOS): true or false",
        "true");
  f.Add("threads", "encoding threads; 0 = all cores", "0", false, Flags::Kind::kInt);
  return Run(f, args, Tokenize);
}

int RunDetokenizeCommand(const std::vector<std::string>& args) {
  Flags f("grpo detokenize --tokenizer FILE --in IN.jsonl --out OUT.jsonl",
          "For each input line {\"ids\": [...]} writes {\"text\": \"...\"}, decoded with a HF "
          "tokenizer.json.\nBytes that do not form UTF-8 become U+FFFD, as in HF.");
  f.Add("tokenizer", "tokenizer.json (e.g. configs/toy_tokenizer.json)", "", true);
  f.Add("in", "input JSONL, one {\"ids\": [...]} per line", "", true);
  f.Add("out", "output JSONL", "", true);
  f.Add("skip-special-tokens", "drop added tokens marked special: true or false", "false");
  return Run(f, args, Detokenize);
}

}  // namespace grpo::cli
