// Tests for common/process.h: spawning services, reading their port, stopping them whole.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/process.h"

namespace grpo {
namespace {

using std::chrono::milliseconds;

std::string TempLog(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "_" + std::to_string(getpid()) + ".log"))
      .string();
}

TEST_CASE("ChildProcess reports the port a service prints and stops it") {
  const std::string log = TempLog("svc");
  auto child = ChildProcess::Spawn(
      "svc", {"sh", "-c", "echo starting; sleep 0.2; echo 'listening on 127.0.0.1:4242'; exec sleep 30"},
      log);
  REQUIRE(child.ok());
  auto port = (*child)->WaitForListening(milliseconds(10000));
  REQUIRE(port.ok());
  CHECK(*port == 4242);
  CHECK((*child)->Running());
  CHECK((*child)->Stop(milliseconds(2000)) == 128 + SIGTERM);
  CHECK(!(*child)->Running());
  CHECK((*child)->LogTail(1) == "listening on 127.0.0.1:4242");
  std::filesystem::remove(log);
}

TEST_CASE("ChildProcess errors: missing program, early exit, deadline") {
  auto missing = ChildProcess::Spawn("ghost", {"/nonexistent/grpo-ghost"}, "");
  REQUIRE(!missing.ok());
  CHECK(missing.status().message().find("cannot run /nonexistent/grpo-ghost") !=
        std::string::npos);

  const std::string log = TempLog("early");
  auto early = ChildProcess::Spawn("worker 1", {"sh", "-c", "echo 'bad flag --x' >&2; exit 3"}, log);
  REQUIRE(early.ok());
  auto port = (*early)->WaitForListening(milliseconds(10000));
  REQUIRE(!port.ok());
  CHECK(port.status().message().find("worker 1 exited (code 3)") != std::string::npos);
  CHECK(port.status().message().find("bad flag --x") != std::string::npos);

  auto slow = ChildProcess::Spawn("slow", {"sleep", "30"}, log);
  REQUIRE(slow.ok());
  port = (*slow)->WaitForListening(milliseconds(100));
  REQUIRE(port.status().code() == absl::StatusCode::kDeadlineExceeded);
  (*slow)->Stop(milliseconds(1000));
  std::filesystem::remove(log);
}

TEST_CASE("ChildProcess::Stop ends the child's whole process group, SIGKILL after the grace") {
  const std::string log = TempLog("group");
  // The child ignores SIGTERM and leaves a grandchild; both must be gone after Stop.
  auto child = ChildProcess::Spawn(
      "stubborn", {"sh", "-c", "trap '' TERM; sleep 60 & echo $! ; echo 'listening on h:1'; wait"},
      log);
  REQUIRE(child.ok());
  REQUIRE((*child)->WaitForListening(milliseconds(10000)).ok());
  std::ifstream in(log);
  pid_t grandchild = 0;
  in >> grandchild;
  REQUIRE(grandchild > 0);
  CHECK((*child)->Stop(milliseconds(300)) == 128 + SIGKILL);
  // The grandchild was killed with the group: it no longer exists, or is a zombie waiting for
  // init (a container's init may never reap it).
  auto dead = [](pid_t pid) {
    if (kill(pid, 0) != 0) return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string pid_s, comm, state;
    stat >> pid_s >> comm >> state;
    return state == "Z" || state == "X";
  };
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = dead(grandchild);
    if (!gone) std::this_thread::sleep_for(milliseconds(10));
  }
  CHECK(gone);
  std::filesystem::remove(log);
}

TEST_CASE("PickFreePort gives a usable port") {
  auto port = PickFreePort();
  REQUIRE(port.ok());
  CHECK(*port > 0);
  CHECK(*port <= 65535);
}

}  // namespace
}  // namespace grpo
