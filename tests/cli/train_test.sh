# `grpo train` end to end: a shortened tiny run (SFT warm start, base eval, reward service and a
# rollout worker on loopback, GRPO, final eval, plot) must raise the reward; plus --check, config
# errors and Ctrl-C stopping every process.
source "$(dirname "$0")/lib.sh"
cd "$src"
rundir=$work/run

# configs/train/tiny.json shortened to 100 GRPO steps (of 1200). The run is deterministic in its
# seeds, so these are the first 100 steps of the full run.
"$grpo" train configs/train/tiny.json --out "$rundir" \
  --set learner.total_steps=100 --set learner.checkpoint.every=50 >"$work/log" 2>&1 ||
  { tail -30 "$work/log"; fail "grpo train failed"; }
for f in config.json data/train.jsonl data/eval.jsonl sft/config.json learner.json \
         metrics.jsonl samples.jsonl summary.json metrics.svg eval_base.json eval_final.json; do
  [ -s "$rundir/$f" ] || fail "missing $rundir/$f"
done
ls "$rundir"/events.out.tfevents.* >/dev/null || fail "no TensorBoard events"
ls -d "$rundir"/checkpoints/step_00000100 >/dev/null || fail "no final checkpoint"
grep -q "held-out accuracy" "$work/log" || fail "no summary line"

# The reward must rise. Each step's mean reward averages 128 completions of rewards in [0, 1.1],
# so its standard deviation is at most 0.55/sqrt(128) = 0.049; the mean of 20 steps' means has
# sd <= 0.011 and the difference of two such means sd <= 0.016. A margin of 0.08 is 5 sd: a run
# that does not learn passes with probability < 1e-6, while this one gains ~0.16 (measured on
# the full run: mean reward of steps 1-20 0.311, of steps 81-100 0.479).
python3 - "$rundir/metrics.jsonl" <<'PY' || fail "reward did not rise"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = [x["reward/mean"] for x in rows]
assert len(r) == 100, len(r)
first, last = sum(r[:20]) / 20, sum(r[-20:]) / 20
print(f"mean reward: first 20 steps {first:.3f}, last 20 steps {last:.3f}")
assert last > first + 0.08, (first, last)
assert any("eval/accuracy" in x for x in rows), "no held-out evaluation logged"
PY

# A second run into the same directory is refused unless told to continue or replace it.
expect_error 1 "already holds a run" "$grpo" train configs/train/tiny.json --out "$rundir"
# --overwrite replaces it: a 2-step run leaves no checkpoint or metrics of the 100-step one.
# It also runs with bf16 weights (fp32 master copies) in SFT and the learner: both write bf16
# checkpoints, and the learner's gRPC updates reach the worker as bf16-valued weights. SFT and
# the learner take device auto (the GPU where there is one, so this also runs them there).
cp -r "$rundir" "$work/run2"
"$grpo" train configs/train/tiny.json --out "$work/run2" --overwrite --set sft.steps=5 \
  --set sft.device=auto --set learner.device=auto \
  --set learner.total_steps=2 --set sft.optimizer.weight_dtype=bf16 \
  --set learner.optimizer.weight_dtype=bf16 >"$work/log2" 2>&1 ||
  { tail -20 "$work/log2"; fail "--overwrite run"; }
grep -q '"torch_dtype": "bfloat16"' "$work/run2/sft/config.json" || fail "bf16 SFT model not bf16"
grep -q '"torch_dtype": "bfloat16"' "$work/run2/checkpoints/step_00000002/config.json" ||
  fail "bf16 learner checkpoint not bf16"
# The weights of the worker's last update are all bf16-exact ("N of N"; an fp32 learner's
# updated weights pack none at 2 bytes, while the bf16 SFT model it starts from packs all).
grep -rhoE "[0-9]+ of [0-9]+ weights packed at 2 bytes" "$work/run2/logs" | tail -n 1 |
  awk '$1 == $3 && $1 > 0 { ok = 1 } END { exit !ok }' ||
  fail "the rollout worker did not get bf16-valued weights"
# ...over the wire as bf16: half the bytes of the fp32 run's updates.
sync_bytes() { head -n 1 "$1" | grep -oE '"weight_sync/bytes": *[0-9.]+' | grep -oE '[0-9.]+$'; }
awk -v a="$(sync_bytes "$rundir/metrics.jsonl")" -v b="$(sync_bytes "$work/run2/metrics.jsonl")" \
  'BEGIN { exit !(a > 0 && b * 2 == a) }' || fail "bf16 weight updates did not go as bf16"
[ "$(wc -l <"$work/run2/metrics.jsonl")" = 2 ] || fail "old metrics kept after --overwrite"
[ ! -e "$work/run2/checkpoints/step_00000100" ] || fail "old checkpoint kept after --overwrite"
grep -q '"final_checkpoint": ".*step_00000002"' "$work/run2/summary.json" || fail "wrong final checkpoint"

# Every child process is gone after the run.
pgrep -f "$rundir" >/dev/null && fail "processes of the run are still alive"

# --check validates the shipped configs without running anything.
"$grpo" train configs/train/tiny.json --check | grep -q "config OK" || fail "tiny config check"
"$grpo" train configs/train/qwen3_moe_math.json --check | grep -q "config OK" ||
  fail "qwen3 math config check"
expect_error 1 "learner: unknown key 'algorithm.clip_lo'" \
  "$grpo" train configs/train/tiny.json --check --set learner.algorithm.clip_lo=0.1
expect_error 1 "unknown key 'modle'" "$grpo" train configs/train/tiny.json --check --set modle.x=1
expect_error 1 'sft: device "gpu" is not one of cpu, cuda, auto' \
  "$grpo" train configs/train/tiny.json --check --set sft.device=gpu
expect_error 1 "sft: data.wrong_fraction must be in [0, 1]" \
  "$grpo" train configs/train/tiny.json --check --set sft.data.wrong_fraction=2
expect_error 1 "services.rollout_device: 'gpu' is not one of cpu, cuda, auto" \
  "$grpo" train configs/train/tiny.json --check --set services.rollout_device=gpu
expect_error 1 "cannot serve learner.rollout.deterministic" "$grpo" train configs/train/tiny.json \
  --check --set services.rollout_device=cuda --set learner.rollout.deterministic=true
expect_error 2 "CONFIG.json is required" "$grpo" train
expect_error 1 "nope.json" "$grpo" train "$work/nope.json"

# Ctrl-C during the run stops it and every process it started; --resume is suggested.
"$grpo" train configs/train/tiny.json --out "$work/int" --set sft.steps=100000 >"$work/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do grep -q "sft step\|supervised" "$work/int.log" && break; sleep 0.1; done
sleep 1
kill -INT $pid
set +e; wait $pid; code=$?; set -e
[ "$code" = 130 ] || fail "exit $code after SIGINT (want 130): $(tail -5 "$work/int.log")"
grep -q "Continue with --resume" "$work/int.log" || fail "no resume hint"
sleep 0.5
pgrep -f "$work/int" >/dev/null && fail "a child of the interrupted run is still alive"
echo "train tests passed"
