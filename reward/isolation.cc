// IsolatedReward: plugin scoring in killable worker processes (see reward/isolation.h for the
// model, reward/worker_protocol.h for the wire format, reward/plugin_abi.h for the plugin side).
#include "reward/isolation.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/plugin_abi.h"
#include "reward/worker_protocol.h"

extern char** environ;

namespace grpo {

using reward_worker::kMaxFrameBytes;
using reward_worker::kWorkerError;
using reward_worker::kWorkerFd;
using Clock = std::chrono::steady_clock;

struct IsolatedReward::Worker {
  int pid = -1;  // > 0 while the process exists (unreaped)
  int fd = -1;   // our end of the socket
};

namespace {

enum class Io { kOk, kTimeout, kClosed };

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, INT_MAX));
}

// Waits until fd is ready for `events` or the deadline passes.
Io WaitFd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int ms = RemainingMs(deadline);
    if (ms == 0) return Io::kTimeout;
    pollfd p{fd, events, 0};
    int rc = poll(&p, 1, ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return Io::kClosed;
    if (rc > 0) return Io::kOk;  // readable, writable, or hung up: the next call says which
  }
}

Io SendAll(int fd, const char* data, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    ssize_t put = send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (put > 0) {
      data += put;
      n -= static_cast<size_t>(put);
    } else if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Io io = WaitFd(fd, POLLOUT, deadline); io != Io::kOk) return io;
    } else if (!(put < 0 && errno == EINTR)) {
      return Io::kClosed;
    }
  }
  return Io::kOk;
}

Io RecvAll(int fd, char* data, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    ssize_t got = recv(fd, data, n, MSG_DONTWAIT);
    if (got > 0) {
      data += got;
      n -= static_cast<size_t>(got);
    } else if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Io io = WaitFd(fd, POLLIN, deadline); io != Io::kOk) return io;
    } else if (!(got < 0 && errno == EINTR)) {
      return Io::kClosed;  // EOF or reset
    }
  }
  return Io::kOk;
}

struct Frame {
  int32_t code = 0;
  std::string payload;
};

// kClosed also covers a malformed frame (length over the limit): the stream is unusable.
Io RecvFrame(int fd, Clock::time_point deadline, Frame* frame, bool* malformed) {
  char header[8];
  *malformed = false;
  if (Io io = RecvAll(fd, header, sizeof(header), deadline); io != Io::kOk) return io;
  uint32_t len;
  std::memcpy(&frame->code, header, 4);
  std::memcpy(&len, header + 4, 4);
  if (len > kMaxFrameBytes) {
    *malformed = true;
    return Io::kClosed;
  }
  frame->payload.resize(len);
  return RecvAll(fd, frame->payload.data(), len, deadline);
}

// SIGKILLs (harmless if it already died), reaps, closes. Returns the wait status, or -1 when
// the process could not be reaped (e.g. SIGCHLD ignored by the host).
int KillAndReap(int* pid, int* fd) {
  int status = -1;
  if (*pid > 0) {
    kill(-*pid, SIGKILL);  // the worker's process group: it and anything its plugin forked
    kill(*pid, SIGKILL);
    int rc;
    do {
      rc = waitpid(*pid, &status, 0);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) status = -1;
    *pid = -1;
  }
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
  return status;
}

std::string DescribeDeath(int status) {
  if (status != -1 && WIFSIGNALED(status)) {
    return absl::StrCat("worker crashed (signal ", WTERMSIG(status), ")");
  }
  if (status != -1 && WIFEXITED(status)) {
    return absl::StrCat("worker exited (code ", WEXITSTATUS(status), ")");
  }
  return "worker died";
}

void Fail(const char* kind, std::string message, double failure_score, RewardOutput* out) {
  out->score = failure_score;
  out->components.clear();
  out->components[absl::StrCat("isolation/", kind)] = 1.0;
  out->info.clear();
  out->error = std::move(message);
}

std::string Excerpt(const std::string& s) {
  constexpr size_t kMax = 120;
  return s.size() <= kMax ? s : absl::StrCat(s.substr(0, kMax), "...");
}

