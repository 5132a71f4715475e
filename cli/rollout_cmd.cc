// `grpo rollout serve`: loads a model directory and serves it as a RolloutService
// (proto/rollout.proto, rollout/rollout_service.h) until SIGINT or SIGTERM. Prints
// "listening on HOST:PORT" on stdout once ready, so launchers can read the port (--port 0).
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "rollout/engine.h"
#include "rollout/rollout_service.h"

namespace grpo::cli {
namespace {

constexpr char kRolloutUsage[] =
    "usage: grpo rollout serve --model DIR [--port P] [--host 127.0.0.1] [--kv-budget-mb M]\n"
    "                          [--max-batch B] [--version V]\n"
    "Run `grpo rollout serve --help` for its options.\n";

int Serve(const std::vector<std::string>& args) {
  Flags f("grpo rollout serve --model DIR [--port P] [--host 127.0.0.1] [--kv-budget-mb M] "
          "[--max-batch B] [--version V]",
          "Serves a model as a RolloutService (proto/rollout.proto): Generate (G completions per\n"
          "prompt, streamed per group, continuous batching), UpdateWeights (streamed, verified,\n"
          "swapped between sequences) and GetStatus. DIR is a Hugging Face checkpoint directory\n"
          "(config.json + safetensors); its tokenizer.json, when present, enables stop strings.\n"
          "Prints \"listening on HOST:PORT\" once ready; --port 0 picks a free port. Binds to\n"
          "loopback unless --host says otherwise. SIGINT/SIGTERM: running sequences end with\n"
          "finish reason abort, their groups are sent, waiting requests fail with UNAVAILABLE.");
  f.Add("model", "model directory (config.json + *.safetensors [+ tokenizer.json])", "", true);
  f.Add("port", "TCP port (0 = any free port)", "0", false, Flags::Kind::kInt);
  f.Add("host", "address to bind", "127.0.0.1");
  f.Add("kv-budget-mb", "KV cache pool for all running sequences, MiB", "256", false,
        Flags::Kind::kInt);
  f.Add("max-batch", "most sequences decoded together", "64", false, Flags::Kind::kInt);
  f.Add("version", "weight version reported for the loaded weights", "0", false,
        Flags::Kind::kInt);
  if (int code = ParseFlags(f, args); code >= 0) return code;
  const int64_t port = *f.GetInt("port"), budget_mb = *f.GetInt("kv-budget-mb"),
                max_batch = *f.GetInt("max-batch"), version = *f.GetInt("version");
  if (port < 0 || port > 65535) {
    return UsageError(absl::InvalidArgumentError("--port must be in [0, 65535]"), f);
  }
  if (budget_mb < 1 || budget_mb > (int64_t{1} << 24)) {
    return UsageError(absl::InvalidArgumentError("--kv-budget-mb must be in [1, 16777216]"), f);
  }
  if (max_batch < 1 || max_batch > 65536) {
    return UsageError(absl::InvalidArgumentError("--max-batch must be in [1, 65536]"), f);
  }
  if (version < 0) return UsageError(absl::InvalidArgumentError("--version must be >= 0"), f);
  const std::string dir = f.Get("model");
  auto model = LoadModel(dir);
  if (!model.ok()) return Fail(model.status());
  std::unique_ptr<Tokenizer> tokenizer;
  const std::string tok_path = dir + "/tokenizer.json";
  if (std::filesystem::exists(tok_path)) {
    auto tok = Tokenizer::FromFile(tok_path);
    if (!tok.ok()) return Fail(tok.status());
    tokenizer = std::move(*tok);
  }
  EngineOptions options;
  options.kv_budget_bytes = budget_mb << 20;
  options.max_batch = max_batch;
  options.initial_version = static_cast<uint64_t>(version);
  // Block the stop signals before any thread starts (they inherit the mask), then wait for one
  // here: shutdown runs on this thread.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  auto engine = Engine::Create(std::move(*model), std::move(tokenizer), options);
  if (!engine.ok()) return UsageError(engine.status(), f);
  RolloutServiceImpl service(engine->get());
  int selected_port = 0;
  auto server = StartRolloutServer(&service, f.Get("host"), static_cast<int>(port), &selected_port);
  if (!server.ok()) return Fail(server.status());
  std::printf("listening on %s:%d\n", f.Get("host").c_str(), selected_port);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);  // a second signal ends the process at once
  std::fprintf(stderr, "grpo: rollout serve: got signal %d, shutting down\n", sig);
  // Engine first: running sequences end (abort) and their handlers return promptly.
  (*engine)->Shutdown();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  (*server)->Wait();
  return 0;
}

}  // namespace

int RunRolloutCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kRolloutUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "serve") return Serve({args.begin() + 1, args.end()});
  std::fprintf(stderr, "grpo: unknown rollout subcommand '%s'\n\n%s", args[0].c_str(),
               kRolloutUsage);
  return 2;
}

}  // namespace grpo::cli
