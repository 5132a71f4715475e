// grpo: one executable, many subcommands. `grpo --help` lists them; `grpo CMD --help` explains one.
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

constexpr char kUsage[] =
    "grpo: GRPO post-training for Mixture-of-Experts language models.\n"
    "\n"
    "usage: grpo <command> [options]\n"
    "\n"
    "commands:\n"
    "  model init       create a randomly initialized model (HF config.json + safetensors)\n"
    "  model logprobs   per-token logprobs of token sequences under a model\n"
    "  model generate   sample continuations of token sequences\n"
    "  model info       print a model's configuration and parameter count\n"
    "  data countdown   write TinyZero-style Countdown problems as a JSONL dataset\n"
    "  data arith       write multi-digit arithmetic problems as a JSONL dataset\n"
    "  tokenize         encode JSONL {\"text\"} lines to {\"ids\"} with a tokenizer.json\n"
    "  detokenize       decode JSONL {\"ids\"} lines to {\"text\"} with a tokenizer.json\n"
    "  reward score     score JSONL completions with the rewards of a reward config\n"
    "  reward serve     serve a reward config as a gRPC RewardService\n"
    "  train            the one-command run: data, SFT warm start, services, GRPO, eval, plot\n"
    "  sft              supervised fine-tuning on prompt + response text (warm start)\n"
    "  plot             draw a run's metrics.jsonl as an SVG of line charts\n"
    "  rollout serve    serve a model as a gRPC RolloutService (sampling, weight updates)\n"
    "  learner          run GRPO training from a learner config\n"
    "  eval             accuracy and pass@k of a model on a dataset under a reward config\n"
    "\n"
    "Run `grpo <command> --help` for a command's options.\n";

}  // namespace

namespace {
int Run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "model") return grpo::cli::RunModelCommand({args.begin() + 1, args.end()});
  if (args[0] == "data") return grpo::cli::RunDataCommand({args.begin() + 1, args.end()});
  if (args[0] == "tokenize") return grpo::cli::RunTokenizeCommand({args.begin() + 1, args.end()});
  if (args[0] == "reward") return grpo::cli::RunRewardCommand({args.begin() + 1, args.end()});
  if (args[0] == "train") return grpo::cli::RunTrainCommand({args.begin() + 1, args.end()});
  if (args[0] == "sft") return grpo::cli::RunSftCommand({args.begin() + 1, args.end()});
  if (args[0] == "plot") return grpo::cli::RunPlotCommand({args.begin() + 1, args.end()});
  if (args[0] == "rollout") return grpo::cli::RunRolloutCommand({args.begin() + 1, args.end()});
  if (args[0] == "learner") return grpo::cli::RunLearnerCommand({args.begin() + 1, args.end()});
  if (args[0] == "eval") return grpo::cli::RunEvalCommand({args.begin() + 1, args.end()});
  if (args[0] == "detokenize") {
    return grpo::cli::RunDetokenizeCommand({args.begin() + 1, args.end()});
  }
  std::fprintf(stderr, "grpo: unknown command '%s'\n\n%s", args[0].c_str(), kUsage);
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "grpo: error: out of memory; use a smaller model, batch or length\n");
    return 1;
  }
}
