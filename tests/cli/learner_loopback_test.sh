#!/usr/bin/env bash
# Loopback integration: `grpo learner` with two `grpo rollout serve` workers and a `grpo reward
# serve` reward service, all on 127.0.0.1, for 3 steps; rollout worker 1 is killed (SIGKILL) while
# step 2 is running. Every step must still train on every group (the dead worker's undelivered
# groups re-issued to the other one), the run must end with one worker alive, and the final
# checkpoint must load. Run by ctest: tests/cli/learner_loopback_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"
pids=()
cleanup_all() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup_all EXIT

# Starts "$@" in the background, stdout to $work/$name.out; sets $port once it prints
# "listening on 127.0.0.1:PORT" and appends its pid to pids.
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  last_pid=$!
  pids+=("$last_pid")
  disown "$last_pid"  # no "Killed" job notices when the test kills it
  port=$(listening_port "$last_pid" "$work/$name.out" "$work/$name.err" 30) || fail "$name"
}

cd "$src"
"$grpo" model init --config configs/learner/tiny_char_moe.json --seed 3 --init-std 0.1 \
  --out "$work/init" >/dev/null
cp configs/toy_tokenizer.json "$work/init/tokenizer.json"
"$grpo" data arith --n 40 --seed 1 --digits 1 --ops + --out "$work/train.jsonl" >/dev/null
echo '{"rewards": [{"name": "regex_match", "params": {"pattern": "[0-9]"}}]}' > "$work/reward.json"

start rollout0 "$grpo" rollout serve --model "$work/init" --port 0; port0=$port
start rollout1 "$grpo" rollout serve --model "$work/init" --port 0; port1=$port; pid1=$last_pid
start reward "$grpo" reward serve --config "$work/reward.json" --port 0; port_r=$port

cat > "$work/run.json" <<JSON
{
  "model": "$work/init",
  "output_dir": "$work/run",
  "seed": 7,
  "total_steps": 6,
  "data": {"path": "$work/train.jsonl", "seed": 1},
  "chat_template": {"name": "custom", "custom": "{prompt} Answer: "},
  "reward": {"rewards": [{"name": "remote", "params": {"address": "127.0.0.1:$port_r"}}]},
  "rollout": {"workers": ["127.0.0.1:$port0", "127.0.0.1:$port1"], "group_size": 8,
              "prompts_per_step": 8, "max_new_tokens": 48, "timeout_s": 60},
  "algorithm": {"kl_coef": 0.04, "mini_batches": 2},
  "optimizer": {"lr": 1e-3}
}
JSON

"$grpo" learner "$work/run.json" 2> "$work/learner.err" &
learner=$!
pids+=($learner)
# Kill worker 1 as soon as step 1 is done, i.e. while a later step is generating. A step of this
# tiny model can take under 0.1 s on an idle machine, so the run has 6 steps: the kill lands
# well before the last one.
for _ in $(seq 1 600); do
  grep -q "^step 1/6" "$work/learner.err" && break
  kill -0 "$learner" 2>/dev/null || fail "learner died in step 1: $(cat "$work/learner.err")"
  sleep 0.05
done
grep -q "^step 1/6" "$work/learner.err" || fail "learner did not finish step 1 in 30 s"
kill -KILL "$pid1"
rc=0
wait "$learner" || rc=$?
[ "$rc" = 0 ] || fail "learner exited $rc: $(cat "$work/learner.err")"

python3 - "$work/run/metrics.jsonl" <<'PY' || fail "metrics: $(cat "$work/learner.err")"
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
assert [x["step"] for x in m] == [1, 2, 3, 4, 5, 6], m
for x in m:
    assert x["rollout/groups_trained"] == 8, x      # every group, every step
    assert x["reward/errors"] == 0, x              # the remote reward answered
assert m[0]["rollout/workers_alive"] == 2 and m[-1]["rollout/workers_alive"] == 1, m
reissued = sum(x["rollout/groups_reissued"] for x in m)
print(f"loopback: 6 steps, 8 groups each; worker killed; {reissued:.0f} groups re-issued; "
      f"reward {m[0]['reward/mean']:.3f} -> {m[-1]['reward/mean']:.3f}")
PY
grep -q "rollout worker lost\|weight push to" "$work/learner.err" || fail "no sign of the lost worker in the log"
"$grpo" model info --model "$work/run/checkpoints/step_00000006" >/dev/null || fail "final checkpoint"
cat "$work/learner.err" >&2
echo "learner loopback: ok"
