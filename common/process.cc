#include "common/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace grpo {
namespace {

// In the child between fork and exec: only async-signal-safe calls. Reports errno through
// err_fd (close-on-exec, so a successful exec closes it with nothing written).
[[noreturn]] void ExecChild(const std::vector<char*>& argv, int log_fd, int err_fd,
                            pid_t parent) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(127);  // the launcher died before prctl took effect
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP}) signal(sig, SIG_DFL);
  const int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, 0);
  if (log_fd >= 0) {
    dup2(log_fd, 1);
    dup2(log_fd, 2);
  }
  execvp(argv[0], argv.data());
  const int e = errno;
  ssize_t ignored = write(err_fd, &e, sizeof e);
  (void)ignored;
  _exit(127);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    std::string name, const std::vector<std::string>& argv, const std::string& log_path) {
  if (argv.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": empty command"));
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return absl::UnavailableError(
          absl::StrCat(name, ": cannot create log file ", log_path, ": ", std::strerror(errno)));
    }
  }
  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    if (log_fd >= 0) close(log_fd);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int e = errno;
    close(err_pipe[0]);
    close(err_pipe[1]);
    if (log_fd >= 0) close(log_fd);
    return absl::ResourceExhaustedError(absl::StrCat(name, ": fork: ", std::strerror(e)));
  }
  if (pid == 0) ExecChild(cargv, log_fd, err_pipe[1], parent);
  setpgid(pid, pid);  // also here, so the group exists before we might signal it
  close(err_pipe[1]);
  if (log_fd >= 0) close(log_fd);
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(err_pipe[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  close(err_pipe[0]);
  std::unique_ptr<ChildProcess> child(new ChildProcess(std::move(name), pid, log_path));
  if (n == sizeof child_errno) {
    child->Wait();
    return absl::NotFoundError(absl::StrCat(child->name_, ": cannot run ", argv[0], ": ",
                                            std::strerror(child_errno)));
  }
  return child;
}

ChildProcess::~ChildProcess() {
  if (exit_code_ < 0) Stop(std::chrono::milliseconds(2000));
}

void ChildProcess::Reaped(int status) {
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool ChildProcess::Running() {
  if (exit_code_ >= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    Reaped(status);
    return false;
  }
  if (r < 0 && errno == ECHILD) {  // reaped elsewhere; treat as gone
    exit_code_ = 255;
    return false;
  }
  return true;
}

int ChildProcess::Wait() {
  while (exit_code_ < 0) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, 0);
    if (r == pid_) {
      Reaped(status);
    } else if (r < 0 && errno != EINTR) {
      exit_code_ = 255;
    }
  }
  return exit_code_;
}

int ChildProcess::Stop(std::chrono::milliseconds grace) {
  if (!Running()) return exit_code_;
  kill(-pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (Running()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(-pid_, SIGKILL);
      return Wait();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // The leader ended; anything it left in its group goes too.
  kill(-pid_, SIGKILL);
  return exit_code_;
}

std::string ChildProcess::LogTail(int max_lines) const {
  if (log_path_.empty()) return "";
  std::ifstream in(log_path_);
  std::deque<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(std::move(line));
    if (static_cast<int>(lines.size()) > max_lines) lines.pop_front();
  }
  return absl::StrJoin(lines, "\n");
}

absl::StatusOr<int> ChildProcess::WaitForListening(std::chrono::milliseconds timeout) {
  if (log_path_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(name_, ": output is not logged"));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  constexpr char kMarker[] = "listening on ";
  while (true) {
    const bool running = Running();  // read the log after this, so a last line is not missed
    std::ifstream in(log_path_);
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find(kMarker);
      if (at == std::string::npos) continue;
      const size_t colon = line.rfind(':');
      if (colon == std::string::npos || colon < at) continue;
      const std::string digits = line.substr(colon + 1);
      char* end = nullptr;
      const long port = std::strtol(digits.c_str(), &end, 10);
      if (end != digits.c_str() && port > 0 && port <= 65535) return static_cast<int>(port);
    }
    if (!running) {
      return absl::UnavailableError(absl::StrCat(name_, " exited (code ", exit_code_,
                                                 ") before it was listening; its log ",
                                                 log_path_, " ends:\n", LogTail(15)));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          name_, " did not report 'listening on HOST:PORT' within ", timeout.count(),
          " ms; its log ", log_path_, " ends:\n", LogTail(15)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::StatusOr<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("bind 127.0.0.1:0: ", std::strerror(e)));
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace grpo
