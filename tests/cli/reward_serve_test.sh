#!/usr/bin/env bash
# End-to-end test of `grpo reward serve` and the "remote" reward: serves the countdown config on
# 127.0.0.1 (a free port), scores through it with `grpo reward score` and a config whose only
# reward is "remote", stops it with SIGTERM and checks it exits 0; then does the same against the
# Python example server (examples/reward_server.py, run with Debian's /usr/bin/python3, which
# scripts/setup.sh equips with grpcio). Run by ctest with the path of the grpo binary:
# tests/cli/reward_serve_test.sh BUILD/cli/grpo
set -euo pipefail
grpo=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/server.err" ] && cat "$work/server.err" >&2; exit 1; }

"$py" -c "import grpc, grpc_tools.protoc, google.protobuf" 2>/dev/null ||
  fail "$py lacks grpcio/grpc_tools/protobuf: run scripts/setup.sh (installs python3-grpcio python3-grpc-tools python3-protobuf)"

# Starts "$@" in the background with stdout in $work/server.out; sets server_pid and port.
start_server() {
  : > "$work/server.out"
  "$@" > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
  port=""
  for _ in $(seq 1 150); do  # up to 15 s
    # The background shell may not have created the file yet: no file, no port (yet).
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]\+\)$/\1/p' "$work/server.out" \
      2>/dev/null || true)
    [ -n "$port" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || fail "server exited before listening: $*"
    sleep 0.1
  done
  fail "server did not print 'listening on 127.0.0.1:PORT': $*"
}

# Sends SIGTERM and waits (at most 10 s) for a clean exit.
stop_server() {
  kill -TERM "$server_pid"
  for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      local rc=0
      wait "$server_pid" || rc=$?
      server_pid=""
      [ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
      return 0
    fi
    sleep 0.1
  done
  fail "server still running 10 s after SIGTERM"
}

remote_config() {
  printf '{"rewards": [{"name": "remote", "params": {"address": "127.0.0.1:%s", "deadline_ms": 5000, "failure_score": -1}}], "failure_score": -1}\n' "$1" > "$work/remote.json"
}

"$grpo" reward serve --help | grep -q "usage: grpo reward serve" || fail "grpo reward serve --help"
"$grpo" reward serve 2>/dev/null && fail "serve without --config should fail"

# ---- grpo reward serve ----
"$py" - "$work/in.jsonl" <<'PY'
import json, sys
gt = {"target": 65, "numbers": [19, 36, 55, 7]}
good = "<think>55 + 36 = 91</think>\n<answer>55 + 36 - 7 - 19</answer>"
lines = [
    json.dumps({"completion": good, "ground_truth": gt, "data_source": "countdown"}),
    json.dumps({"completion": "<think>hm</think>\n<answer>55 + 36</answer>", "ground_truth": gt,
                "data_source": "countdown"}),
    json.dumps({"completion": good, "ground_truth": gt, "data_source": "gsm8k"}),
]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
start_server "$grpo" reward serve --config "$src/configs/rewards/countdown.json" --port 0
remote_config "$port"
"$grpo" reward score --config "$src/configs/rewards/countdown.json" --in "$work/in.jsonl" \
  --out "$work/direct.jsonl" > /dev/null || fail "direct reward score"
"$grpo" reward score --config "$work/remote.json" --in "$work/in.jsonl" --out "$work/remote.jsonl" \
  > "$work/log" || fail "remote reward score"
"$py" - "$work/direct.jsonl" "$work/remote.jsonl" <<'PY' || fail "remote scores differ from direct"
import json, sys
direct = [json.loads(l) for l in open(sys.argv[1])]
remote = [json.loads(l) for l in open(sys.argv[2])]
assert len(direct) == len(remote) == 3, (direct, remote)
assert direct[0]["score"] > 1.0 and direct[0]["error"] is None, direct[0]
for i in (0, 1):
    assert remote[i]["error"] is None, remote[i]
    assert abs(remote[i]["score"] - direct[i]["score"]) < 1e-12, (remote[i], direct[i])
    assert remote[i]["components"]["remote"] == direct[i]["score"], remote[i]
# The server's per-item error comes back per item: no reward for data_source gsm8k.
assert remote[2]["error"] and "gsm8k" in remote[2]["error"], remote[2]
assert remote[2]["score"] == -1, remote[2]
PY
stop_server

# A dead server: every line gets the remote error, nothing crashes.
"$grpo" reward score --config "$work/remote.json" --in "$work/in.jsonl" --out "$work/dead.jsonl" \
  > "$work/log" || fail "reward score against a dead server"
grep -q "3 lines, 3 errors" "$work/log" || fail "dead server summary: $(cat "$work/log")"
grep -q "remote reward 127.0.0.1:$port" "$work/dead.jsonl" || fail "dead server error text"

# ---- the Python example server ----
"$py" - "$work/py_in.jsonl" <<'PY'
import json, sys
lines = [
    json.dumps({"completion": "the answer is 42", "ground_truth": "42"}),
    json.dumps({"completion": "the answer is 41", "ground_truth": "42"}),
    json.dumps({"completion": "no truth"}),
]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
start_server "$py" "$src/examples/reward_server.py" --port 0
remote_config "$port"
"$grpo" reward score --config "$work/remote.json" --in "$work/py_in.jsonl" --out "$work/py_out.jsonl" \
  > "$work/log" || fail "reward score through the Python server"
"$py" - "$work/py_out.jsonl" <<'PY' || fail "Python server scores"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["score"] for r in rows] == [1.0, 0.0, -1], rows
assert rows[0]["error"] is None and rows[0]["components"]["remote/contains"] == 1.0, rows[0]
assert "missing ground truth" in rows[2]["error"], rows[2]
PY
stop_server
echo "PASS"
