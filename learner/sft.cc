// Supervised fine-tuning: data, config and the training loop (see sft.h).
#include "learner/sft.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/json_config.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status.h"
#include "learner/dataset.h"
#include "learner/device_model.h"
#include "learner/random.h"
#include "learner/tasks.h"
#include "model/checkpoint.h"
#include "model/tokenizer.h"

namespace grpo {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json MakeDefaults() {
  // clang-format off
  return json{
    {"model", ""},                 // HF directory to start from (required)
    {"tokenizer", ""},             // "" = <model>/tokenizer.json
    {"output_dir", ""},            // the trained model as an HF directory (required)
    {"chat_template", json::object()},  // ChatTemplateConfig, as in the learner config
    {"eos", "<|endoftext|>"},      // appended to every response; "" = nothing
    {"data", {
      {"path", ""},                // JSONL {"prompt", "response"}; "" = generate `task`
      {"task", "arith"},           // arith | countdown
      {"n", 4096},
      {"seed", 1},
      {"digits", 2},               // arith operand digits
      {"ops", "+"},                // arith operators
      {"wrong_fraction", 0.0},     // share of generated answers made wrong on purpose
      {"response_format", "<think>{expression}</think><answer>{answer}</answer>"},
      {"exclude_prompts_of", ""},  // a dataset whose prompts are left out (held-out set)
    }},
    {"steps", 500},
    {"batch_size", 32},
    {"seed", 0},
    {"optimizer", {
      {"lr", 1e-3}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8}, {"weight_decay", 0.0},
      {"max_grad_norm", 1.0}, {"schedule", "cosine"}, {"warmup_steps", 20},
      {"warmup_init_ratio", 0.0}, {"min_lr_ratio", 0.1}, {"num_cycles", 0.5},
      {"weight_dtype", "fp32"},
    }},
    {"log_every", 50},
    {"device", "cpu"},  // forward/backward: cpu | cuda | auto (learner/device_model.h)
  };
  // clang-format on
}

// Replaces every {name} of `format` (a fixed set; others stay as written).
std::string Fill(const std::string& format, const std::string& question,
                 const std::string& expression, const std::string& answer) {
  return absl::StrReplaceAll(
      format, {{"{question}", question}, {"{expression}", expression}, {"{answer}", answer}});
}

}  // namespace

const json& DefaultSftConfigJson() {
  static const json* defaults = new json(MakeDefaults());
  return *defaults;
}

absl::Status SftConfig::Validate() const {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (model.empty()) return bad("model is required (an HF model directory)");
  if (output_dir.empty()) return bad("output_dir is required");
  if (data.path.empty() && data.task != "arith" && data.task != "countdown") {
    return bad(absl::StrCat("data.task \"", data.task,
                            "\" is unknown; expected arith or countdown (or set data.path)"));
  }
  if (data.n < 1 || data.n > 10'000'000) return bad("data.n must be in [1, 10000000]");
  if (!(data.wrong_fraction >= 0 && data.wrong_fraction <= 1)) {
    return bad("data.wrong_fraction must be in [0, 1]");
  }
  if (steps < 1 || steps > 100'000'000) return bad("steps must be in [1, 100000000]");
  if (batch_size < 1 || batch_size > 65536) return bad("batch_size must be in [1, 65536]");
  if (log_every < 1) return bad("log_every must be >= 1");
  if (device != "cpu" && device != "cuda" && device != "auto") {
    return bad(absl::StrCat("device \"", device, "\" is not one of cpu, cuda, auto"));
  }
  RETURN_IF_ERROR(WithContext(optimizer.Validate(), "optimizer"));
  return chat_template.Validate();
}

absl::StatusOr<SftConfig> SftConfigFromJson(const json& user, const std::string& source) {
  json merged = DefaultSftConfigJson();
  RETURN_IF_ERROR(WithContext(
      MergeOverDefaults(user, &merged, [](const std::string& k) { return k == "chat_template"; }),
      source));
  ConfigReader r{merged};
  SftConfig c;
  c.model = r.Str("model");
  c.tokenizer = r.Str("tokenizer");
  c.output_dir = r.Str("output_dir");
  c.eos = r.Str("eos");
  c.data.path = r.Str("data.path");
  c.data.task = r.Str("data.task");
  c.data.n = r.Int("data.n");
  c.data.seed = static_cast<uint64_t>(r.Int("data.seed"));
  c.data.digits = r.Int("data.digits");
  c.data.ops = r.Str("data.ops");
  c.data.wrong_fraction = r.Double("data.wrong_fraction");
  c.data.response_format = r.Str("data.response_format");
  c.data.exclude_prompts_of = r.Str("data.exclude_prompts_of");
  c.steps = r.Int("steps");
  c.batch_size = r.Int("batch_size");
  c.seed = static_cast<uint64_t>(r.Int("seed"));
  c.optimizer = ReadOptimizerConfig(r, "optimizer");
  c.log_every = r.Int("log_every");
  c.device = r.Str("device");
  RETURN_IF_ERROR(WithContext(r.status, source));
  auto tmpl = ChatTemplateConfigFromJson(merged["chat_template"]);
  if (!tmpl.ok()) return WithContext(tmpl.status(), absl::StrCat(source, ": chat_template"));
  c.chat_template = *tmpl;
  RETURN_IF_ERROR(WithContext(c.Validate(), source));
  return c;
}

