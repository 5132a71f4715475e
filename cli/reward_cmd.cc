// `grpo reward score`: scores JSONL items {"prompt", "completion", "ground_truth", "data_source"}
// (+ optional "completion_ids", "extra") with the reward functions of a reward config
// (reward/reward_set.h) and writes one {"score", "components", "error"} line per input line.
// A malformed line becomes that line's error, never a crash; an unreadable file exits 1, a bad
// config or flag exits 2.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/reward_service.h"
#include "reward/reward_set.h"

namespace grpo::cli {
namespace {

constexpr char kRewardUsage[] =
    "usage: grpo reward score --config R.json --in IN.jsonl --out OUT.jsonl\n"
    "       grpo reward serve --config R.json [--port P] [--host 127.0.0.1]\n"
    "Run `grpo reward score --help` or `grpo reward serve --help` for their options.\n";

// One input line as a RewardInput, or why it is not one.
absl::StatusOr<RewardInput> ParseItem(std::string_view line) {
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(line));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("expected an object, got ", JsonTypeName(j)));
  }
  RewardInput in;
  auto text = [&](const char* key, bool required, std::string* out) -> absl::Status {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) return absl::InvalidArgumentError(absl::StrCat("missing \"", key, "\""));
      return absl::OkStatus();
    }
    if (!j[key].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", key, "\" must be a string, got ", JsonTypeName(j[key])));
    }
    *out = j[key].get<std::string>();
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(text("completion", true, &in.completion));
  RETURN_IF_ERROR(text("prompt", false, &in.prompt));
  RETURN_IF_ERROR(text("data_source", false, &in.data_source));
  if (j.contains("ground_truth")) in.ground_truth = j["ground_truth"];
  if (j.contains("extra")) in.extra = j["extra"];
  if (j.contains("completion_ids") && !j["completion_ids"].is_null()) {
    const nlohmann::json& ids = j["completion_ids"];
    if (!ids.is_array()) return absl::InvalidArgumentError("\"completion_ids\" must be an array");
    for (const auto& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("\"completion_ids\" must hold token ids, got ", id.dump()));
      }
      in.completion_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  return in;
}

int Score(const std::vector<std::string>& args) {
  Flags f(
      "grpo reward score --config R.json --in IN.jsonl --out OUT.jsonl",
      "Scores each JSONL line {\"prompt\", \"completion\", \"ground_truth\", \"data_source\"}\n"
      "(+ optional \"completion_ids\", \"extra\") with the rewards in a reward config, e.g.\n"
      "configs/rewards/countdown.json, and writes {\"score\", \"components\", \"error\"} per\n"
      "non-empty line (\"error\" null or a string; a malformed line gets an error, not a crash).\n"
      "Rewards: math, countdown, format, gsm8k, exact_match, regex_match, overlong, plugin, "
      "remote, model.");
  f.Add("config", "reward config JSON ({\"rewards\": [...], \"failure_score\": 0})", "", true);
  f.Add("in", "input JSONL", "", true);
  f.Add("out", "output JSONL", "", true);
  if (int code = ParseFlags(f, args); code >= 0) return code;
  auto config_json = ReadJsonFile(f.Get("config"));
  if (!config_json.ok()) {
    const int code = Fail(config_json.status());
    return config_json.status().code() == absl::StatusCode::kInvalidArgument ? 2 : code;
  }
  auto config = RewardSetConfig::FromJson(*config_json);
  absl::StatusOr<RewardSet> set =
      config.ok() ? RewardSet::Create(*config) : absl::StatusOr<RewardSet>(config.status());
  if (!set.ok()) {
    std::fprintf(stderr, "grpo: %s: %s\n", f.Get("config").c_str(),
                 std::string(set.status().message()).c_str());
    return 2;
  }
  auto text = ReadFile(f.Get("in"));
  if (!text.ok()) return Fail(text.status());

  // Parse every non-empty line; good items are scored as one batch, bad ones keep their error.
  std::vector<std::string> parse_errors;  // per output line; empty = parsed
  std::vector<RewardInput> items;
  std::vector<size_t> item_line;  // output line of items[k]
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == absl::string_view::npos) continue;
    auto item = ParseItem(std::string_view(line.data(), line.size()));
    if (item.ok()) {
      item_line.push_back(parse_errors.size());
      items.push_back(std::move(*item));
      parse_errors.emplace_back();
    } else {
      parse_errors.push_back(absl::StrCat("line ", line_no, ": ", item.status().message()));
    }
  }
  const std::vector<RewardOutput> scored = set->Score(items);
  std::vector<nlohmann::json> rows(parse_errors.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i] = {{"score", set->config().failure_score},
               {"components", nlohmann::json::object()},
               {"error", parse_errors[i]}};
  }
  for (size_t k = 0; k < items.size(); ++k) {
    const RewardOutput& o = scored[k];
    nlohmann::json& row = rows[item_line[k]];
    row["score"] = o.score;
    row["components"] = o.components;
    row["error"] = o.error;
  }
  std::string out;
  size_t num_errors = 0;
  double total = 0;
  for (nlohmann::json& row : rows) {
    if (row["error"].get<std::string>().empty()) {
      row["error"] = nullptr;
    } else {
      ++num_errors;
    }
    total += row["score"].get<double>();
    absl::StrAppend(&out, row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "\n");
  }
  if (absl::Status s = WriteFileAtomic(f.Get("out"), out); !s.ok()) return Fail(s);
  std::printf("wrote %s: %zu lines, %zu errors, mean score %.4f\n", f.Get("out").c_str(),
              rows.size(), num_errors,
              rows.empty() ? 0.0 : total / static_cast<double>(rows.size()));
  return 0;
}

