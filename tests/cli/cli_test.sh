#!/usr/bin/env bash
# End-to-end test of the `grpo model` commands as a user runs them: init -> info -> logprobs ->
# generate, a sharded/bf16 variant, and the one-line errors for bad input. Run by ctest with the
# path of the grpo binary: tests/cli/cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

"$grpo" --help | grep -q "model logprobs" || fail "grpo --help lists no commands"
for sub in init logprobs generate info; do
  "$grpo" model $sub --help | grep -q "usage: grpo model $sub" || fail "grpo model $sub --help"
done

"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 5 --out "$work/m" >/dev/null
[ -f "$work/m/config.json" ] && [ -f "$work/m/model.safetensors" ] || fail "init wrote no checkpoint"
"$grpo" model info --model "$work/m" | grep -q "experts 4 top-2" || fail "info"

printf '{"tokens":[1,2,3,4]}\n\n{"tokens":[7]}\n{"tokens":[5,6,7,8,9,10]}\n' > "$work/in.jsonl"
"$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/lp.jsonl" --entropy true
[ "$(wc -l < "$work/lp.jsonl")" = 3 ] || fail "logprobs: expected 3 lines"
python3 - "$work/lp.jsonl" <<'PY' || fail "logprobs output shape"
import json, sys, math
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [len(r["logprobs"]) for r in rows] == [3, 0, 5], rows
assert all(lp < 0 and math.isfinite(lp) for r in rows for lp in r["logprobs"])
assert all(len(r["entropy"]) == len(r["logprobs"]) for r in rows)
PY

# Same weights through a different batching (one sequence per forward) give the same numbers.
"$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/lp1.jsonl" \
  --entropy true --max-batch-tokens 1
python3 - "$work/lp.jsonl" "$work/lp1.jsonl" <<'PY' || fail "logprobs depend on batching"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert all(abs(x - y) < 1e-5 for ra, rb in zip(a, b) for x, y in zip(ra["logprobs"], rb["logprobs"]))
PY

"$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 5 --out "$work/g0.jsonl"
"$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 5 --out "$work/g1.jsonl"
cmp -s "$work/g0.jsonl" "$work/g1.jsonl" || fail "greedy generation is not deterministic"
"$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 5 \
  --temperature 1 --seed 3 --out "$work/s.jsonl"
python3 - "$work/g0.jsonl" "$work/s.jsonl" <<'PY' || fail "generate output"
import json, sys
for f in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f)]
    assert len(rows) == 3 and all(len(r["tokens"]) == 5 for r in rows), rows
    assert all(0 <= t < 64 for r in rows for t in r["tokens"])
PY

"$grpo" model init --config "$src/configs/tiny_moe.json" --seed 5 --dtype bf16 --out "$work/b" >/dev/null
grep -q bfloat16 "$work/b/config.json" || fail "bf16 init did not record its dtype"

# Bad input: one clear line naming the file (and line), exit 1; usage errors exit 2.
printf '{"tokens":[1,2]}\n{"tokens":[1,"x"]}\n' > "$work/bad.jsonl"
expect_error 1 "bad.jsonl:2" "$grpo" model logprobs --model "$work/m" --tokens "$work/bad.jsonl" --out "$work/o"
printf '{"tokens":[1,2]}\n{"tokens":[1,2\n' > "$work/bad2.jsonl"
expect_error 1 "bad2.jsonl:2: not valid JSON" "$grpo" model logprobs --model "$work/m" --tokens "$work/bad2.jsonl" --out "$work/o"
printf '{"tokens":[1,64]}\n' > "$work/oov.jsonl"
expect_error 1 "outside the vocabulary" "$grpo" model logprobs --model "$work/m" --tokens "$work/oov.jsonl" --out "$work/o"
expect_error 1 "config.json" "$grpo" model logprobs --model "$work/nope" --tokens "$work/in.jsonl" --out "$work/o"
echo '{"model_type":"gpt2"}' > "$work/c.json"
expect_error 1 "field 'model_type'" "$grpo" model init --config "$work/c.json" --out "$work/x"
expect_error 2 "--out is required" "$grpo" model init --config "$src/configs/tiny_moe.json"
expect_error 2 "unknown flag --bogus" "$grpo" model info --model "$work/m" --bogus 1
expect_error 2 "is not an integer" "$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens many --out "$work/o"
cp -r "$work/m" "$work/trunc" && truncate -s 100 "$work/trunc/model.safetensors"
expect_error 1 "model.safetensors" "$grpo" model logprobs --model "$work/trunc" --tokens "$work/in.jsonl" --out "$work/o"
[ ! -e "$work/o" ] || fail "a failed command left an output file"
printf '{"tokens":[]}\n' > "$work/empty.jsonl"
"$grpo" model logprobs --model "$work/m" --tokens "$work/empty.jsonl" --out "$work/e.jsonl"
grep -qx '{"logprobs":\[\]}' "$work/e.jsonl" || fail "an empty sequence should score to []"
expect_error 1 "max_position_embeddings" "$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 100000000000 --out "$work/o"
expect_error 1 "outside the vocabulary" "$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 2 --stop-token 4294967297 --out "$work/o"
expect_error 2 "is not a number" "$grpo" model generate --model "$work/m" --tokens "$work/in.jsonl" --max-new-tokens 2 --temperature hot --out "$work/o"
expect_error 1 "--entropy must be true or false" "$grpo" model logprobs --model "$work/m" --tokens "$work/in.jsonl" --out "$work/o" --entropy yes
[ ! -e "$work/o" ] || fail "a failed command left an output file"
echo "cli_test: all checks passed"
