// `grpo model ...`: init, logprobs, generate, info. Thin wrappers over model/; every user error
// is one line on stderr naming the file, line or flag, and exit code 1 (2 for usage errors).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "model/cuda_model.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/params.h"

namespace grpo::cli {
namespace {

// Reads `{"tokens":[...]}` lines; blank lines are skipped. Errors name file and line.
absl::StatusOr<std::vector<std::vector<int32_t>>> ReadTokenLines(const std::string& path) {
  std::vector<std::vector<int32_t>> seqs;
  RETURN_IF_ERROR(ForEachJsonLine(path, [&](const nlohmann::json& j, int64_t) -> absl::Status {
    auto it = j.is_object() ? j.find("tokens") : j.end();
    if (!j.is_object() || it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("expected an object {\"tokens\": [ids...]}");
    }
    std::vector<int32_t> seq;
    for (const auto& v : *it) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError("\"tokens\" must hold non-negative integer ids");
      }
      seq.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    seqs.push_back(std::move(seq));
    return absl::OkStatus();
  }));
  return seqs;
}

absl::Status Init(const Flags& f) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(f.Get("config")));
  ASSIGN_OR_RETURN(int64_t seed, f.GetInt("seed"));
  ASSIGN_OR_RETURN(double std, f.GetDouble("init-std"));
  if (!(std > 0) || !std::isfinite(std)) {
    return absl::InvalidArgumentError("--init-std must be a positive finite number");
  }
  SaveOptions save;
  const std::string dtype = f.Get("dtype");
  if (dtype == "bf16") {
    save.dtype = Dtype::kBF16;
  } else if (dtype != "f32") {
    return absl::InvalidArgumentError("--dtype must be f32 or bf16");
  }
  ASSIGN_OR_RETURN(auto model, Model<float>::Create(config));
  InitParams(model->layout(), static_cast<uint64_t>(seed), static_cast<float>(std),
             model->params());
  RETURN_IF_ERROR(SaveModel(*model, f.Get("out"), save));
  std::printf("wrote %s: %s, %lld parameters\n", f.Get("out").c_str(), config.model_type.c_str(),
              static_cast<long long>(model->num_params()));
  return absl::OkStatus();
}

absl::Status Logprobs(const Flags& f) {
  ASSIGN_OR_RETURN(const Device device, ResolveDevice(f.Get("device")));
  ASSIGN_OR_RETURN(auto model, LoadModel(f.Get("model")));
  std::unique_ptr<CudaModel> gpu;  // --device cuda: the same weights on the GPU (bf16 GEMMs)
  if (device == Device::kCuda) {
    ASSIGN_OR_RETURN(gpu, CudaModel::Create(model->config(), {.master_weights = false}));
    RETURN_IF_ERROR(gpu->SetParams(absl::MakeConstSpan(model->params(), model->num_params())));
  }
  GRPO_LOG(INFO, "logprobs on %s", DeviceName(device));
  ASSIGN_OR_RETURN(auto seqs, ReadTokenLines(f.Get("tokens")));
  ASSIGN_OR_RETURN(double temperature, f.GetDouble("temperature"));
  ASSIGN_OR_RETURN(int64_t max_tokens, f.GetInt("max-batch-tokens"));
  ASSIGN_OR_RETURN(const bool entropy, GetBoolFlag(f, "entropy"));
  std::vector<nlohmann::json> lines(seqs.size());
  const auto start = std::chrono::steady_clock::now();
  int64_t total_tokens = 0;
  ForwardOptions opt;
  opt.temperature = static_cast<float>(temperature);
  for (size_t i = 0; i < seqs.size();) {
    TokenBatch batch;
    size_t j = i;
    while (j < seqs.size() && (j == i || batch.num_tokens() + static_cast<int64_t>(seqs[j].size()) <= max_tokens)) {
      batch.Add(seqs[j++]);
    }
    ForwardResult<float> r;
    total_tokens += batch.num_tokens();
    // A batch of empty sequences has nothing to score (each gets an empty list).
    absl::Status s = batch.num_tokens() == 0 ? absl::OkStatus()
                     : gpu != nullptr         ? gpu->Forward(batch, opt, &r)
                                              : model->Forward(batch, opt, &r);
    if (!s.ok()) return WithContext(s, absl::StrCat(f.Get("tokens"), ": sequences ", i + 1, "..", j));
    for (size_t b = 0; b < j - i; ++b) {
      const int64_t begin = batch.offsets[b], end = batch.offsets[b + 1];
      std::vector<float> lp, ent;
      for (int64_t p = begin; p + 1 < end; ++p) {
        lp.push_back(r.logprobs[p]);
        ent.push_back(r.entropy[p]);
      }
      lines[i + b] = {{"logprobs", lp}};
      if (entropy) lines[i + b]["entropy"] = ent;
    }
    i = j;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GRPO_LOG(INFO, "scored %d sequences (%d tokens) in %.3f s", static_cast<int>(seqs.size()),
           static_cast<int>(total_tokens), secs);
  return WriteJsonLines(f.Get("out"), lines);
}

absl::Status GenerateCmd(const Flags& f) {
  ASSIGN_OR_RETURN(auto model, LoadModel(f.Get("model")));
  ASSIGN_OR_RETURN(auto prompts, ReadTokenLines(f.Get("tokens")));
  GenerateOptions opt;
  ASSIGN_OR_RETURN(opt.max_new_tokens, f.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(double temperature, f.GetDouble("temperature"));
  ASSIGN_OR_RETURN(int64_t seed, f.GetInt("seed"));
  opt.temperature = static_cast<float>(temperature);
  opt.seed = static_cast<uint64_t>(seed);
  if (!f.Get("stop-token").empty()) {
    ASSIGN_OR_RETURN(int64_t stop, f.GetInt("stop-token"));
    if (stop < 0 || stop >= model->config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("--stop-token ", stop,
                                                     " is outside the vocabulary [0, ",
                                                     model->config().vocab_size, ")"));
    }
    opt.stop_tokens.push_back(static_cast<int32_t>(stop));
  }
  const auto start = std::chrono::steady_clock::now();
  auto out = Generate(*model, prompts, opt);
  if (!out.ok()) return WithContext(out.status(), f.Get("tokens"));
  int64_t generated = 0;
  for (const auto& gen : *out) generated += static_cast<int64_t>(gen.size());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GRPO_LOG(INFO, "generated %d tokens for %d prompts in %.3f s", static_cast<int>(generated),
           static_cast<int>(prompts.size()), secs);
  std::vector<nlohmann::json> lines;
  for (const auto& gen : *out) lines.push_back({{"tokens", gen}});
  return WriteJsonLines(f.Get("out"), lines);
}

absl::Status Info(const Flags& f) {
  ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(f.Get("model") + "/config.json"));
  std::printf("model_type %s\nlayers %lld (MoE %lld)\nhidden %lld, heads %lld/%lld x %lld\n"
              "experts %lld top-%lld, expert width %lld\nvocab %lld\nparameters %lld\n",
              c.model_type.c_str(), (long long)c.num_hidden_layers, (long long)c.NumMoeLayers(),
              (long long)c.hidden_size, (long long)c.num_attention_heads,
              (long long)c.num_key_value_heads, (long long)c.head_dim, (long long)c.num_experts,
              (long long)c.num_experts_per_tok, (long long)c.moe_intermediate_size,
              (long long)c.vocab_size, (long long)c.NumParameters());
  return absl::OkStatus();
}

