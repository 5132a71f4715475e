#!/usr/bin/env bash
# End-to-end test of `grpo rollout serve` with the command-line client: serves a tiny random
# Qwen3-MoE on 127.0.0.1 (a free port), generates groups, checks their logprobs against
# `grpo model logprobs`, pushes another checkpoint's weights (and a stale version), checks that
# later completions carry the new version and match the new weights, checks bad input errors,
# then stops the server with SIGTERM and checks it exits 0.
# Run by ctest with the path of the grpo binary: tests/cli/rollout_serve_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh"
server_pid=""
trap '[ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 1 --init-std 0.1 --out "$work/a" > /dev/null
"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 2 --init-std 0.1 --out "$work/b" > /dev/null

# --device: a name that is not a device is refused; cuda on a machine without one says so.
expect_error 2 "'gpu' is not one of auto, cpu, cuda" "$grpo" rollout serve --model "$work/a" --device gpu
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  expect_error 2 "--device cuda:" "$grpo" rollout serve --model "$work/a" --device cuda
fi

"$grpo" rollout serve --model "$work/a" --port 0 --kv-budget-mb 4 --max-batch 16 \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
port=$(listening_port "$server_pid" "$work/server.out" "$work/server.err" 15)
addr=127.0.0.1:$port

printf '{"tokens": [1, 2, 3, 4]}\n{"tokens": [9, 8, 7], "prompt_id": 77}\n{"tokens": [5]}\n' > "$work/prompts.jsonl"
"$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/v0.jsonl" \
  --group-size 4 --max-new-tokens 12 --seed 3 --stop-tokens 0,1 > /dev/null

# Every completion: version 0, tokens/logprobs aligned, a known finish reason; logprobs equal the
# learner's (grpo model logprobs on prompt + completion) within 1e-5.
check() {  # check VERSION MODEL_DIR OUT.jsonl
  python3 - "$1" "$work/prompts.jsonl" "$3" "$work/seqs.jsonl" <<'PY'
import json, sys
version, prompts, out, seqs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
prompts = [json.loads(l)["tokens"] for l in open(prompts)]
groups = [json.loads(l) for l in open(out)]
assert len(groups) == len(prompts), (len(groups), len(prompts))
assert groups[1]["prompt_id"] == 77 and groups[0]["prompt_id"] == 0
with open(seqs, "w") as f:
    for p, g in zip(prompts, groups):
        assert len(g["completions"]) == 4
        for c in g["completions"]:
            assert c["weight_version"] == version, c
            assert len(c["tokens"]) == len(c["logprobs"]) >= 1
            assert c["finish_reason"] in ("stop", "length"), c
            if c["finish_reason"] == "stop":
                assert c["tokens"][-1] in (0, 1) and c["stop_token_id"] == c["tokens"][-1]
            else:
                assert len(c["tokens"]) == 12
            f.write(json.dumps({"tokens": p + c["tokens"]}) + "\n")
PY
  "$grpo" model logprobs --model "$2" --tokens "$work/seqs.jsonl" --out "$work/lp.jsonl" > /dev/null
  python3 - "$work/prompts.jsonl" "$3" "$work/lp.jsonl" <<'PY'
import json, sys
prompts = [json.loads(l)["tokens"] for l in open(sys.argv[1])]
groups = [json.loads(l) for l in open(sys.argv[2])]
lps = [json.loads(l)["logprobs"] for l in open(sys.argv[3])]
i, worst = 0, 0.0
for p, g in zip(prompts, groups):
    for c in g["completions"]:
        learner = lps[i][len(p) - 1:]
        i += 1
        assert len(learner) == len(c["logprobs"])
        worst = max([worst] + [abs(a - b) for a, b in zip(learner, c["logprobs"])])
assert worst <= 1e-5, f"rollout vs learner logprobs differ by {worst}"
print(f"max |rollout - learner| logprob: {worst:.2e}")
PY
}
check 0 "$work/a" "$work/v0.jsonl"

# The same seed again: the same completions.
"$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/v0b.jsonl" \
  --group-size 4 --max-new-tokens 12 --seed 3 --stop-tokens 0,1 > /dev/null
cmp -s "$work/v0.jsonl" "$work/v0b.jsonl" || fail "same seed, different completions"

# Weight update: b as version 1; a stale version is refused and changes nothing.
"$grpo" rollout push-weights --address "$addr" --model "$work/b" --version 1 --chunk-mb 1 > /dev/null
expect_error 1 "not newer" "$grpo" rollout push-weights --address "$addr" --model "$work/a" --version 1
"$grpo" rollout status --address "$addr" | grep -q '"weight_version":1' || fail "status: version not 1"
"$grpo" rollout status --address "$addr" | grep -q '"device":"cpu"' || fail "status: device not cpu"
"$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/v1.jsonl" \
  --group-size 4 --max-new-tokens 12 --seed 3 --stop-tokens 0,1 > /dev/null
check 1 "$work/b" "$work/v1.jsonl"

# Bad input: one clear line naming the field.
printf '{"tokens": [1, 64]}\n' > "$work/bad.jsonl"
expect_error 1 "prompts[0].token_ids[1]" "$grpo" rollout generate --address "$addr" --in "$work/bad.jsonl" --out "$work/x.jsonl"
expect_error 1 "group_size" "$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/x.jsonl" --group-size 0
expect_error 1 "top_p" "$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/x.jsonl" --top-p 2
expect_error 1 "exceed the model's context" "$grpo" rollout generate --address "$addr" --in "$work/prompts.jsonl" --out "$work/x.jsonl" --max-new-tokens 600

# Graceful shutdown.
kill -TERM "$server_pid"
for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server_pid" 2>/dev/null && fail "server still running 10 s after SIGTERM"
wait "$server_pid" || fail "server exited with $? after SIGTERM"
server_pid=""
grep -q "shutting down" "$work/server.err" || fail "no shutdown message"
# A dead server is UNAVAILABLE for the client.
expect_error 1 "rollout $addr" "$grpo" rollout status --address "$addr" --timeout-s 2
echo "rollout serve: all checks passed"
