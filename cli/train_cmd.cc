// `grpo train CONFIG [--set key=value]... [--out DIR] [--resume]`: the one-command R1-Zero-style
// run. Stages, each a child process of this one (so Ctrl-C stops exactly the one running):
//   1. data: the task's train and held-out eval sets (eval prompts are left out of train);
//   2. model: a freshly initialized one (model.init) or an HF directory (model.path);
//   3. sft (optional): supervised warm start (`grpo sft`);
//   4. base eval (`grpo eval`) on the held-out set;
//   5. services on loopback, ports picked by the services themselves: a reward service
//      (`grpo reward serve`) and N rollout workers (`grpo rollout serve`);
//   6. GRPO (`grpo learner`) against them; its progress line streams to this console;
//   7. final eval of the last checkpoint, summary.json, and metrics.svg (`grpo plot`).
// Everything lands in the output directory: config.json (the config as run), data/, init/,
// sft/, learner.json, metrics.jsonl, TensorBoard events, samples.jsonl, checkpoints/, logs/.
// On exit, error or Ctrl-C every child is stopped (SIGTERM, then SIGKILL after a grace period).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/json_config.h"
#include "common/json_util.h"
#include "common/process.h"
#include "common/status.h"
#include "learner/checkpoint.h"
#include "learner/config.h"
#include "learner/sft.h"
#include "learner/tasks.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "reward/reward_set.h"

namespace grpo::cli {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr char kTrainUsage[] =
    "usage: grpo train CONFIG.json [--set key.sub=value]... [--out DIR] [--resume | --overwrite]\n"
    "\n"
    "The one-command R1-Zero-style run: makes the task data, initializes (or loads) the model,\n"
    "runs the SFT warm start, evaluates the base on the held-out set, starts a reward service and\n"
    "rollout workers on loopback, trains with GRPO, evaluates the result and draws metrics.svg.\n"
    "Ctrl-C stops every process it started; --resume continues an interrupted run (finished\n"
    "stages are kept, GRPO resumes from its newest checkpoint).\n"
    "\n"
    "  --set key.sub=value  override one config key (repeatable); value is JSON or a string\n"
    "  --out DIR            output directory (default: the config's output_dir)\n"
    "  --resume             keep finished stages and continue GRPO from its newest checkpoint\n"
    "  --overwrite          replace a run already in the output directory\n"
    "  --check              validate the config through every stage's parser; start nothing\n"
    "  --print-defaults     print the train config keys with their defaults and exit\n"
    "\n"
    "Shipped configs: configs/train/tiny.json (CPU, minutes), configs/train/qwen3_moe_math.json\n"
    "(a real Qwen3-MoE checkpoint on GPUs).\n";

json Defaults() {
  // clang-format off
  return json{
    {"output_dir", "runs/train"},
    {"tokenizer", ""},           // tokenizer.json; "" = the model directory's
    {"model", {
      {"path", ""},              // an HF model directory to start from, or
      {"init", ""},              // an HF config.json to initialize a fresh model from
      {"init_seed", 1},
      {"init_std", 0.02},
    }},
    {"data", {
      {"train_path", ""},        // JSONL prompt datasets (learner/dataset.h rows), or
      {"eval_path", ""},
      {"task", "arith"},         // generate them: arith | countdown
      {"digits", 2},             // arith operand digits
      {"ops", "+"},              // arith operators
      {"train_size", 20000},
      {"eval_size", 200},
      {"seed", 1},
    }},
    {"chat_template", json::object()},  // shared by SFT, rollout and eval
    {"stop_tokens", json::array({"<|endoftext|>"})},
    {"reward", json::object()},  // a reward config (reward/reward_set.h), served by the reward service
    {"sft", nullptr},            // a `grpo sft` config without model/tokenizer/output_dir; null = skip
    {"learner", json::object()}, // a `grpo learner` config without model/tokenizer/output_dir/data.path
    {"services", {
      {"rollout_workers", 1},    // `grpo rollout serve` processes
      {"rollout_device", "cpu"},  // their --device: cpu | cuda | auto (cuda when a GPU is present)
      {"reward_service", true},  // score through a `grpo reward serve` process (else in the learner)
      {"threads_per_service", 0},  // OMP_NUM_THREADS of each child; 0 = inherit
      {"startup_timeout_s", 120},
    }},
    {"eval", {
      {"samples", 1},
      {"temperature", 0.0},
      {"max_new_tokens", 32},
      {"threshold", 1.0},
      {"seed", 0},
      {"device", "cpu"},  // `grpo eval --device`: cpu | cuda | auto
    }},
  };
  // clang-format on
}

// Subtrees other parsers own (checked by --check and at run time).
bool TrainPassThrough(const std::string& key) {
  return key == "chat_template" || key == "reward" || key == "sft" || key == "learner";
}

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

std::string SelfExe() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("grpo") : p.string();
}

