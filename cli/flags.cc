#include "cli/flags.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grpo::cli {

void Flags::Add(const std::string& name, const std::string& help, const std::string& default_value,
                bool required, Kind kind) {
  order_.push_back(name);
  specs_[name] = Spec{help, default_value, default_value, required, false, kind};
}

absl::Status Flags::Parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      return absl::OkStatus();
    }
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    it->second.value = value;
    it->second.set = true;
  }
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    if (s.required && !s.set) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
    if (s.set && s.kind == Kind::kInt) RETURN_IF_ERROR(GetInt(name).status());
    if (s.set && s.kind == Kind::kNumber) RETURN_IF_ERROR(GetDouble(name).status());
  }
  return absl::OkStatus();
}

std::string Flags::Help() const {
  std::string out = absl::StrCat("usage: ", usage_, "\n\n", summary_, "\n\noptions:\n");
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    absl::StrAppend(&out, "  --", name, "\n      ", s.help,
                    s.required ? " (required)" : absl::StrCat(" (default: ", s.default_value.empty() ? "none" : s.default_value, ")"),
                    "\n");
  }
  return out;
}

std::string Flags::Get(const std::string& name) const { return specs_.at(name).value; }

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", Get(name), "' is not an integer"));
  }
  return v;
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name) const {
  double v = 0;
  if (!absl::SimpleAtod(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", Get(name), "' is not a number"));
  }
  return v;
}

}  // namespace grpo::cli
