// `grpo sft CONFIG [--set key=value]...`: supervised next-token training on prompt + response
// text (learner/sft.h), the warm start of an R1-Zero-style run.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/json_config.h"
#include "common/json_util.h"
#include "common/status.h"
#include "learner/sft.h"

namespace grpo::cli {
namespace {

constexpr char kSftUsage[] =
    "usage: grpo sft CONFIG.json [--set key.sub=value]... | grpo sft --print-defaults\n"
    "\n"
    "Supervised fine-tuning on prompt + response text: the response tokens' mean negative\n"
    "log-likelihood, AdamW. Examples come from a JSONL file of {\"prompt\", \"response\"} or from a\n"
    "task generator (arith, countdown) with an optional share of deliberately wrong answers.\n"
    "Writes the trained model to output_dir as an HF directory (config.json, safetensors,\n"
    "tokenizer.json).\n"
    "\n"
    "  --set key.sub=value  override one config key (repeatable); value is JSON or a string\n"
    "  --print-defaults     print every key with its default and exit\n";

}  // namespace

int RunSftCommand(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> sets;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kSftUsage, stdout);
      return 0;
    }
    if (a == "--print-defaults") {
      std::printf("%s\n", DefaultSftConfigJson().dump(2).c_str());
      return 0;
    }
    if (a == "--set") {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "grpo sft: --set needs key.sub=value\n\n%s", kSftUsage);
        return 2;
      }
      sets.push_back(args[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else if (a.rfind("--", 0) == 0 || !config_path.empty()) {
      std::fprintf(stderr, "grpo sft: unexpected argument '%s'\n\n%s", a.c_str(), kSftUsage);
      return 2;
    } else {
      config_path = a;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "grpo sft: CONFIG.json is required\n\n%s", kSftUsage);
    return 2;
  }
  auto j = ReadJsonFile(config_path);
  if (!j.ok()) return Fail(j.status());
  for (const auto& s : sets) {
    if (auto st = SetDottedKey(s, &*j); !st.ok()) return Fail(st);
  }
  auto config = SftConfigFromJson(*j, config_path);
  if (!config.ok()) return Fail(config.status());
  auto result = RunSft(*config, [](const SftProgress& p) {
    std::printf("sft step %lld  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s\n",
                static_cast<long long>(p.step), p.loss, p.lr, p.grad_norm,
                p.seconds > 0 ? static_cast<double>(p.tokens) / p.seconds : 0.0);
    std::fflush(stdout);
  });
  if (!result.ok()) return Fail(result.status());
  std::printf("sft done: loss %.4f -> %.4f, %lld tokens in %.1f s; model written to %s\n",
              result->first_loss, result->last_loss, static_cast<long long>(result->tokens),
              result->seconds, config->output_dir.c_str());
  return 0;
}

}  // namespace grpo::cli
