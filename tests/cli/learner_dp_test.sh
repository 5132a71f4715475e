#!/usr/bin/env bash
# `grpo learner` with data-parallel ranks (learner/local_data_parallel.h) as a user runs it: the
# data_parallel section's errors name the key (exit 2), and a 2-step run of the tiny config with 2
# ranks (threads on the CPU) writes the data_parallel/* metrics and a checkpoint.
# Run by ctest: tests/cli/learner_dp_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

cd "$src"
"$grpo" model init --config configs/learner/tiny_char_moe.json --seed 3 --init-std 0.1 \
  --out "$work/init" >/dev/null
"$grpo" data arith --n 20 --seed 1 --digits 1 --ops + --out "$work/train.jsonl" >/dev/null
cfg=configs/learner/arith_tiny.json
common=(--set model="$work/init" --set output_dir="$work/run" --set data.path="$work/train.jsonl"
        --set rollout.prompts_per_step=4 --set rollout.group_size=4 --set rollout.max_new_tokens=4
        --set algorithm.mini_batches=1)

expect_error 2 "data_parallel.ranks" "$grpo" learner $cfg "${common[@]}" --set data_parallel.ranks=0
expect_error 2 "data_parallel.bucket_mb" "$grpo" learner $cfg "${common[@]}" --set data_parallel.bucket_mb=-1
expect_error 2 "data_parallel.timeout_s" "$grpo" learner $cfg "${common[@]}" --set data_parallel.timeout_s=0
expect_error 2 "unknown key 'data_parallel.rank'" "$grpo" learner $cfg "${common[@]}" --set data_parallel.rank=2

"$grpo" learner $cfg "${common[@]}" --set total_steps=2 --set data_parallel.ranks=2 \
  --set data_parallel.bucket_mb=0.05 --set data_parallel.check_replicas=true 2> "$work/log.txt" \
  || fail "learner with 2 ranks: $(cat "$work/log.txt")"
grep -q "step 2/2 | reward" "$work/log.txt" || fail "no progress line: $(cat "$work/log.txt")"
[ -d "$work/run/checkpoints/step_00000002" ] || fail "no checkpoint at the end"
python3 - "$work/run/metrics.jsonl" <<'PY' || fail "data_parallel metrics"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 2, lines
for m in lines:
    assert m["data_parallel/ranks"] == 2, m
    assert m["data_parallel/bytes"] > 0, m
    assert m["data_parallel/allreduce_s"] >= 0 and m["data_parallel/allreduce_wait_s"] >= 0, m
PY
echo "learner data-parallel CLI: ok"