class Run {
 public:
  Run(json config, std::string out, bool resume, bool overwrite)
      : c_(std::move(config)),
        out_(std::move(out)),
        resume_(resume),
        overwrite_(overwrite),
        exe_(SelfExe()) {}
  ~Run() { StopAll(); }

  absl::Status Go();

 private:
  std::string Path(const std::string& rel) const { return (fs::path(out_) / rel).string(); }
  void Say(const std::string& msg) {
    std::printf("[train] %s\n", msg.c_str());
    std::fflush(stdout);
  }
  absl::Status CheckSignal() {
    if (int sig = g_signal.load()) {
      return absl::CancelledError(absl::StrCat("stopped by signal ", sig));
    }
    return absl::OkStatus();
  }
  // Runs a stage to completion with output on this console (and in logs/NAME.log when quiet).
  absl::Status RunStage(const std::string& name, const std::vector<std::string>& argv,
                        bool quiet = false);
  absl::Status MakeData();
  absl::Status MakeModel();
  absl::StatusOr<json> Eval(const std::string& model_dir, const std::string& tag);
  absl::Status StartServices();
  void StopAll();

  json c_;
  std::string out_;
  bool resume_;
  bool overwrite_;
  std::string exe_;
  std::string tokenizer_, train_path_, eval_path_, model_dir_;
  std::unique_ptr<ChildProcess> reward_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::vector<std::string> worker_addresses_;
  std::string reward_address_;
};

void Run::StopAll() {
  for (auto& w : workers_) w->Stop(milliseconds(5000));
  workers_.clear();
  if (reward_) reward_->Stop(milliseconds(5000));
  reward_.reset();
}