absl::StatusOr<std::vector<SftExample>> MakeSftExamples(const SftDataConfig& config) {
  std::vector<SftExample> out;
  if (!config.path.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(config.path));
    int64_t line_no = 0;
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(start, end - start);
      start = end + 1;
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = absl::StrCat(config.path, ":", line_no);
      auto j = ParseJson(line);
      if (!j.ok()) return WithContext(j.status(), where);
      if (!j->is_object() || !(*j)["prompt"].is_string() || !(*j)["response"].is_string() ||
          j->size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": expected {\"prompt\": string, \"response\": string} and nothing else"));
      }
      out.push_back({(*j)["prompt"].get<std::string>(), (*j)["response"].get<std::string>()});
    }
    if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(config.path, ": no examples"));
    return out;
  }
  std::set<std::string> excluded;
  if (!config.exclude_prompts_of.empty()) {
    DatasetConfig dc;
    dc.path = config.exclude_prompts_of;
    dc.shuffle = false;
    ASSIGN_OR_RETURN(Dataset held_out, Dataset::Load(dc));
    for (int64_t i = 0; i < held_out.size(); ++i) {
      const Prompt& p = held_out.row(i).prompt;
      if (p.is_text()) excluded.insert(p.text());
    }
  }
  SplitMix64 rng(config.seed, 0x5f7);  // which examples are made wrong, and how
  if (config.task == "arith") {
    ArithConfig ac;
    ac.n = config.n;
    ac.seed = config.seed;
    ac.digits = config.digits;
    ac.ops = config.ops;
    ASSIGN_OR_RETURN(auto problems, GenerateArith(ac));
    for (const ArithProblem& p : problems) {
      const std::string question = ArithQuestion(p);
      if (excluded.count(question)) continue;
      int64_t answer = p.answer;
      if (static_cast<double>(rng.Below(1'000'000)) < config.wrong_fraction * 1e6) {
        const int64_t off = rng.Uniform(1, 10);
        answer += rng.Below(2) ? off : -off;
      }
      const std::string expression = absl::StrCat(p.a, std::string(1, p.op), p.b);
      out.push_back({question, Fill(config.response_format, question, expression,
                                    absl::StrCat(answer))});
    }
  } else {
    CountdownConfig cc;
    cc.n = config.n;
    cc.seed = config.seed;
    ASSIGN_OR_RETURN(auto problems, GenerateCountdown(cc));
    for (size_t i = 0; i < problems.size(); ++i) {
      const CountdownProblem& p = problems[i];
      const std::string question = CountdownQuestion(p.numbers, p.target);
      if (excluded.count(question)) continue;
      std::string solution = p.solution;
      if (problems.size() > 1 &&
          static_cast<double>(rng.Below(1'000'000)) < config.wrong_fraction * 1e6) {
        solution = problems[(i + 1 + rng.Below(problems.size() - 1)) % problems.size()].solution;
      }
      out.push_back({question, Fill(config.response_format, question, solution, solution)});
    }
  }
  if (out.empty()) {
    return absl::InvalidArgumentError("no SFT examples left after excluding the held-out prompts");
  }
  return out;
}