// Fills `out` from a plugin's response JSON; false (with out->error) when it is not one.
bool ParseResponse(const std::string& payload, RewardOutput* out) {
  auto parsed = ParseJson(payload);  // depth-limited: the plugin is untrusted
  nlohmann::json json = parsed.ok() ? std::move(*parsed) : nlohmann::json();
  if (!parsed.ok() || !json.is_object()) {
    out->error = absl::StrCat("plugin returned invalid JSON: ", Excerpt(payload));
    return false;
  }
  auto score = json.find("score");
  if (score == json.end() || !score->is_number()) {
    out->error = absl::StrCat("plugin response has no numeric \"score\": ", Excerpt(payload));
    return false;
  }
  out->score = score->get<double>();
  if (auto c = json.find("components"); c != json.end() && !c->is_null()) {
    if (!c->is_object()) {
      out->error = "plugin response \"components\" is not an object";
      return false;
    }
    for (const auto& [key, value] : c->items()) {
      if (!value.is_number()) {
        out->error = absl::StrCat("plugin response component \"", key, "\" is not a number");
        return false;
      }
      out->components[key] = value.get<double>();
    }
  }
  if (auto info = json.find("info"); info != json.end() && info->is_string()) {
    out->info = info->get<std::string>();
  }
  return true;
}

bool IsExecutable(const std::string& path) {
  return !path.empty() && access(path.c_str(), X_OK) == 0;
}

absl::StatusOr<std::string> FindWorker(const std::string& explicit_path) {
  if (!explicit_path.empty()) {
    if (IsExecutable(explicit_path)) return explicit_path;
    return absl::NotFoundError(
        absl::StrCat("reward worker executable '", explicit_path, "' not found or not executable"));
  }
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("GRPO_REWARD_WORKER")) candidates.push_back(env);
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string self(exe, static_cast<size_t>(n));
    candidates.push_back(absl::StrCat(self.substr(0, self.rfind('/') + 1), "grpo_reward_worker"));
  }
#ifdef GRPO_REWARD_WORKER_BUILD_PATH
  candidates.push_back(GRPO_REWARD_WORKER_BUILD_PATH);
#endif
  for (const auto& c : candidates) {
    if (IsExecutable(c)) return c;
  }
  std::string tried;
  for (const auto& c : candidates) absl::StrAppend(&tried, tried.empty() ? "" : ", ", c);
  return absl::NotFoundError(
      absl::StrCat("cannot find the grpo_reward_worker executable (tried: ", tried,
                   "); set $GRPO_REWARD_WORKER or the plugin param \"worker\""));
}

}  // namespace

absl::Status IsolatedRewardOptions::Validate() const {
  if (plugin_path.empty())
    return absl::InvalidArgumentError("\"path\" (the plugin .so) is required");
  if (deadline_ms < 1 || deadline_ms > 3600 * 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"deadline_ms\" must be in [1, 3600000], got ", deadline_ms));
  }
  if (num_workers < 1 || num_workers > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"num_workers\" must be in [1, 256], got ", num_workers));
  }
  if (startup_ms < 1) return absl::InvalidArgumentError("\"startup_ms\" must be positive");
  if (!params.is_object()) return absl::InvalidArgumentError("\"params\" must be a JSON object");
  return absl::OkStatus();
}

absl::StatusOr<IsolatedRewardOptions> IsolatedRewardOptions::FromJson(
    const nlohmann::json& params) {
  IsolatedRewardOptions o;
  if (!params.is_object()) return absl::InvalidArgumentError("plugin params must be a JSON object");
  auto get_int = [](const nlohmann::json& v, const char* key, int* out) -> absl::Status {
    if (!v.is_number_integer())
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be an integer"));
    int64_t x = v.get<int64_t>();
    if (x < INT_MIN || x > INT_MAX)
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" is out of range"));
    *out = static_cast<int>(x);
    return absl::OkStatus();
  };
  for (const auto& [key, v] : params.items()) {
    if (key == "path" || key == "worker") {
      if (!v.is_string())
        return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
      (key == "path" ? o.plugin_path : o.worker_path) = v.get<std::string>();
    } else if (key == "deadline_ms") {
      RETURN_IF_ERROR(get_int(v, "deadline_ms", &o.deadline_ms));
    } else if (key == "num_workers") {
      RETURN_IF_ERROR(get_int(v, "num_workers", &o.num_workers));
    } else if (key == "startup_ms") {
      RETURN_IF_ERROR(get_int(v, "startup_ms", &o.startup_ms));
    } else if (key == "failure_score") {
      if (!v.is_number()) return absl::InvalidArgumentError("\"failure_score\" must be a number");
      o.failure_score = v.get<double>();
    } else if (key == "params") {
      o.params = v;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field \"", key,
          "\"; known: path, deadline_ms, num_workers, failure_score, params, worker, startup_ms"));
    }
  }
  RETURN_IF_ERROR(o.Validate());
  return o;
}