absl::Status Run::RunStage(const std::string& name, const std::vector<std::string>& argv,
                           bool quiet) {
  RETURN_IF_ERROR(CheckSignal());
  ASSIGN_OR_RETURN(auto child,
                   ChildProcess::Spawn(name, argv, quiet ? Path("logs/" + name + ".log") : ""));
  while (child->Running()) {
    if (g_signal.load()) {
      child->Stop(milliseconds(10000));
      return CheckSignal();
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  if (child->exit_code() != 0) {
    return absl::InternalError(absl::StrCat(
        name, " failed (exit code ", child->exit_code(), ")",
        quiet ? absl::StrCat("; its log ", child->log_path(), " ends:\n", child->LogTail(15)) : ""));
  }
  return absl::OkStatus();
}

absl::Status Run::MakeData() {
  const json& d = c_["data"];
  train_path_ = d["train_path"].get<std::string>();
  eval_path_ = d["eval_path"].get<std::string>();
  if (!train_path_.empty()) {
    if (eval_path_.empty()) {
      return absl::InvalidArgumentError("data.eval_path is required when data.train_path is set");
    }
    return absl::OkStatus();
  }
  train_path_ = Path("data/train.jsonl");
  eval_path_ = Path("data/eval.jsonl");
  if (resume_ && fs::exists(train_path_) && fs::exists(eval_path_)) return absl::OkStatus();
  const std::string task = d["task"].get<std::string>();
  const int64_t train_n = d["train_size"].get<int64_t>(), eval_n = d["eval_size"].get<int64_t>();
  const uint64_t seed = d["seed"].get<uint64_t>();
  if (train_n < 1 || eval_n < 1) {
    return absl::InvalidArgumentError("data.train_size and data.eval_size must be >= 1");
  }
  std::vector<json> train, eval;
  std::set<std::string> held_out;
  if (task == "arith") {
    ArithConfig ac;
    ac.digits = d["digits"].get<int64_t>();
    ac.ops = d["ops"].get<std::string>();
    ac.n = eval_n;
    ac.seed = seed * 2 + 1;
    ASSIGN_OR_RETURN(auto ev, GenerateArith(ac));
    for (const auto& p : ev) {
      json row = ArithRow(p);
      if (held_out.insert(row["prompt"].get<std::string>()).second) eval.push_back(row);
    }
    ac.n = train_n;
    ac.seed = seed * 2;
    ASSIGN_OR_RETURN(auto tr, GenerateArith(ac));
    for (const auto& p : tr) {
      json row = ArithRow(p);
      if (!held_out.count(row["prompt"].get<std::string>())) train.push_back(row);
    }
  } else if (task == "countdown") {
    CountdownConfig cc;
    cc.n = eval_n;
    cc.seed = seed * 2 + 1;
    ASSIGN_OR_RETURN(auto ev, GenerateCountdown(cc));
    for (const auto& p : ev) {
      json row = CountdownRow(p);
      if (held_out.insert(row["prompt"].get<std::string>()).second) eval.push_back(row);
    }
    cc.n = train_n;
    cc.seed = seed * 2;
    ASSIGN_OR_RETURN(auto tr, GenerateCountdown(cc));
    for (const auto& p : tr) {
      json row = CountdownRow(p);
      if (!held_out.count(row["prompt"].get<std::string>())) train.push_back(row);
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("data.task \"", task, "\" is unknown; expected arith or countdown, or set "
                     "data.train_path and data.eval_path"));
  }
  if (train.empty()) {
    return absl::InvalidArgumentError("every generated training problem is in the held-out set; "
                                      "raise data.digits or lower data.eval_size");
  }
  RETURN_IF_ERROR(WriteJsonLines(train_path_, train));
  RETURN_IF_ERROR(WriteJsonLines(eval_path_, eval));
  Say(absl::StrCat("data: ", train.size(), " training and ", eval.size(),
                   " held-out problems (", task, ") in ", Path("data")));
  return absl::OkStatus();
}

absl::Status Run::MakeModel() {
  const json& m = c_["model"];
  const std::string path = m["path"].get<std::string>(), init = m["init"].get<std::string>();
  if (path.empty() == init.empty()) {
    return absl::InvalidArgumentError("set exactly one of model.path (an HF directory) and "
                                      "model.init (a config.json to initialize from)");
  }
  tokenizer_ = c_["tokenizer"].get<std::string>();
  if (!path.empty()) {
    model_dir_ = path;
    if (tokenizer_.empty()) tokenizer_ = (fs::path(path) / "tokenizer.json").string();
    return absl::OkStatus();
  }
  if (tokenizer_.empty()) {
    return absl::InvalidArgumentError("tokenizer is required with model.init (a tokenizer.json)");
  }
  model_dir_ = Path("init");
  if (resume_ && fs::exists(fs::path(model_dir_) / "config.json")) return absl::OkStatus();
  ASSIGN_OR_RETURN(ModelConfig mc, LoadModelConfig(init));
  ASSIGN_OR_RETURN(auto model, Model<float>::Create(mc));
  InitParams(model->layout(), m["init_seed"].get<uint64_t>(), m["init_std"].get<float>(),
             model->params());
  RETURN_IF_ERROR(SaveModel(*model, model_dir_));
  std::error_code ec;
  fs::copy_file(tokenizer_, fs::path(model_dir_) / "tokenizer.json",
                fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("copy ", tokenizer_, ": ", ec.message()));
  Say(absl::StrCat("model: ", mc.model_type, " with ", model->num_params(),
                   " parameters initialized from ", init, " in ", model_dir_));
  return absl::OkStatus();
}

absl::StatusOr<json> Run::Eval(const std::string& model_dir, const std::string& tag) {
  const json& e = c_["eval"];
  const json& t = c_["chat_template"];
  const std::string name = t.value("name", std::string("chatml"));
  std::string stops;
  for (const auto& s : c_["stop_tokens"]) stops += (stops.empty() ? "" : ",") + s.get<std::string>();
  std::vector<std::string> argv = {
      exe_, "eval", "--json", "--model", model_dir, "--data", eval_path_, "--reward",
      Path("reward.json"), "--tokenizer", tokenizer_,
      "--template", name == "custom" ? t.value("custom", std::string()) : name,
      "--samples", e["samples"].dump(), "--temperature", e["temperature"].dump(),
      "--max-new-tokens", e["max_new_tokens"].dump(), "--threshold", e["threshold"].dump(),
      "--seed", e["seed"].dump(), "--stop-tokens", stops.empty() ? "none" : stops,
      "--device", e["device"].get<std::string>(),
      "--out", Path("eval_" + tag + ".jsonl")};
  if (t.contains("system_prompt")) {
    argv.push_back("--system-prompt");
    argv.push_back(t["system_prompt"].get<std::string>());
  }
  const std::string log = Path("logs/eval_" + tag + ".log");
  RETURN_IF_ERROR(RunStage("eval_" + tag, argv, /*quiet=*/true));
  // --json prints the summary as the last line of the stage's log.
  ASSIGN_OR_RETURN(std::string text, ReadFile(log));
  const size_t end = text.find_last_not_of("\n");
  const size_t start = end == std::string::npos ? 0 : text.rfind('\n', end);
  auto summary =
      ParseJson(text.substr(start == std::string::npos ? 0 : start + 1,
                            end == std::string::npos ? 0 : end - (start == std::string::npos ? 0 : start + 1) + 1));
  if (!summary.ok() || !summary->is_object()) {
    return absl::InternalError(absl::StrCat("eval_", tag, ": no JSON summary at the end of ", log));
  }
  RETURN_IF_ERROR(WriteFileAtomic(Path("eval_" + tag + ".json"), summary->dump(2) + "\n"));
  return *summary;
}

absl::Status Run::StartServices() {
  const json& s = c_["services"];
  const auto timeout = milliseconds(1000 * s["startup_timeout_s"].get<int64_t>());
  const int64_t threads = s["threads_per_service"].get<int64_t>();
  if (threads > 0) setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
  if (s["reward_service"].get<bool>()) {
    ASSIGN_OR_RETURN(reward_, ChildProcess::Spawn("reward service",
                                                  {exe_, "reward", "serve", "--config",
                                                   Path("reward.json"), "--port", "0"},
                                                  Path("logs/reward.log")));
  }
  const int64_t n = s["rollout_workers"].get<int64_t>();
  if (n < 1 || n > 64) return absl::InvalidArgumentError("services.rollout_workers must be in [1, 64]");
  const std::string device = s["rollout_device"].get<std::string>();
  for (int64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(auto w, ChildProcess::Spawn(absl::StrCat("rollout worker ", i),
                                                 {exe_, "rollout", "serve", "--model", model_dir_,
                                                  "--port", "0", "--device", device},
                                                 Path(absl::StrCat("logs/rollout_", i, ".log"))));
    workers_.push_back(std::move(w));
  }
  if (reward_) {
    ASSIGN_OR_RETURN(int port, reward_->WaitForListening(timeout));
    reward_address_ = absl::StrCat("127.0.0.1:", port);
  }
  for (auto& w : workers_) {
    ASSIGN_OR_RETURN(int port, w->WaitForListening(timeout));
    worker_addresses_.push_back(absl::StrCat("127.0.0.1:", port));
  }
  Say(absl::StrCat("services: ", workers_.size(), " rollout worker(s)",
                   reward_ ? absl::StrCat(", reward service at ", reward_address_) : "",
                   "; logs in ", Path("logs")));
  return absl::OkStatus();
}

absl::Status Run::Go() {
  // A finished or interrupted run's results are never replaced by accident.
  if (!resume_ && !overwrite_ &&
      (fs::exists(Path("metrics.jsonl")) || fs::exists(Path("checkpoints")))) {
    return absl::FailedPreconditionError(absl::StrCat(
        out_, " already holds a run (metrics.jsonl or checkpoints/): pass --resume to continue "
        "it, --out DIR for a new one, or --overwrite to replace it"));
  }
  if (overwrite_ && !resume_ && fs::is_directory(out_)) {
    // Replace means replace: a stale checkpoint of a longer earlier run must not be taken for
    // this run's last one, nor old event files mixed into this run's curves.
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(out_, ec)) {
      const std::string name = entry.path().filename().string();
      if (name == "checkpoints" || name == "metrics.jsonl" || name == "samples.jsonl" ||
          name == "summary.json" || name == "metrics.svg" || name.rfind("events.out.tfevents", 0) == 0 ||
          name.rfind("eval_", 0) == 0) {
        fs::remove_all(entry.path(), ec);
      }
    }
  }
  fs::create_directories(Path("logs"));
  fs::create_directories(Path("data"));
  RETURN_IF_ERROR(WriteFileAtomic(Path("config.json"), c_.dump(2) + "\n"));
  RETURN_IF_ERROR(WriteFileAtomic(Path("reward.json"), c_["reward"].dump(2) + "\n"));
  RETURN_IF_ERROR(MakeData());
  RETURN_IF_ERROR(MakeModel());
  const auto t0 = std::chrono::steady_clock::now();
  auto minutes = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 60;
  };

  // SFT warm start.
  std::string policy = model_dir_;
  if (!c_["sft"].is_null()) {
    json sft = c_["sft"];
    if (!sft.is_object()) return absl::InvalidArgumentError("sft must be an object or null");
    for (const char* k : {"model", "tokenizer", "output_dir", "chat_template"}) {
      if (sft.contains(k)) {
        return absl::InvalidArgumentError(
            absl::StrCat("sft.", k, " is set by grpo train; leave it out"));
      }
    }
    sft["model"] = model_dir_;
    sft["tokenizer"] = tokenizer_;
    sft["output_dir"] = Path("sft");
    sft["chat_template"] = c_["chat_template"];
    if (!sft.contains("data") || !sft["data"].contains("path")) {
      sft["data"]["exclude_prompts_of"] = eval_path_;
    }
    RETURN_IF_ERROR(WriteFileAtomic(Path("sft.json"), sft.dump(2) + "\n"));
    policy = Path("sft");
    if (resume_ && fs::exists(fs::path(policy) / "config.json")) {
      Say("sft: done earlier, kept");
    } else {
      Say("sft: supervised warm start");
      RETURN_IF_ERROR(RunStage("sft", {exe_, "sft", Path("sft.json")}));
    }
  }
  model_dir_ = policy;

  ASSIGN_OR_RETURN(json base, Eval(policy, "base"));
  Say(absl::StrCat("base model held-out accuracy ", base.value("accuracy", -1.0), " (",
                   Path("eval_base.json"), ")"));

  // The learner config: the user's section plus what this run decides.
  json learner = c_["learner"];
  if (!learner.is_object()) return absl::InvalidArgumentError("learner must be an object");
  for (const char* k : {"model", "tokenizer", "output_dir"}) {
    if (learner.contains(k)) {
      return absl::InvalidArgumentError(absl::StrCat("learner.", k, " is set by grpo train; leave it out"));
    }
  }
  RETURN_IF_ERROR(StartServices());
  learner["model"] = policy;
  learner["tokenizer"] = tokenizer_;
  learner["output_dir"] = out_;
  learner["data"]["path"] = train_path_;
  learner["chat_template"] = c_["chat_template"];
  learner["rollout"]["workers"] = worker_addresses_;
  learner["rollout"]["stop_tokens"] = c_["stop_tokens"];
  learner["eval"]["path"] = eval_path_;
  if (!learner["eval"].contains("every")) learner["eval"]["every"] = 0;
  if (reward_) {
    learner["reward"] = {{"rewards", json::array({{{"name", "remote"},
                                                   {"params", {{"address", reward_address_}}}}})}};
  } else {
    learner["reward"] = c_["reward"];
  }
  RETURN_IF_ERROR(WriteFileAtomic(Path("learner.json"), learner.dump(2) + "\n"));
  Say(absl::StrCat("grpo: learner with ", worker_addresses_.size(), " rollout worker(s)"));
  std::vector<std::string> argv = {exe_, "learner", Path("learner.json")};
  if (resume_) argv.push_back("--resume");
  RETURN_IF_ERROR(RunStage("learner", argv));
  StopAll();

  const auto ckpts = ListCheckpoints(Path("checkpoints"));
  if (ckpts.empty()) return absl::InternalError("the learner ended without a checkpoint");
  ASSIGN_OR_RETURN(json final_eval, Eval(ckpts.back(), "final"));
  const double mins = minutes();
  json summary = {{"base_accuracy", base.value("accuracy", -1.0)},
                  {"final_accuracy", final_eval.value("accuracy", -1.0)},
                  {"base", base},
                  {"final", final_eval},
                  {"final_checkpoint", ckpts.back()},
                  {"minutes", mins}};
  RETURN_IF_ERROR(WriteFileAtomic(Path("summary.json"), summary.dump(2) + "\n"));
  RETURN_IF_ERROR(RunStage("plot", {exe_, "plot", "--metrics", Path("metrics.jsonl"), "--out",
                                    Path("metrics.svg"), "--title", out_},
                           /*quiet=*/true));
  Say(absl::StrCat("done in ", absl::StrFormat("%.1f", mins), " min: held-out accuracy ",
                   summary["base_accuracy"].get<double>(), " (base) -> ",
                   summary["final_accuracy"].get<double>(), " (final); ", Path("summary.json"),
                   ", ", Path("metrics.svg")));
  return absl::OkStatus();
}