absl::StatusOr<SftResult> RunSft(const SftConfig& config,
                                 const std::function<void(const SftProgress&)>& on_progress) {
  RETURN_IF_ERROR(config.Validate());
  const auto t0 = std::chrono::steady_clock::now();
  const std::string tok_path =
      config.tokenizer.empty() ? (fs::path(config.model) / "tokenizer.json").string()
                               : config.tokenizer;
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(tok_path));
  ASSIGN_OR_RETURN(auto tmpl, ChatTemplate::Create(config.chat_template));
  ASSIGN_OR_RETURN(auto model, LoadModel(config.model));
  std::optional<int32_t> eos;
  if (!config.eos.empty()) {
    eos = tokenizer->TokenToId(config.eos);
    if (!eos) {
      return absl::InvalidArgumentError(
          absl::StrCat("eos \"", config.eos, "\" is not a token of ", tok_path));
    }
  }
  ASSIGN_OR_RETURN(auto examples, MakeSftExamples(config.data));

  // Tokenize once: prompt ids (rendered) + response ids (+ EOS); remember the split.
  struct Seq {
    std::vector<int32_t> ids;
    int64_t prompt_len = 0;
  };
  std::vector<Seq> seqs;
  seqs.reserve(examples.size());
  const int64_t max_len = model->config().max_position_embeddings;
  for (size_t i = 0; i < examples.size(); ++i) {
    ASSIGN_OR_RETURN(std::string rendered, tmpl.Render(Prompt(examples[i].prompt)));
    ASSIGN_OR_RETURN(auto p, tokenizer->Encode(rendered, /*add_special_tokens=*/false));
    ASSIGN_OR_RETURN(auto r, tokenizer->Encode(examples[i].response, false));
    if (eos) r.push_back(*eos);
    if (p.empty() || r.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("SFT example ", i + 1, ": empty prompt or response"));
    }
    Seq s;
    s.prompt_len = static_cast<int64_t>(p.size());
    s.ids = std::move(p);
    s.ids.insert(s.ids.end(), r.begin(), r.end());
    if (static_cast<int64_t>(s.ids.size()) > max_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SFT example ", i + 1, " has ", s.ids.size(),
          " tokens, more than the model's max_position_embeddings ", max_len));
    }
    seqs.push_back(std::move(s));
  }

  AdamW optimizer(model->num_params(), config.optimizer);
  optimizer.BindWeights(model->params());
  ASSIGN_OR_RETURN(const Device device, ResolveConfigDevice(config.device, "sft 'device'"));
  ASSIGN_OR_RETURN(std::unique_ptr<DeviceModel> dev, DeviceModel::Create(model.get(), device));
  GRPO_LOG(INFO, "sft forward/backward on %s", DeviceName(device));
  SplitMix64 rng(config.seed, 0x5f7a);
  SftResult result;
  int64_t tokens = 0;
  double window_sum = 0;
  int64_t window_n = 0;
  std::vector<double> first_losses;
  ForwardOptions fo;
  fo.temperature = 1.0f;
  fo.for_backward = true;
  for (int64_t step = 0; step < config.steps; ++step) {
    TokenBatch batch;
    std::vector<float> dlogprobs;
    int64_t response_tokens = 0;
    std::vector<std::pair<int64_t, int64_t>> spans;  // (first position, count) per sequence
    for (int64_t b = 0; b < config.batch_size; ++b) {
      const Seq& s = seqs[rng.Below(seqs.size())];
      const int64_t base = batch.num_tokens();
      batch.Add(s.ids);
      // Position p holds log p(token p+1): the response tokens are predicted at positions
      // prompt_len - 1 .. len - 2 of the sequence.
      spans.push_back({base + s.prompt_len - 1, static_cast<int64_t>(s.ids.size()) - s.prompt_len});
      response_tokens += static_cast<int64_t>(s.ids.size()) - s.prompt_len;
    }
    ForwardResult<float> fr;
    RETURN_IF_ERROR(dev->Forward(batch, fo, &fr));
    dlogprobs.assign(batch.num_tokens(), 0.0f);
    double nll = 0;
    const float scale = -1.0f / static_cast<float>(response_tokens);
    for (const auto& [first, count] : spans) {
      for (int64_t p = first; p < first + count; ++p) {
        nll -= fr.logprobs[p];
        dlogprobs[p] = scale;
      }
    }
    const double loss = nll / static_cast<double>(response_tokens);
    RETURN_IF_ERROR(dev->ZeroGrads());
    RETURN_IF_ERROR(dev->Backward(dlogprobs, {}));
    RETURN_IF_ERROR(dev->FetchGrads());
    const double lr = LearningRate(config.optimizer, step, config.steps);
    const OptimizerStepResult os = optimizer.Step(model->params(), model->grads(), lr);
    dev->ParamsChanged();
    tokens += batch.num_tokens();
    window_sum += loss;
    ++window_n;
    if (static_cast<int64_t>(first_losses.size()) < config.log_every) first_losses.push_back(loss);
    const bool last = step + 1 == config.steps;
    if ((step + 1) % config.log_every == 0 || last) {
      result.last_loss = window_sum / static_cast<double>(window_n);
      if (on_progress) {
        SftProgress pr;
        pr.step = step + 1;
        pr.loss = result.last_loss;
        pr.lr = lr;
        pr.grad_norm = os.grad_norm;
        pr.tokens = tokens;
        pr.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        on_progress(pr);
      }
      window_sum = 0;
      window_n = 0;
    }
  }
  for (double l : first_losses) result.first_loss += l / static_cast<double>(first_losses.size());
  result.tokens = tokens;

  // Write atomically: a temporary sibling directory, renamed over the target at the end.
  const fs::path out(config.output_dir);
  const fs::path tmp = out.string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  // bf16 weights (optimizer.weight_dtype) are bf16 values: written as bf16, losslessly.
  SaveOptions save;
  if (optimizer.bf16_weights()) save.dtype = Dtype::kBF16;
  RETURN_IF_ERROR(SaveModel(*model, tmp.string(), save));
  fs::copy_file(tok_path, tmp / "tokenizer.json", fs::copy_options::overwrite_existing, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("copy ", tok_path, " into ", tmp.string(), ": ", ec.message()));
  }
  fs::remove_all(out, ec);
  fs::rename(tmp, out, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("rename ", tmp.string(), " to ", out.string(), ": ", ec.message()));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace grpo
