// `grpo tokenize` and `grpo detokenize`: JSONL text <-> token ids through a HF tokenizer.json
// (model/tokenizer.h). Every user error is one line on stderr naming the file and line; exit
// code 1 (2 for usage errors).
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
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
  std::vector<T> values;
  RETURN_IF_ERROR(ForEachJsonLine(path, [&](const nlohmann::json& j, int64_t line_no) {
    auto it = j.is_object() ? j.find(key) : j.end();
    T value;
    if (it == j.end() || !parse(*it, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("expected ", expected));
    }
    values.push_back(std::move(value));
    line_nos->push_back(line_no);
    return absl::OkStatus();
  }));
  return values;
}

absl::Status Tokenize(const Flags& f) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(f.Get("tokenizer")));
  ASSIGN_OR_RETURN(bool add_special, GetBoolFlag(f, "add-special-tokens"));
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
  std::vector<nlohmann::json> lines;
  for (const auto& seq : *ids) lines.push_back({{"ids", seq}});
  return WriteJsonLines(f.Get("out"), lines);
}

absl::Status Detokenize(const Flags& f) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(f.Get("tokenizer")));
  ASSIGN_OR_RETURN(bool skip_special, GetBoolFlag(f, "skip-special-tokens"));
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
  std::vector<nlohmann::json> lines;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto text = tok->Decode(seqs[i], skip_special);
    if (!text.ok()) return WithContext(text.status(), absl::StrCat(in, ":", line_nos[i]));
    lines.push_back({{"text", *text}});
  }
  return WriteJsonLines(f.Get("out"), lines);
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
  return RunWithFlags(f, args, Tokenize);
}

int RunDetokenizeCommand(const std::vector<std::string>& args) {
  Flags f("grpo detokenize --tokenizer FILE --in IN.jsonl --out OUT.jsonl",
          "For each input line {\"ids\": [...]} writes {\"text\": \"...\"}, decoded with a HF "
          "tokenizer.json.\nBytes that do not form UTF-8 become U+FFFD, as in HF.");
  f.Add("tokenizer", "tokenizer.json (e.g. configs/toy_tokenizer.json)", "", true);
  f.Add("in", "input JSONL, one {\"ids\": [...]} per line", "", true);
  f.Add("out", "output JSONL", "", true);
  f.Add("skip-special-tokens", "drop added tokens marked special: true or false", "false");
  return RunWithFlags(f, args, Detokenize);
}

}  // namespace grpo::cli