// --check: every section through its own parser, with placeholders for what the run decides
// (paths, addresses); nothing is started and no file needs to exist.
absl::Status CheckConfig(const json& c) {
  const json& m = c["model"];
  if (m["path"].get<std::string>().empty() == m["init"].get<std::string>().empty()) {
    return absl::InvalidArgumentError("set exactly one of model.path and model.init");
  }
  const json& d = c["data"];
  if (d["train_path"].get<std::string>().empty()) {
    const std::string task = d["task"].get<std::string>();
    if (task != "arith" && task != "countdown") {
      return absl::InvalidArgumentError(absl::StrCat("data.task \"", task, "\" is unknown"));
    }
  } else if (d["eval_path"].get<std::string>().empty()) {
    return absl::InvalidArgumentError("data.eval_path is required when data.train_path is set");
  }
  auto rc = RewardSetConfig::FromJson(c["reward"]);
  if (!rc.ok()) return WithContext(rc.status(), "reward");
  bool heavy = false;  // rewards that load models or connect somewhere are not built here
  for (const auto& r : c["reward"].value("rewards", json::array())) {
    const std::string name = r.value("name", "");
    heavy = heavy || name == "model" || name == "judge" || name == "remote" || name == "plugin";
  }
  if (!heavy) {
    auto rs = RewardSet::Create(*rc);
    if (!rs.ok()) return WithContext(rs.status(), "reward");
  }
  if (!c["sft"].is_null()) {
    json sft = c["sft"];
    sft["model"] = "MODEL";
    sft["tokenizer"] = "TOKENIZER";
    sft["output_dir"] = "OUT";
    sft["chat_template"] = c["chat_template"];
    auto sc = SftConfigFromJson(sft, "sft");
    if (!sc.ok()) return sc.status();
  }
  json learner = c["learner"];
  learner["model"] = "MODEL";
  learner["tokenizer"] = "TOKENIZER";
  learner["output_dir"] = "OUT";
  learner["data"]["path"] = "TRAIN.jsonl";
  learner["chat_template"] = c["chat_template"];
  learner["rollout"]["workers"] = json::array({"127.0.0.1:1"});
  learner["rollout"]["stop_tokens"] = c["stop_tokens"];
  learner["eval"]["path"] = "EVAL.jsonl";
  learner["reward"] = c["reward"];
  auto lc = ParseLearnerConfig(learner, "learner");
  if (!lc.ok()) return lc.status();
  const int64_t workers = c["services"]["rollout_workers"].get<int64_t>();
  if (workers < 1 || workers > 64) {
    return absl::InvalidArgumentError("services.rollout_workers must be in [1, 64]");
  }
  const std::string device = c["services"]["rollout_device"].get<std::string>();
  if (device != "cpu" && device != "cuda" && device != "auto") {
    return absl::InvalidArgumentError(absl::StrCat("services.rollout_device: '", device,
                                                   "' is not one of cpu, cuda, auto"));
  }
  const std::string eval_device = c["eval"]["device"].get<std::string>();
  if (eval_device != "cpu" && eval_device != "cuda" && eval_device != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.device: '", eval_device, "' is not one of cpu, cuda, auto"));
  }
  if (device != "cpu" && lc->rollout.deterministic) {
    return absl::InvalidArgumentError(absl::StrCat(
        "services.rollout_device: '", device,
        "' cannot serve learner.rollout.deterministic (bitwise learner logprobs need the CPU "
        "engine); set one of them differently"));
  }
  return absl::OkStatus();
}

}  // namespace

