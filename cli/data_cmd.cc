// `grpo data ...`: countdown, arith. Writes synthetic task datasets as JSONL rows in the format
// learner/dataset.h reads. Flag and config mistakes exit 2 with the flag named; I/O errors exit 1.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/status.h"
#include "learner/tasks.h"

namespace grpo::cli {
namespace {

constexpr char kDataUsage[] =
    "usage: grpo data <countdown|arith> [options]\n"
    "Run `grpo data <subcommand> --help` for its options.\n";

// --n and --seed, shared by every generator.
absl::Status CountAndSeed(const Flags& f, int64_t* n, uint64_t* seed) {
  ASSIGN_OR_RETURN(*n, f.GetInt("n"));
  ASSIGN_OR_RETURN(int64_t s, f.GetInt("seed"));
  if (s < 0) return absl::InvalidArgumentError("--seed must be a non-negative integer");
  *seed = static_cast<uint64_t>(s);
  return absl::OkStatus();
}

absl::Status WriteRows(const std::string& path, const std::vector<nlohmann::json>& rows) {
  RETURN_IF_ERROR(WriteJsonLines(path, rows));
  std::printf("wrote %s: %zu rows\n", path.c_str(), rows.size());
  return absl::OkStatus();
}

int Countdown(const std::vector<std::string>& args) {
  Flags f("grpo data countdown --n N --seed S --out FILE.jsonl",
          "Writes N TinyZero-style Countdown problems: reach the target with each number used\n"
          "exactly once and + - * / (). Every problem is solvable; one solution is stored in\n"
          "\"extra\". The prompt is TinyZero's question text (render it with the countdown template).");
  f.Add("n", "number of problems", "", true, Flags::Kind::kInt);
  f.Add("seed", "random seed (problem i depends only on seed and i)", "0", false, Flags::Kind::kInt);
  f.Add("out", "output JSONL", "", true);
  f.Add("min-count", "fewest numbers in a problem", "3", false, Flags::Kind::kInt);
  f.Add("max-count", "most numbers in a problem", "4", false, Flags::Kind::kInt);
  f.Add("min-number", "smallest number", "1", false, Flags::Kind::kInt);
  f.Add("max-number", "largest number", "99", false, Flags::Kind::kInt);
  f.Add("max-target", "largest target (targets are >= 1)", "100", false, Flags::Kind::kInt);
  if (int code = ParseFlags(f, args); code >= 0) return code;
  CountdownConfig c;
  absl::Status s = CountAndSeed(f, &c.n, &c.seed);
  for (auto [flag, field] : {std::pair{"min-count", &c.min_count}, {"max-count", &c.max_count},
                             {"min-number", &c.min_number}, {"max-number", &c.max_number},
                             {"max-target", &c.max_target}}) {
    if (!s.ok()) break;
    auto v = f.GetInt(flag);
    s = v.status();
    if (v.ok()) *field = *v;
  }
  if (s.ok()) s = c.Validate();
  if (!s.ok()) return UsageError(s, f);
  auto problems = GenerateCountdown(c);
  if (!problems.ok()) return Fail(problems.status());
  std::vector<nlohmann::json> rows;
  for (const auto& p : *problems) rows.push_back(CountdownRow(p));
  s = WriteRows(f.Get("out"), rows);
  return s.ok() ? 0 : Fail(s);
}

int Arith(const std::vector<std::string>& args) {
  Flags f("grpo data arith --n N --seed S --digits D --ops \"+-*\" --out FILE.jsonl",
          "Writes N problems \"What is a op b?\" with D-digit operands; ground_truth is the exact\n"
          "integer answer as a string (\"/\" problems divide exactly).");
  f.Add("n", "number of problems", "", true, Flags::Kind::kInt);
  f.Add("seed", "random seed (problem i depends only on seed and i)", "0", false, Flags::Kind::kInt);
  f.Add("out", "output JSONL", "", true);
  f.Add("digits", "digits per operand, 1..9", "3", false, Flags::Kind::kInt);
  f.Add("ops", "operators to draw from, a subset of \"+-*/\"", "+-*");
  if (int code = ParseFlags(f, args); code >= 0) return code;
  ArithConfig c;
  c.ops = f.Get("ops");
  absl::Status s = CountAndSeed(f, &c.n, &c.seed);
  if (s.ok()) {
    auto digits = f.GetInt("digits");
    s = digits.status();
    if (digits.ok()) c.digits = *digits;
  }
  if (s.ok()) s = c.Validate();
  if (!s.ok()) return UsageError(s, f);
  auto problems = GenerateArith(c);
  if (!problems.ok()) return Fail(problems.status());
  std::vector<nlohmann::json> rows;
  for (const auto& p : *problems) rows.push_back(ArithRow(p));
  s = WriteRows(f.Get("out"), rows);
  return s.ok() ? 0 : Fail(s);
}

}  // namespace

int RunDataCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kDataUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "countdown") return Countdown(rest);
  if (args[0] == "arith") return Arith(rest);
  std::fprintf(stderr, "grpo: unknown data subcommand '%s'\n\n%s", args[0].c_str(), kDataUsage);
  return 2;
}

}  // namespace grpo::cli
