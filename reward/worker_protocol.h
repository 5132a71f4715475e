// The wire protocol between IsolatedReward (reward/isolation.cc) and its worker processes
// (reward/worker_main.cc). Internal to grpo: plugins never see it (they see plugin_abi.h).
//
// The worker is exec'd as `grpo_reward_worker <plugin.so> <deadline_ms>` with a connected AF_UNIX
// stream socket on fd kWorkerFd (its stdout is redirected to stderr so plugin prints cannot corrupt
// the stream). All integers are host byte order (both ends are the same machine).
//   worker -> host, once at start: a response frame; code 0 = plugin loaded, otherwise the
//                                  payload says why loading failed and the worker exits.
//   host -> worker, per item:      request frame  = u32 length, request JSON bytes.
//   worker -> host, per item:      response frame = i32 code, u32 length, payload bytes;
//                                  code is the plugin's return code (GRPO_REWARD_OK: payload
//                                  is the response JSON; otherwise an error message) or
//                                  kWorkerError (the worker itself rejected the plugin's output).
// A worker exits when the host closes its end of the socket.
#pragma once

#include <cstdint>

namespace grpo::reward_worker {

inline constexpr int kWorkerFd = 3;
inline constexpr int32_t kWorkerError = -1;
inline constexpr uint32_t kMaxFrameBytes = 64u << 20;  // requests and responses
inline constexpr uint32_t kInitialOutCap = 64u << 10;  // first out_cap offered to the plugin

}  // namespace grpo::reward_worker