constexpr char kModelUsage[] =
    "usage: grpo model <init|logprobs|generate|info> [options]\n"
    "Run `grpo model <subcommand> --help` for its options.\n";

}  // namespace

int RunModelCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kModelUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub == "init") {
    Flags f("grpo model init --config CONFIG.json --seed S --out DIR",
            "Creates a randomly initialized model in Hugging Face layout: DIR/config.json and "
            "DIR/model.safetensors.\nCONFIG.json is a HF config.json (model_type qwen3_moe, "
            "qwen2_moe, qwen3, qwen2 or llama).");
    f.Add("config", "HF config.json describing the architecture", "", true);
    f.Add("seed", "random seed for the initial weights", "0", false, Flags::Kind::kInt);
    f.Add("out", "output directory (created)", "", true);
    f.Add("init-std", "standard deviation of the normal init of linear/embedding weights", "0.02", false, Flags::Kind::kNumber);
    f.Add("dtype", "weight dtype to write: f32 or bf16", "f32");
    return RunWithFlags(f, rest, Init);
  }
  if (sub == "logprobs") {
    Flags f("grpo model logprobs --model DIR --tokens IN.jsonl --out OUT.jsonl",
            "For each input line {\"tokens\":[t0..tn]} writes {\"logprobs\":[lp1..lpn]} with\n"
            "lp_i = log p(t_i | t_<i) at the temperature (log-softmax of logits / T, fp32).");
    f.Add("model", "model directory (config.json + safetensors)", "", true);
    f.Add("tokens", "input JSONL, one {\"tokens\": [...]} per line", "", true);
    f.Add("out", "output JSONL", "", true);
    f.Add("temperature", "temperature T (> 0)", "1.0", false, Flags::Kind::kNumber);
    f.Add("entropy", "also write \"entropy\" per position: true or false", "false");
    f.Add("max-batch-tokens", "tokens per forward batch", "8192", false, Flags::Kind::kInt);
    f.Add("device",
          "auto (CUDA when a GPU is present, else CPU), cpu (fp32) or cuda (bf16 weights and "
          "GEMM inputs, fp32 accumulation)",
          "auto");
    return RunWithFlags(f, rest, Logprobs);
  }
  if (sub == "generate") {
    Flags f("grpo model generate --model DIR --tokens IN.jsonl --max-new-tokens N --out OUT.jsonl",
            "For each prompt line {\"tokens\":[...]} writes {\"tokens\":[generated...]} (the "
            "continuation only).\nTemperature 0 is greedy; otherwise sampling is seeded per "
            "line, so results do not depend on batching.");
    f.Add("model", "model directory (config.json + safetensors)", "", true);
    f.Add("tokens", "input JSONL of prompts", "", true);
    f.Add("out", "output JSONL", "", true);
    f.Add("max-new-tokens", "tokens to generate per prompt", "", true, Flags::Kind::kInt);
    f.Add("temperature", "sampling temperature; 0 = greedy", "0", false, Flags::Kind::kNumber);
    f.Add("seed", "sampling seed", "0", false, Flags::Kind::kInt);
    f.Add("stop-token", "token id that ends a sequence (kept in the output)", "", false, Flags::Kind::kInt);
    return RunWithFlags(f, rest, GenerateCmd);
  }
  if (sub == "info") {
    Flags f("grpo model info --model DIR", "Prints a model's architecture and parameter count.");
    f.Add("model", "model directory", "", true);
    return RunWithFlags(f, rest, Info);
  }
  std::fprintf(stderr, "grpo model: unknown subcommand '%s'\n%s", sub.c_str(), kModelUsage);
  return 2;
}

}  // namespace grpo::cli
