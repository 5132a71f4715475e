// Child processes for launchers (`grpo train` starts the learner, rollout workers and the reward
// service on loopback): spawn with output to a log file, wait for a "listening on HOST:PORT"
// line with a deadline, stop with SIGTERM then SIGKILL after a grace period.
//
// Each child runs in its own process group (a Ctrl-C on the terminal reaches only the launcher,
// which then stops the children in order) and gets SIGTERM if the launcher dies
// (PR_SET_PDEATHSIG), so no service outlives the run that started it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grpo {

class ChildProcess {
 public:
  // Starts argv[0] (a path, or a name looked up in PATH) with argv. stdout and stderr go to
  // log_path (created or truncated) unless it is empty, in which case they are inherited.
  // `name` labels the child in errors ("rollout worker 1").
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(std::string name,
                                                             const std::vector<std::string>& argv,
                                                             const std::string& log_path);
  ~ChildProcess();  // stops the child if it still runs (Stop with a short grace)

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // Waits until the log holds a line "listening on HOST:PORT" and returns the port. Errors:
  // the child exited first (with its exit status and the log's last lines) or the deadline passed.
  absl::StatusOr<int> WaitForListening(std::chrono::milliseconds timeout);

  // True while the child runs; reaps it once it has ended (then exit_code() is valid).
  bool Running();
  // Exit code, or 128 + signal number when a signal ended it; -1 while it runs.
  int exit_code() const { return exit_code_; }
  // Blocks until the child ends; returns exit_code().
  int Wait();
  // SIGTERM to the child's process group, then SIGKILL after `grace`; returns exit_code().
  int Stop(std::chrono::milliseconds grace);

  // The last `max_lines` lines of the log ("" when output is inherited).
  std::string LogTail(int max_lines) const;

 private:
  ChildProcess(std::string name, pid_t pid, std::string log_path)
      : name_(std::move(name)), pid_(pid), log_path_(std::move(log_path)) {}
  void Reaped(int status);

  std::string name_;
  pid_t pid_;
  std::string log_path_;
  int exit_code_ = -1;
};

// A free TCP port on 127.0.0.1 at the time of the call (bind to port 0, read it, close).
// Racy by nature; prefer letting servers bind port 0 and report the port they got.
absl::StatusOr<int> PickFreePort();

}  // namespace grpo
