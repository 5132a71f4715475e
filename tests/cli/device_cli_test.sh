#!/usr/bin/env bash
# `grpo model logprobs --device`: cpu works everywhere, a bad value is one clear error, and cuda
# either works (a GPU is present) or says why not and what to use instead.
source "$(dirname "$0")/lib.sh"
"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 1 --out "$work/m" >/dev/null
printf '{"tokens":[1,2,3,4]}\n{"tokens":[5,6]}\n' > "$work/in.jsonl"
"$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/cpu.jsonl" --device cpu
[ "$(wc -l < "$work/cpu.jsonl")" = 2 ] || fail "--device cpu: expected 2 lines"
expect_error 1 "is not one of auto, cpu, cuda" \
  "$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/x.jsonl" --device tpu
set +e
out=$("$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/gpu.jsonl" \
  --device cuda 2>&1)
code=$?
set -e
if [ $code = 0 ]; then
  # A GPU: bf16 numerics, so close to (not equal to) the CPU's fp32 logprobs.
  python3 - "$work/cpu.jsonl" "$work/gpu.jsonl" <<'PY' || fail "--device cuda logprobs differ from cpu"
import json, sys
a = [json.loads(l)["logprobs"] for l in open(sys.argv[1])]
b = [json.loads(l)["logprobs"] for l in open(sys.argv[2])]
assert len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b))
assert all(abs(x - y) <= 0.02 + 0.02 * abs(x) for r, s in zip(a, b) for x, y in zip(r, s)), (a, b)
PY
else
  echo "$out" | grep -q -- "--device cuda" || fail "--device cuda without a GPU: unclear error: $out"
  echo "$out" | grep -q -- "use --device cpu" || fail "--device cuda error names no fix: $out"
fi
echo PASS
