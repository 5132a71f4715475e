#!/usr/bin/env bash
# Every stage on the GPU, as a user runs it: `grpo rollout serve --device cuda` (completions whose
# logprobs match the CPU model's to bf16 precision, deterministic requests refused, status says
# cuda), then the tiny `grpo train` run shortened to 100 GRPO steps with SFT, the learner, its
# rollout worker and both evaluations on the GPU: it must finish and raise the reward as on the
# CPU (tests/cli/train_test.sh). Without a usable GPU it prints SKIPPED and exits 77 (ctest:
# Skipped).
# Run by ctest: tests/cli/gpu_train_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh"
server_pid=""
trap '[ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 1 --init-std 0.1 --out "$work/m" > /dev/null
printf '{"tokens":[1,2,3]}\n' > "$work/probe.jsonl"
if ! out=$("$grpo" model logprobs --model "$work/m" --tokens "$work/probe.jsonl" \
    --out "$work/probe.out" --device cuda 2>&1); then
  echo "SKIPPED: no usable CUDA device ($(tail -n 1 <<<"$out")); GPU end-to-end test not run"
  exit 77
fi

# ---- rollout serve on the GPU.
"$grpo" rollout serve --model "$work/m" --port 0 --kv-budget-mb 16 --max-batch 16 --device cuda \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
port=$(listening_port "$server_pid" "$work/server.out" "$work/server.err" 60)
addr=127.0.0.1:$port
"$grpo" rollout status --address "$addr" | grep -q '"device":"cuda"' || fail "status: not cuda"
printf '{"tokens":[1,2,3,4,5],"prompt_id":1}\n{"tokens":[7,8],"prompt_id":2}\n' > "$work/p.jsonl"
"$grpo" rollout generate --address "$addr" --in "$work/p.jsonl" --out "$work/g.jsonl" \
  --group-size 4 --max-new-tokens 12 --temperature 1 --seed 3
expect_error 1 "--device cpu" "$grpo" rollout generate --address "$addr" --in "$work/p.jsonl" \
  --out "$work/d.jsonl" --deterministic true
# Logprobs against the CPU model on prompt + completion: bf16 weights and K/V on the GPU, so
# close (a trained-scale init; cuda_model_test.cc's tolerances), not equal.
python3 - "$work/p.jsonl" "$work/g.jsonl" "$work/seqs.jsonl" <<'PY'
import json, sys
prompts = [json.loads(l)["tokens"] for l in open(sys.argv[1])]
with open(sys.argv[3], "w") as out:
    for p, line in zip(prompts, open(sys.argv[2])):
        for c in json.loads(line)["completions"]:
            assert c["weight_version"] == 0 and len(c["tokens"]) == len(c["logprobs"]) == 12
            out.write(json.dumps({"tokens": p + c["tokens"]}) + "\n")
PY
"$grpo" model logprobs --model "$work/m" --tokens "$work/seqs.jsonl" --out "$work/lp.jsonl" \
  --device cpu > /dev/null
python3 - "$work/p.jsonl" "$work/g.jsonl" "$work/lp.jsonl" <<'PY' || fail "gpu rollout logprobs vs cpu"
import json, sys
prompts = [json.loads(l)["tokens"] for l in open(sys.argv[1])]
lps = [json.loads(l)["logprobs"] for l in open(sys.argv[3])]
worst, i = 0.0, 0
for p, line in zip(prompts, open(sys.argv[2])):
    for c in json.loads(line)["completions"]:
        ref = lps[i][len(p) - 1:len(p) - 1 + len(c["tokens"])]
        i += 1
        worst = max([worst] + [abs(a - b) for a, b in zip(ref, c["logprobs"])])
print(f"gpu rollout vs cpu logprobs: max |diff| {worst:.3g}")
assert worst <= 0.05, worst
PY
kill -TERM "$server_pid"
wait "$server_pid" || fail "server exited with $? after SIGTERM"
server_pid=""

# ---- grpo train with every stage on the GPU.
cd "$src"
"$grpo" train configs/train/tiny.json --out "$work/run" --set learner.total_steps=100 \
  --set sft.device=cuda --set learner.device=cuda --set learner.rollout.local_device=cuda \
  --set services.rollout_device=cuda --set eval.device=cuda >"$work/log" 2>&1 ||
  { tail -30 "$work/log"; fail "grpo train on the GPU failed"; }
grep -q "learner forward/backward on cuda" "$work/log" || fail "the learner did not run on cuda"
grep -q "sft forward/backward on cuda" "$work/log" || fail "SFT did not run on cuda"
grep -q "rollout engine on cuda" "$work/run/logs/rollout_0.log" || fail "the worker did not run on cuda"
python3 - "$work/run/metrics.jsonl" <<'PY' || fail "reward did not rise on the GPU"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = [x["reward/mean"] for x in rows]
assert len(r) == 100, len(r)
first, last = sum(r[:20]) / 20, sum(r[-20:]) / 20
mm = max(x.get("mismatch/logprob_abs_diff", 0) for x in rows)
print(f"gpu run: mean reward first 20 steps {first:.3f}, last 20 {last:.3f}; "
      f"worst mean |rollout - learner logprob| {mm:.3g}")
assert last > first + 0.08, (first, last)
PY
echo "gpu end to end: all checks passed"