int RunTrainCommand(const std::vector<std::string>& args) {
  std::string config_path, out;
  std::vector<std::string> sets;
  bool resume = false, check = false, overwrite = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kTrainUsage, stdout);
      return 0;
    }
    if (a == "--print-defaults") {
      std::printf("%s\n", Defaults().dump(2).c_str());
      return 0;
    }
    if (a == "--resume") {
      resume = true;
    } else if (a == "--check") {
      check = true;
    } else if (a == "--overwrite") {
      overwrite = true;
    } else if (a == "--set" || a == "--out") {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "grpo train: %s needs a value\n\n%s", a.c_str(), kTrainUsage);
        return 2;
      }
      (a == "--set" ? sets.push_back(args[i + 1]) : void(out = args[i + 1]));
      ++i;
    } else if (a.rfind("--", 0) == 0 || !config_path.empty()) {
      std::fprintf(stderr, "grpo train: unexpected argument '%s'\n\n%s", a.c_str(), kTrainUsage);
      return 2;
    } else {
      config_path = a;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "grpo train: CONFIG.json is required\n\n%s", kTrainUsage);
    return 2;
  }
  auto user = ReadJsonFile(config_path);
  if (!user.ok()) return Fail(user.status());
  for (const auto& s : sets) {
    if (auto st = SetDottedKey(s, &*user); !st.ok()) return Fail(st);
  }
  json config = Defaults();
  if (auto st = MergeOverDefaults(*user, &config, TrainPassThrough); !st.ok()) {
    return Fail(WithContext(st, config_path));
  }
  if (!out.empty()) config["output_dir"] = out;
  if (check) {
    absl::Status st;
    try {
      st = CheckConfig(config);
    } catch (const json::exception& e) {
      st = absl::InvalidArgumentError(e.what());
    }
    if (!st.ok()) return Fail(WithContext(st, config_path));
    std::printf("%s: config OK\n", config_path.c_str());
    return 0;
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::string out_dir;
  try {
    out_dir = config["output_dir"].get<std::string>();
  } catch (const json::exception&) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(config_path, ": output_dir must be a string")));
  }
  Run run(std::move(config), out_dir, resume, overwrite);
  absl::Status st;
  try {
    st = run.Go();
  } catch (const json::exception& e) {  // a config value of the wrong type
    st = absl::InvalidArgumentError(absl::StrCat(config_path, ": ", e.what()));
  }
  if (!st.ok()) {
    if (absl::IsCancelled(st)) {
      std::fprintf(stderr, "grpo train: %s; every process it started is stopped. Continue with "
                   "--resume.\n", std::string(st.message()).c_str());
      return 130;
    }
    return Fail(st);
  }
  return 0;
}

}  // namespace grpo::cli
