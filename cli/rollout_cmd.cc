// `grpo rollout serve`: loads a model directory and serves it as a RolloutService
// (proto/rollout.proto, rollout/rollout_service.h) until SIGINT or SIGTERM. Prints
// "listening on HOST:PORT" on stdout once ready, so launchers can read the port (--port 0).
// `grpo rollout generate | push-weights | status`: a command-line client of a running server
// (rollout/rollout_client.h), for scripts and end-to-end tests.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "rollout/engine.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_service.h"

namespace grpo::cli {
namespace {

constexpr char kRolloutUsage[] =
    "usage: grpo rollout serve --model DIR [--port P] [--host 127.0.0.1] [--kv-budget-mb M]\n"
    "                          [--max-batch B] [--version V] [--device cpu|cuda|auto]\n"
    "       grpo rollout generate --address HOST:PORT --in PROMPTS.jsonl --out OUT.jsonl [...]\n"
    "       grpo rollout push-weights --address HOST:PORT --model DIR --version V\n"
    "       grpo rollout status --address HOST:PORT\n"
    "Run `grpo rollout <subcommand> --help` for its options.\n";

absl::Time Deadline(const Flags& f) {
  return absl::Now() + absl::Seconds(static_cast<double>(*f.GetInt("timeout-s")));
}

absl::Status Generate(const Flags& f) {
  SamplingParams sp;
  ASSIGN_OR_RETURN(int64_t g, f.GetInt("group-size"));
  ASSIGN_OR_RETURN(int64_t max_new, f.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(double temperature, f.GetDouble("temperature"));
  ASSIGN_OR_RETURN(double top_p, f.GetDouble("top-p"));
  ASSIGN_OR_RETURN(int64_t top_k, f.GetInt("top-k"));
  ASSIGN_OR_RETURN(int64_t seed, f.GetInt("seed"));
  ASSIGN_OR_RETURN(sp.deterministic, GetBoolFlag(f, "deterministic"));
  ASSIGN_OR_RETURN(sp.return_routing, GetBoolFlag(f, "routing"));
  // Ranges are the server's to check (its errors name the field); only fit them in int32 here.
  for (const int64_t v : {g, max_new, top_k}) {
    if (v < INT32_MIN || v > INT32_MAX) {
      return absl::InvalidArgumentError("--group-size, --max-new-tokens, --top-k: out of range");
    }
  }
  sp.group_size = static_cast<int32_t>(g);
  sp.max_new_tokens = static_cast<int32_t>(max_new);
  sp.temperature = static_cast<float>(temperature);
  sp.top_p = static_cast<float>(top_p);
  sp.top_k = static_cast<int32_t>(top_k);
  sp.seed = static_cast<uint64_t>(seed);
  if (!f.Get("stop-tokens").empty()) {
    for (absl::string_view t : absl::StrSplit(f.Get("stop-tokens"), ',')) {
      int id = 0;
      if (!absl::SimpleAtoi(t, &id)) {
        return absl::InvalidArgumentError("--stop-tokens must be comma-separated token ids");
      }
      sp.stop_token_ids.push_back(id);
    }
  }
  std::vector<RolloutPrompt> prompts;
  RETURN_IF_ERROR(
      ForEachJsonLine(f.Get("in"), [&](const nlohmann::json& j, int64_t) -> absl::Status {
        auto it = j.is_object() ? j.find("tokens") : j.end();
        if (!j.is_object() || it == j.end() || !it->is_array()) {
          return absl::InvalidArgumentError("expected an object {\"tokens\": [ids...]}");
        }
        RolloutPrompt p;
        p.prompt_id = prompts.size();
        if (j.contains("prompt_id")) {
          if (!j["prompt_id"].is_number_unsigned()) {
            return absl::InvalidArgumentError("\"prompt_id\" must be a non-negative integer");
          }
          p.prompt_id = j["prompt_id"].get<uint64_t>();
        }
        for (const auto& v : *it) {
          if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN ||
              v.get<int64_t>() > INT32_MAX) {
            return absl::InvalidArgumentError("\"tokens\" must hold integer ids");
          }
          p.token_ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
        }
        prompts.push_back(std::move(p));
        return absl::OkStatus();
      }));
  ASSIGN_OR_RETURN(auto client, RolloutClient::Connect(f.Get("address")));
  std::vector<nlohmann::json> lines(prompts.size());
  RETURN_IF_ERROR(client->Generate(prompts, sp, Deadline(f), [&](GroupResult&& g) {
    nlohmann::json completions = nlohmann::json::array();
    for (const Completion& c : g.completions) {
      nlohmann::json jc = {{"tokens", c.token_ids},
                           {"logprobs", c.logprobs},
                           {"finish_reason", FinishReasonName(c.finish_reason)},
                           {"weight_version", c.weight_version}};
      if (c.stop_token_id >= 0) jc["stop_token_id"] = c.stop_token_id;
      if (!c.stop_string.empty()) jc["stop_string"] = c.stop_string;
      if (!c.routing.expert_ids.empty()) {
        jc["routing"] = {{"num_moe_layers", c.routing.num_moe_layers},
                         {"num_tokens", c.routing.num_tokens},
                         {"top_k", c.routing.top_k},
                         {"expert_ids", c.routing.expert_ids}};
      }
      completions.push_back(std::move(jc));
    }
    lines[g.prompt_index] = {{"prompt_id", g.prompt_id}, {"completions", std::move(completions)}};
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(WriteJsonLines(f.Get("out"), lines));
  std::printf("wrote %s: %zu groups\n", f.Get("out").c_str(), lines.size());
  return absl::OkStatus();
}

absl::Status PushWeights(const Flags& f) {
  ASSIGN_OR_RETURN(int64_t version, f.GetInt("version"));
  ASSIGN_OR_RETURN(int64_t chunk_mb, f.GetInt("chunk-mb"));
  if (version < 1) return absl::InvalidArgumentError("--version must be >= 1");
  if (chunk_mb < 1 || chunk_mb > 64)
    return absl::InvalidArgumentError("--chunk-mb must be in [1, 64]");
  ASSIGN_OR_RETURN(auto model, LoadModel(f.Get("model")));
  ASSIGN_OR_RETURN(auto client, RolloutClient::Connect(f.Get("address")));
  RETURN_IF_ERROR(client->PushWeights(static_cast<uint64_t>(version), model->layout(),
                                      absl::MakeConstSpan(model->params(), model->num_params()),
                                      Deadline(f), chunk_mb << 20));
  std::printf("pushed %s as version %lld to %s\n", f.Get("model").c_str(),
              static_cast<long long>(version), f.Get("address").c_str());
  return absl::OkStatus();
}

absl::Status Status(const Flags& f) {
  ASSIGN_OR_RETURN(auto client, RolloutClient::Connect(f.Get("address")));
  ASSIGN_OR_RETURN(RolloutStatus s, client->GetStatus(Deadline(f)));
  const nlohmann::json j = {{"weight_version", s.weight_version},
                            {"staged_version", s.staged_version},
                            {"queued_sequences", s.queued_sequences},
                            {"running_sequences", s.running_sequences},
                            {"tokens_per_second", s.tokens_per_second},
                            {"total_tokens", s.total_tokens},
                            {"kv_bytes_budget", s.kv_bytes_budget},
                            {"kv_bytes_used", s.kv_bytes_used},
                            {"max_context", s.max_context},
                            {"model_type", s.model_type},
                            {"num_params", s.num_params},
                            {"vocab_size", s.vocab_size},
                            {"layout_fingerprint", s.layout_fingerprint},
                            {"device", s.device}};
  std::printf("%s\n", j.dump().c_str());
  return absl::OkStatus();
}

int Serve(const std::vector<std::string>& args) {
  Flags f(
      "grpo rollout serve --model DIR [--port P] [--host 127.0.0.1] [--kv-budget-mb M] "
      "[--max-batch B] [--version V] [--device cpu|cuda|auto]",
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
  f.Add("version", "weight version reported for the loaded weights", "0", false, Flags::Kind::kInt);
  // CPU by default: the learner runs there, and only the CPU engine's logprobs are bitwise the
  // learner's (deterministic requests); the GPU engine agrees to bf16 precision.
  f.Add("device",
        "cpu (fp32, batch-invariant: logprobs bitwise the CPU learner's), cuda (bf16 weights, "
        "K/V and GEMM inputs, fp32 accumulation; refuses deterministic requests; --kv-budget-mb "
        "is then GPU memory) or auto (cuda when a GPU is present)",
        "cpu");
  if (int code = ParseFlags(f, args); code >= 0) return code;
  const auto device = ResolveDevice(f.Get("device"));
  if (!device.ok()) return UsageError(device.status(), f);
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
  options.device = *device;
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
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "serve") return Serve(rest);
  if (args[0] == "generate") {
    Flags f(
        "grpo rollout generate --address HOST:PORT --in PROMPTS.jsonl --out OUT.jsonl",
        "Sends every line {\"tokens\": [ids...], \"prompt_id\": N (optional)} of PROMPTS.jsonl\n"
        "to a RolloutService in one Generate call and writes one line per prompt, in input\n"
        "order: {\"prompt_id\", \"completions\": [{\"tokens\", \"logprobs\", \"finish_reason\",\n"
        "\"weight_version\", ...}]}.");
    f.Add("address", "HOST:PORT of the server", "", true);
    f.Add("in", "prompts JSONL", "", true);
    f.Add("out", "output JSONL", "", true);
    f.Add("group-size", "completions per prompt (G)", "1", false, Flags::Kind::kInt);
    f.Add("max-new-tokens", "tokens per completion at most", "16", false, Flags::Kind::kInt);
    f.Add("temperature", "sampling temperature; 0 = greedy", "1", false, Flags::Kind::kNumber);
    f.Add("top-p", "nucleus probability in (0, 1]", "1", false, Flags::Kind::kNumber);
    f.Add("top-k", "keep the k most likely tokens; 0 = off", "0", false, Flags::Kind::kInt);
    f.Add("seed", "sampling seed", "0", false, Flags::Kind::kInt);
    f.Add("stop-tokens", "comma-separated token ids that end a completion", "");
    f.Add("deterministic", "batch-invariant prefill too: true or false", "false");
    f.Add("routing", "return routed experts: true or false", "false");
    f.Add("timeout-s", "deadline of the call, seconds", "600", false, Flags::Kind::kInt);
    return RunWithFlags(f, rest, Generate);
  }
  if (args[0] == "push-weights") {
    Flags f("grpo rollout push-weights --address HOST:PORT --model DIR --version V",
            "Streams the weights of checkpoint DIR (same config.json as the server's model) to a\n"
            "RolloutService as version V (greater than the server's); prints once the server has\n"
            "verified and staged them.");
    f.Add("address", "HOST:PORT of the server", "", true);
    f.Add("model", "checkpoint directory", "", true);
    f.Add("version", "new weight version", "", true, Flags::Kind::kInt);
    f.Add("chunk-mb", "chunk size, MiB", "4", false, Flags::Kind::kInt);
    f.Add("timeout-s", "deadline of the call, seconds", "600", false, Flags::Kind::kInt);
    return RunWithFlags(f, rest, PushWeights);
  }
  if (args[0] == "status") {
    Flags f("grpo rollout status --address HOST:PORT",
            "Prints a RolloutService's status as one JSON line.");
    f.Add("address", "HOST:PORT of the server", "", true);
    f.Add("timeout-s", "deadline of the call, seconds", "10", false, Flags::Kind::kInt);
    return RunWithFlags(f, rest, Status);
  }
  std::fprintf(stderr, "grpo: unknown rollout subcommand '%s'\n\n%s", args[0].c_str(),
               kRolloutUsage);
  return 2;
}

}  // namespace grpo::cli