absl::StatusOr<std::unique_ptr<IsolatedReward>> IsolatedReward::Create(
    IsolatedRewardOptions options) {
  RETURN_IF_ERROR(options.Validate());
  if (access(options.plugin_path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("plugin file '", options.plugin_path,
                                            "' cannot be read: ", std::strerror(errno)));
  }
  // dlopen() searches the library path for a name without '/'; a config means a file.
  if (options.plugin_path.find('/') == std::string::npos) {
    options.plugin_path = absl::StrCat("./", options.plugin_path);
  }
  ASSIGN_OR_RETURN(std::string worker_path, FindWorker(options.worker_path));
  std::unique_ptr<IsolatedReward> fn(
      new IsolatedReward(std::move(options), std::move(worker_path)));
  for (auto& w : fn->workers_) {
    RETURN_IF_ERROR(
        WithContext(fn->StartWorker(*w), absl::StrCat("plugin '", fn->options_.plugin_path, "'")));
  }
  return fn;
}

IsolatedReward::IsolatedReward(IsolatedRewardOptions options, std::string worker_path)
    : options_(std::move(options)), worker_path_(std::move(worker_path)) {
  for (int i = 0; i < options_.num_workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

IsolatedReward::~IsolatedReward() {
  std::lock_guard<std::mutex> lock(score_mu_);
  for (auto& w : workers_) KillAndReap(&w->pid, &w->fd);
}

absl::Status IsolatedReward::StartWorker(Worker& w) const {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  // posix_spawn (vfork+exec in glibc): safe in a multi-threaded host and cheap for a host with a
  // large address space (no page-table copy, unlike fork()).
  int child_end = sv[1];
  if (child_end == kWorkerFd) {  // dup2 onto itself would keep FD_CLOEXEC and lose the socket
    child_end = fcntl(sv[1], F_DUPFD_CLOEXEC, kWorkerFd + 1);
    int err = errno;
    close(sv[1]);
    sv[1] = child_end;
    if (child_end < 0) {
      close(sv[0]);
      return absl::InternalError(absl::StrCat("fcntl: ", std::strerror(err)));
    }
  }
  std::string arg0 = "grpo_reward_worker", arg1 = options_.plugin_path,
              arg2 = std::to_string(options_.deadline_ms);
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_end, kWorkerFd);
  posix_spawn_file_actions_adddup2(&actions, 2, 1);  // plugin prints go to stderr, not the socket
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  // The worker starts with no blocked signals and default dispositions whatever thread spawns it
  // (gRPC threads block SIGINT/SIGTERM), in a process group of its own, so a terminal's Ctrl-C
  // reaches the host only and KillAndReap can kill anything the plugin forked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGALRM, SIGHUP}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
  pid_t pid = -1;
  int err = posix_spawn(&pid, worker_path_.c_str(), &actions, &attr, argv, environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    close(sv[0]);
    close(sv[1]);
    return absl::InternalError(
        absl::StrCat("cannot start reward worker '", worker_path_, "': ", std::strerror(err)));
  }
  close(sv[1]);
  w.pid = pid;
  w.fd = sv[0];
  Frame hello;
  bool malformed = false;
  Io io = RecvFrame(w.fd, Clock::now() + std::chrono::milliseconds(options_.startup_ms), &hello,
                    &malformed);
  if (io == Io::kTimeout) {
    KillAndReap(&w.pid, &w.fd);
    return absl::DeadlineExceededError(
        absl::StrCat("worker did not load the plugin within ", options_.startup_ms, " ms"));
  }
  if (io == Io::kClosed) {
    int status = KillAndReap(&w.pid, &w.fd);
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 127) {
      return absl::InternalError(absl::StrCat("cannot execute reward worker '", worker_path_, "'"));
    }
    return absl::InternalError(absl::StrCat(DescribeDeath(status), " while loading the plugin"));
  }
  if (hello.code != GRPO_REWARD_OK) {
    KillAndReap(&w.pid, &w.fd);
    return absl::FailedPreconditionError(hello.payload);
  }
  return absl::OkStatus();
}

