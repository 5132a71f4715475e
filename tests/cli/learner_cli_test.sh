#!/usr/bin/env bash
# End-to-end test of `grpo learner` as a user runs it: help and defaults, config errors with exit
# code 2 naming the key, a 2-step in-process run of the shipped tiny config (metrics, events,
# samples, an HF checkpoint with optimizer and trainer state), --resume continuing to step 3, and
# a run SIGKILLed at an arbitrary point leaving only loadable checkpoints that --resume continues.
# Run by ctest: tests/cli/learner_cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"
# lib.sh's expect_error pipes echo into grep -q under pipefail: when grep exits at the first match
# echo can die of SIGPIPE and a correct message is reported as missing (seen under load with the
# long usage text). Same contract, checked without a pipe.
expect_error() {
  local code=$1 text=$2; shift 2
  set +e; out=$("$@" 2>&1); got=$?; set -e
  [ "$got" = "$code" ] || fail "exit $got (want $code) from: $* -> $out"
  [[ "$out" == *"$text"* ]] || fail "message '$out' lacks '$text'"
}

help=$("$grpo" --help)
[[ "$help" == *"learner "* ]] || fail "grpo --help does not list learner"
help=$("$grpo" learner --help)
[[ "$help" == *"usage: grpo learner"* ]] || fail "grpo learner --help"
"$grpo" learner --print-defaults > "$work/defaults.json"
python3 - "$work/defaults.json" <<'PY' || fail "--print-defaults"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["algorithm"]["clip_low"] == 0.2 and d["algorithm"]["aggregation"] == "token-mean", d
assert d["optimizer"]["lr"] == 1e-6 and d["rollout"]["group_size"] == 8, d
PY

cd "$src"
"$grpo" model init --config configs/learner/tiny_char_moe.json --seed 3 --init-std 0.1 \
  --out "$work/init" >/dev/null
"$grpo" data arith --n 30 --seed 1 --digits 1 --ops + --out "$work/train.jsonl" >/dev/null
cfg=configs/learner/arith_tiny.json
common=(--set model="$work/init" --set output_dir="$work/run" --set data.path="$work/train.jsonl"
        --set rollout.prompts_per_step=4 --set rollout.group_size=4 --set rollout.max_new_tokens=4
        --set checkpoint.every=2)

expect_error 2 "unknown key 'algorithm.clip_hgh'" "$grpo" learner $cfg "${common[@]}" --set algorithm.clip_hgh=0.3
expect_error 2 "group_size" "$grpo" learner $cfg "${common[@]}" --set rollout.group_size=1
expect_error 2 "'optimizer.lr' must be a number" "$grpo" learner $cfg "${common[@]}" --set optimizer.lr=fast
expect_error 2 "missing CONFIG" "$grpo" learner
expect_error 2 "no/such.json" "$grpo" learner no/such.json
expect_error 1 "no checkpoint" "$grpo" learner $cfg "${common[@]}" --set total_steps=1 --resume

"$grpo" learner $cfg "${common[@]}" --set total_steps=2 2> "$work/log.txt" || fail "learner run: $(cat "$work/log.txt")"
grep -q "step 2/2 | reward" "$work/log.txt" || fail "no progress line: $(cat "$work/log.txt")"
[ "$(wc -l < "$work/run/metrics.jsonl")" = 2 ] || fail "metrics.jsonl should have 2 lines"
ls "$work/run"/events.out.tfevents.* >/dev/null || fail "no event file"
[ -s "$work/run/samples.jsonl" ] || fail "no samples"
ck="$work/run/checkpoints/step_00000002"
for f in config.json model.safetensors tokenizer.json optimizer.bin trainer_state.json; do
  [ -f "$ck/$f" ] || fail "checkpoint lacks $f"
done
# The checkpoint is a model directory the other commands load.
"$grpo" model info --model "$ck" >/dev/null || fail "grpo model info on the checkpoint"

"$grpo" learner $cfg "${common[@]}" --set total_steps=3 --resume 2> "$work/log2.txt" || fail "resume: $(cat "$work/log2.txt")"
grep -q "resumed from .*step_00000002" "$work/log2.txt" || fail "did not resume: $(cat "$work/log2.txt")"
python3 - "$work/run/metrics.jsonl" <<'PY' || fail "metrics after resume"
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1])]
assert steps == [1, 2, 3], steps
PY
[ -d "$work/run/checkpoints/step_00000003" ] || fail "no checkpoint at the end"

# A real crash: SIGKILL a run that checkpoints every step, at whatever point it has reached.
# Every checkpoint left behind must be complete and loadable, and --resume must carry on.
"$grpo" learner $cfg "${common[@]}" --set output_dir="$work/crash" --set total_steps=100000 \
  --set checkpoint.every=1 --set checkpoint.keep=2 2>/dev/null &
crash_pid=$!
for _ in $(seq 1 600); do
  [ -d "$work/crash/checkpoints/step_00000004" ] && break
  sleep 0.05
done
kill -KILL "$crash_pid"
wait "$crash_pid" 2>/dev/null || true
n=0
for ck in "$work/crash/checkpoints"/step_*; do
  "$grpo" model info --model "$ck" >/dev/null || fail "checkpoint $ck left by a crash does not load"
  python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$ck/trainer_state.json" ||
    fail "$ck/trainer_state.json is not JSON"
  n=$((n + 1))
done
[ "$n" -ge 1 ] || fail "no checkpoint survived the crash"
last=$(ls -d "$work/crash/checkpoints"/step_* | tail -1 | sed 's/.*step_0*//')
"$grpo" learner $cfg "${common[@]}" --set output_dir="$work/crash" --set total_steps=$((last + 1)) \
  --resume 2> "$work/log3.txt" || fail "resume after SIGKILL: $(cat "$work/log3.txt")"
grep -q "step $((last + 1))/$((last + 1))" "$work/log3.txt" || fail "resume after SIGKILL did not step"
echo "learner CLI: ok"
