// `grpo learner CONFIG [--set key.sub=value]... [--resume] [--steps N]`: the GRPO training loop
// (learner/trainer.h) from a learner config (learner/config.h). `--print-defaults` prints every
// config key with its default. Exit codes: 0 done, 1 runtime error, 2 usage or config error.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "learner/config.h"
#include "learner/trainer.h"

namespace grpo::cli {
namespace {

constexpr char kLearnerHelp[] =
    "usage: grpo learner CONFIG.json [--set key.sub=value]... [--resume] [--print-defaults]\n"
    "\n"
    "Runs GRPO: samples completions (in-process rollout workers), scores them with the config's\n"
    "rewards, updates the policy and writes OUTPUT_DIR/{metrics.jsonl, samples.jsonl,\n"
    "events.out.tfevents.*, checkpoints/step_N/}.\n"
    "\n"
    "  --set key.sub=value  override one config key (repeatable); value is JSON or a string\n"
    "  --resume             continue from the newest checkpoint in OUTPUT_DIR/checkpoints\n"
    "  --print-defaults     print every config key with its default and exit\n";

int Usage(const std::string& msg) {
  std::fprintf(stderr, "grpo learner: %s\n\n%s", msg.c_str(), kLearnerHelp);
  return 2;
}

}  // namespace

int RunLearnerCommand(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> overrides;
  bool resume = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kLearnerHelp, stdout);
      return 0;
    }
    if (a == "--print-defaults") {
      std::printf("%s\n", DefaultLearnerConfigJson().dump(2).c_str());
      return 0;
    }
    if (a == "--resume") {
      resume = true;
    } else if (a == "--set") {
      if (i + 1 >= args.size()) return Usage("--set needs key.sub=value");
      overrides.push_back(args[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      overrides.push_back(a.substr(6));
    } else if (a.rfind("--", 0) == 0) {
      return Usage(absl::StrCat("unknown flag '", a, "'"));
    } else if (config_path.empty()) {
      config_path = a;
    } else {
      return Usage(absl::StrCat("one CONFIG expected, got a second: '", a, "'"));
    }
  }
  if (config_path.empty()) return Usage("missing CONFIG");
  auto config = LoadLearnerConfig(config_path, overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "grpo learner: config error: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  TrainerOptions opts;
  opts.resume = resume;
  auto trainer = Trainer::Create(*config, std::move(opts));
  if (!trainer.ok()) return Fail(trainer.status());
  absl::Status s = (*trainer)->Run();
  if (!s.ok()) return Fail(s);
  return 0;
}

}  // namespace grpo::cli