void IsolatedReward::ScoreOne(Worker& w, const RewardInput& input, RewardOutput& out) const {
  calls_.fetch_add(1);
  const double fail_score = options_.failure_score;
  if (w.pid <= 0) {
    if (absl::Status st = StartWorker(w); !st.ok()) {
      errors_.fetch_add(1);
      Fail("error", absl::StrCat("cannot start a worker: ", st.message()), fail_score, &out);
      return;
    }
  }
  nlohmann::json request = {{"prompt", input.prompt},
                            {"completion", input.completion},
                            {"completion_ids", input.completion_ids},
                            {"ground_truth", input.ground_truth},
                            {"data_source", input.data_source},
                            {"extra", input.extra},
                            {"params", options_.params}};
  std::string body = request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (body.size() > kMaxFrameBytes) {
    errors_.fetch_add(1);
    Fail("error", absl::StrCat("request of ", body.size(), " bytes is over the limit"), fail_score,
         &out);
    return;
  }
  uint32_t len = static_cast<uint32_t>(body.size());
  body.insert(0, reinterpret_cast<const char*>(&len), sizeof(len));

  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.deadline_ms);
  Frame frame;
  bool malformed = false;
  Io io = SendAll(w.fd, body.data(), body.size(), deadline);
  if (io == Io::kOk) io = RecvFrame(w.fd, deadline, &frame, &malformed);
  if (io == Io::kTimeout) {
    KillAndReap(&w.pid, &w.fd);
    timeouts_.fetch_add(1);
    Fail("timeout", absl::StrCat("timeout after ", options_.deadline_ms, " ms"), fail_score, &out);
    (void)StartWorker(w);  // replace now; if that fails, the next item on this slot retries
    return;
  }
  if (io == Io::kClosed) {
    int status = KillAndReap(&w.pid, &w.fd);
    crashes_.fetch_add(1);
    Fail("crash", malformed ? "worker sent a malformed frame" : DescribeDeath(status), fail_score,
         &out);
    (void)StartWorker(w);
    return;
  }
  if (frame.code != GRPO_REWARD_OK) {
    errors_.fetch_add(1);
    std::string message =
        frame.code == kWorkerError
            ? frame.payload
            : absl::StrCat("plugin error (code ", frame.code, "): ", frame.payload);
    Fail("error", std::move(message), fail_score, &out);
    return;
  }
  if (!ParseResponse(frame.payload, &out)) {
    errors_.fetch_add(1);
    Fail("error", out.error, fail_score, &out);
  }
}

std::vector<RewardOutput> IsolatedReward::Score(absl::Span<const RewardInput> batch) const {
  std::lock_guard<std::mutex> lock(score_mu_);
  std::vector<RewardOutput> outputs(batch.size());
  std::atomic<size_t> next{0};
  auto serve = [&](Worker& w) {
    for (size_t i = next.fetch_add(1); i < batch.size(); i = next.fetch_add(1)) {
      try {
        ScoreOne(w, batch[i], outputs[i]);
      } catch (const std::exception& e) {  // JSON or allocation failures: this item only
        errors_.fetch_add(1);
        Fail("error", absl::StrCat("isolation: ", e.what()), options_.failure_score, &outputs[i]);
      }
    }
  };
  size_t num_threads = std::min(workers_.size(), batch.size());
  std::vector<std::thread> threads;
  for (size_t t = 1; t < num_threads; ++t) threads.emplace_back(serve, std::ref(*workers_[t]));
  if (num_threads > 0) serve(*workers_[0]);
  for (auto& t : threads) t.join();
  return outputs;
}

RewardCounters IsolatedReward::counters() const {
  return RewardCounters{calls_.load(), timeouts_.load(), crashes_.load(), errors_.load()};
}

std::vector<int> IsolatedReward::WorkerPidsForTest() const {
  std::lock_guard<std::mutex> lock(score_mu_);
  std::vector<int> pids;
  for (const auto& w : workers_) {
    if (w->pid > 0) pids.push_back(w->pid);
  }
  return pids;
}

absl::Status RegisterPluginReward(RewardRegistry* registry) {
  return registry->Register(
      "plugin",
      [](const nlohmann::json& params) -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
        ASSIGN_OR_RETURN(IsolatedRewardOptions options, IsolatedRewardOptions::FromJson(params));
        ASSIGN_OR_RETURN(std::unique_ptr<IsolatedReward> fn,
                         IsolatedReward::Create(std::move(options)));
        return std::unique_ptr<RewardFunction>(std::move(fn));
      });
}

}  // namespace grpo