int Serve(const std::vector<std::string>& args) {
  Flags f("grpo reward serve --config R.json [--port P] [--host 127.0.0.1]",
          "Serves the rewards of a reward config as a RewardService (proto/reward.proto) until\n"
          "SIGINT or SIGTERM. Prints \"listening on HOST:PORT\" once ready. Binds to loopback\n"
          "unless --host says otherwise; --port 0 picks a free port.");
  f.Add("config", "reward config JSON ({\"rewards\": [...], \"failure_score\": 0})", "", true);
  f.Add("port", "TCP port (0 = any free port)", "0");
  f.Add("host", "address to bind", "127.0.0.1");
  f.Add("max_batch_size", "largest batch a Score call may carry",
        std::to_string(RewardScorer::kDefaultMaxBatchSize));
  f.Add("queue_size", "Score calls that may wait for a worker; more get RESOURCE_EXHAUSTED",
        std::to_string(ScoreQueueOptions().max_queued));
  f.Add("workers", "Score calls scored at the same time",
        std::to_string(ScoreQueueOptions().num_workers));
  if (int code = ParseFlags(f, args); code >= 0) return code;
  int port = 0, max_batch = 0;
  ScoreQueueOptions queue;
  try {
    size_t used = 0;
    for (auto [name, out] : {std::pair<const char*, int*>{"port", &port},
                             {"max_batch_size", &max_batch},
                             {"queue_size", &queue.max_queued},
                             {"workers", &queue.num_workers}}) {
      *out = std::stoi(f.Get(name), &used);
      if (used != f.Get(name).size()) throw std::invalid_argument(name);
    }
  } catch (const std::exception&) {
    return UsageError(absl::InvalidArgumentError(
                          "--port, --max_batch_size, --queue_size and --workers must be integers"),
                      f);
  }
  if (port < 0 || port > 65535 || max_batch < 1) {
    return UsageError(
        absl::InvalidArgumentError("--port must be in [0, 65535], --max_batch_size >= 1"), f);
  }
  if (absl::Status s = queue.Validate(); !s.ok()) {
    return UsageError(absl::InvalidArgumentError(absl::StrCat(
                          "--queue_size must be >= 0 and --workers in [1, 256]: ", s.message())),
                      f);
  }
  auto config_json = ReadJsonFile(f.Get("config"));
  if (!config_json.ok()) {
    const int code = Fail(config_json.status());
    return config_json.status().code() == absl::StatusCode::kInvalidArgument ? 2 : code;
  }
  auto scorer = RewardScorer::FromConfigJson(*config_json, max_batch);
  if (!scorer.ok()) {
    std::fprintf(stderr, "grpo: %s: %s\n", f.Get("config").c_str(),
                 std::string(scorer.status().message()).c_str());
    return 2;
  }
  // Block the stop signals before gRPC starts its threads (they inherit the mask), then wait for
  // one here: no async-signal-safety concerns, and shutdown runs on this thread.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  RewardServiceImpl service(scorer->get(), queue);
  int selected_port = 0;
  auto server = StartRewardServer(&service, f.Get("host"), port, &selected_port);
  if (!server.ok()) return Fail(server.status());
  std::printf("listening on %s:%d\n", f.Get("host").c_str(), selected_port);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  // A second Ctrl-C / SIGTERM during the graceful shutdown ends the process at once.
  pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
  std::fprintf(stderr, "grpo: reward serve: got signal %d, shutting down\n", sig);
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  (*server)->Wait();
  return 0;
}

}  // namespace

int RunRewardCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kRewardUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "score") return Score({args.begin() + 1, args.end()});
  if (args[0] == "serve") return Serve({args.begin() + 1, args.end()});
  std::fprintf(stderr, "grpo: unknown reward subcommand '%s'\n\n%s", args[0].c_str(), kRewardUsage);
  return 2;
}

}  // namespace grpo::cli
