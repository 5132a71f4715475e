#!/usr/bin/env bash
# End-to-end test of the `model` reward as a user runs it: `grpo reward score` with the shipped
# configs/rewards/reward_model.json (a tiny reward model plus the math rule, run from the
# repository root since its path is relative), an over-long item rejected per item, a bad model
# path as a config error (exit 2); then the same config served by `grpo reward serve` and scored
# over gRPC through the "remote" reward gives the same results; a bad --queue_size is refused.
# Run by ctest: tests/cli/model_reward_cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

python3 - "$work/in.jsonl" <<'PY'
import json, sys
lines = [
    {"prompt": "What is 6*7?", "completion": "\\boxed{42}", "ground_truth": "42", "data_source": "math"},
    {"prompt": "Say hi", "completion": "hi", "data_source": "chat"},
    {"prompt": "p" * 500, "completion": "long prompt", "data_source": "chat"},
    {"prompt": "x", "completion": "c" * 500, "data_source": "chat"},
]
open(sys.argv[1], "w").write("\n".join(json.dumps(l) for l in lines) + "\n")
PY
(cd "$src" && "$grpo" reward score --config configs/rewards/reward_model.json --in "$work/in.jsonl" \
  --out "$work/out.jsonl") > "$work/log" || fail "reward score with the model reward failed"
grep -q "4 lines, 1 errors" "$work/log" || fail "summary: $(cat "$work/log")"
python3 - "$work/out.jsonl" <<'PY' || fail "model reward output"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
math_row, chat, long_prompt, long_completion = rows
assert math_row["error"] is None and math_row["components"]["math"] == 1.0, math_row
rm = math_row["components"]["rm"]
assert math.isfinite(rm) and rm == math_row["components"]["rm/raw"], math_row
assert abs(math_row["score"] - (1.0 + 0.5 * rm)) < 1e-9, math_row
assert chat["error"] is None and "math" not in chat["components"], chat
assert abs(chat["score"] - 0.5 * chat["components"]["rm"]) < 1e-9, chat
assert long_prompt["error"] is None, long_prompt          # left-truncated to max_length 128
assert "completion alone" in long_completion["error"], long_completion
assert long_completion["score"] == 0.0, long_completion
PY

sed 's#tests/fixtures/reward_model/qwen3#/nonexistent/rm#' "$src/configs/rewards/reward_model.json" \
  > "$work/bad.json"
expect_error 2 "/nonexistent/rm/config.json" \
  "$grpo" reward score --config "$work/bad.json" --in "$work/in.jsonl" --out "$work/o.jsonl"
expect_error 2 "--queue_size must be >= 0" \
  "$grpo" reward serve --config "$src/configs/rewards/countdown.json" --queue_size -1
# Over gRPC: serve the config, score through "remote", expect identical rows.
server_pid=""
trap '[ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT
(cd "$src" && exec "$grpo" reward serve --config configs/rewards/reward_model.json --port 0 \
  --queue_size 4 --workers 1) > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
# The line appears once the model is loaded.
port=$(listening_port "$server_pid" "$work/server.out" "$work/server.err" 30)
printf '{"rewards": [{"name": "remote", "params": {"address": "127.0.0.1:%s", "deadline_ms": 30000}}]}\n' \
  "$port" > "$work/remote.json"
"$grpo" reward score --config "$work/remote.json" --in "$work/in.jsonl" --out "$work/remote.jsonl" \
  > "$work/remote.log" || fail "scoring through the server failed"
python3 - "$work/out.jsonl" "$work/remote.jsonl" <<'PY' || fail "remote scores differ from local ones"
import json, sys
local = [json.loads(l) for l in open(sys.argv[1])]
remote = [json.loads(l) for l in open(sys.argv[2])]
assert len(local) == len(remote) == 4
for l, r in zip(local, remote):
    if l["error"] is None:
        assert r["error"] is None and r["score"] == l["score"], (l, r)
        assert r["components"]["remote"] == l["score"], (l, r)
        assert r["components"]["remote/rm"] == l["components"]["rm"], (l, r)
    else:
        assert "completion alone" in r["error"], r
PY
kill -TERM "$server_pid"
wait "$server_pid" || fail "server exited with $? after SIGTERM"
server_pid=""
echo "model reward CLI: ok"
