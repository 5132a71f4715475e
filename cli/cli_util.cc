#include "cli/cli_util.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"

namespace grpo::cli {

int UsageError(const absl::Status& s, const Flags& flags) {
  std::fprintf(stderr, "grpo: %s\n\n%s", std::string(s.message()).c_str(), flags.Help().c_str());
  return 2;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "grpo: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

int ParseFlags(Flags& flags, const std::vector<std::string>& args) {
  absl::Status s = flags.Parse(args);
  if (!s.ok()) return UsageError(s, flags);
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  return -1;
}

int RunWithFlags(Flags& flags, const std::vector<std::string>& args,
                 const std::function<absl::Status(const Flags&)>& fn) {
  if (int code = ParseFlags(flags, args); code >= 0) return code;
  absl::Status s = fn(flags);
  return s.ok() ? 0 : Fail(s);
}

absl::Status ForEachJsonLine(
    const std::string& path,
    const std::function<absl::Status(const nlohmann::json& j, int64_t line_no)>& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open for reading"));
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto j = ParseJson(line);
    if (!j.ok()) return WithContext(j.status(), where);
    RETURN_IF_ERROR(WithContext(fn(*j, line_no), where));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return absl::OkStatus();
}

absl::Status WriteJsonLines(const std::string& path, const std::vector<nlohmann::json>& lines) {
  std::string text;
  for (const auto& j : lines) absl::StrAppend(&text, j.dump(), "\n");
  return WriteFileAtomic(path, text);
}

absl::StatusOr<bool> GetBoolFlag(const Flags& flags, const std::string& name) {
  const std::string v = flags.Get(name);
  if (v != "true" && v != "false") {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be true or false"));
  }
  return v == "true";
}

}  // namespace grpo::cli
