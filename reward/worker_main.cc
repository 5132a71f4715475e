// grpo_reward_worker: the process in which an untrusted reward plugin runs. IsolatedReward
// (reward/isolation.h) starts several, sends them one request at a time over fd 3 and kills them
// when an item runs past its deadline. Not meant to be run by hand; the protocol is in
// reward/worker_protocol.h, the plugin ABI in reward/plugin_abi.h.
//
// Usage: grpo_reward_worker <plugin.so> <deadline_ms>   (with the host's socket on fd 3)
//
// The host SIGKILLs a worker whose item runs past deadline_ms. As a backstop for a host that died
// first, the worker also arms alarm() for deadline + 2 s around each plugin call: a worker hung
// in a plugin cannot outlive its host by more than that.
//
// Deliberately tiny: libc and libdl only, no threads, so a plugin's bugs meet as little of our
// code as possible.
#include <dlfcn.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "reward/plugin_abi.h"
#include "reward/worker_protocol.h"

namespace {

using grpo::reward_worker::kInitialOutCap;
using grpo::reward_worker::kMaxFrameBytes;
using grpo::reward_worker::kWorkerError;
using grpo::reward_worker::kWorkerFd;

bool ReadAll(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t got = read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t put = send(fd, p, n, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    p += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

bool SendFrame(int32_t code, const char* payload, size_t len) {
  uint32_t len32 = static_cast<uint32_t>(len);
  return WriteAll(kWorkerFd, &code, sizeof(code)) && WriteAll(kWorkerFd, &len32, sizeof(len32)) &&
         WriteAll(kWorkerFd, payload, len);
}

bool SendFrame(int32_t code, const std::string& payload) {
  return SendFrame(code, payload.data(), payload.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    const char kUsage[] =
        "usage: grpo_reward_worker <plugin.so> <deadline_ms> (started by grpo, fd 3)\n";
    (void)!write(2, kUsage, sizeof(kUsage) - 1);
    return 2;
  }
  const std::string path = argv[1];
  const unsigned alarm_s = static_cast<unsigned>(std::strtoul(argv[2], nullptr, 10) / 1000 + 2);
  // The untrusted plugin sees only stdin (/dev/null), stdout/stderr and the socket: close any
  // descriptor the host's ancestors leaked without close-on-exec.
  close_range(kWorkerFd + 1, ~0U, 0);
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    SendFrame(kWorkerError, std::string("cannot load plugin: ") + (err ? err : path));
    return 1;
  }
  auto score = reinterpret_cast<grpo_reward_score_fn>(dlsym(handle, "grpo_reward_score"));
  if (score == nullptr) {
    SendFrame(kWorkerError, "plugin " + path +
                                " does not export grpo_reward_score (see "
                                "reward/plugin_abi.h)");
    return 1;
  }
  auto version =
      reinterpret_cast<grpo_reward_abi_version_fn>(dlsym(handle, "grpo_reward_abi_version"));
  if (version != nullptr && version() != GRPO_REWARD_ABI_VERSION) {
    SendFrame(kWorkerError, "plugin " + path + " was written for reward plugin ABI version " +
                                std::to_string(version()) + "; this grpo speaks version " +
                                std::to_string(GRPO_REWARD_ABI_VERSION));
    return 1;
  }
  if (!SendFrame(GRPO_REWARD_OK, "ok")) return 1;

  std::vector<char> request;
  std::vector<char> out(kInitialOutCap);
  for (;;) {
    uint32_t len = 0;
    if (!ReadAll(kWorkerFd, &len, sizeof(len))) return 0;  // host closed the socket
    if (len > kMaxFrameBytes) return 1;
    request.resize(len);
    if (!ReadAll(kWorkerFd, request.data(), len)) return 0;

    size_t out_len = 0;
    alarm(alarm_s);
    int rc = score(request.data(), request.size(), out.data(), out.size(), &out_len);
    if (rc == GRPO_REWARD_BUFFER_TOO_SMALL && out_len > out.size() && out_len <= kMaxFrameBytes) {
      out.resize(out_len);
      out_len = 0;
      rc = score(request.data(), request.size(), out.data(), out.size(), &out_len);
    }
    alarm(0);
    bool sent;
    if (rc == GRPO_REWARD_BUFFER_TOO_SMALL) {
      sent =
          SendFrame(kWorkerError, "plugin response does not fit in " + std::to_string(out.size()) +
                                      " bytes (asked for " + std::to_string(out_len) + ")");
    } else if (out_len > out.size()) {
      sent = SendFrame(kWorkerError, "plugin reported *out_len " + std::to_string(out_len) +
                                         " > out_cap " + std::to_string(out.size()));
    } else {
      sent = SendFrame(rc, out.data(), out_len);
    }
    if (!sent) return 0;
  }
}
