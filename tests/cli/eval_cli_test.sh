#!/usr/bin/env bash
# End-to-end test of `grpo eval` as a user runs it: a tiny random model on one-digit arithmetic
# with a regex reward, greedy (--samples 1) and sampled (--samples 4) runs, the printed summary,
# --json and --out contents checked against each other, and errors: a missing file, a bad dataset
# line, bad flag values, an unknown stop token and a tokenizer larger than the model's vocabulary.
# Run by ctest: tests/cli/eval_cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

"$grpo" --help | grep -q "eval" || fail "grpo --help does not list eval"
"$grpo" eval --help | grep -q "usage: grpo eval" || fail "grpo eval --help"

cd "$src"
"$grpo" model init --config configs/learner/tiny_char_moe.json --seed 3 --init-std 0.3 \
  --out "$work/m" >/dev/null
"$grpo" data arith --n 12 --seed 1 --digits 1 --ops + --out "$work/data.jsonl" >/dev/null
# A random policy emits a digit somewhere in 6 characters often but not always.
echo '{"rewards": [{"name": "regex_match", "params": {"pattern": "[0-9]"}}]}' > "$work/r.json"
common=(--model "$work/m" --tokenizer configs/toy_tokenizer.json --data "$work/data.jsonl"
        --reward "$work/r.json" --template "{prompt} " --max-new-tokens 6 --seed 5)

"$grpo" eval "${common[@]}" > "$work/greedy.txt" 2> "$work/err.txt" || fail "eval: $(cat "$work/err.txt")"
for s in "12 prompts x 1 samples = 12 completions (temperature 0" "accuracy" "pass@1" \
         "mean reward" "regex_match" "mean length" "reward errors  0"; do
  grep -qF "$s" "$work/greedy.txt" || fail "summary lacks '$s': $(cat "$work/greedy.txt")"
done
grep -q "pass@2" "$work/greedy.txt" && fail "pass@2 with one sample"

"$grpo" eval "${common[@]}" --samples 4 --json --out "$work/rows.jsonl" > "$work/s.json" \
  || fail "eval --samples 4"
"$grpo" eval "${common[@]}" --samples 4 > "$work/s4.txt" || fail "eval --samples 4 (text)"
grep -qF "pass@4" "$work/s4.txt" || fail "no pass@4: $(cat "$work/s4.txt")"
python3 - "$work/s.json" "$work/rows.jsonl" <<'PY' || fail "summary vs records"
import json, sys
s = json.load(open(sys.argv[1]))
rows = [json.loads(l) for l in open(sys.argv[2])]
assert s["prompts"] == 12 and s["completions"] == 48 and s["samples"] == 4, s
assert s["temperature"] == 1.0, s
assert sorted(s["pass_at_k"]) == ["1", "2", "4"], s
assert len(rows) == 12 and [r["line"] for r in rows] == list(range(1, 13)), rows
comps = [c for r in rows for c in r["completions"]]
assert all(len(r["completions"]) == 4 for r in rows)
correct = sum(c["correct"] for c in comps)
assert 0 < correct < 48, f"the reward should split the completions, {correct}/48 correct"
assert all(c["correct"] == (c["reward"] >= 1.0) for c in comps)
assert abs(s["accuracy"] - correct / 48) < 1e-9, (s, correct)
assert abs(s["mean_reward"] - sum(c["reward"] for c in comps) / 48) < 1e-9
assert abs(s["mean_response_tokens"] - sum(c["num_tokens"] for c in comps) / 48) < 1e-9
assert abs(s["pass_at_k"]["1"] - s["accuracy"]) < 1e-9
any_ok = sum(r["num_correct"] > 0 for r in rows) / 12
assert abs(s["pass_at_k"]["4"] - any_ok) < 1e-9, (s, any_ok)
assert s["pass_at_k"]["1"] <= s["pass_at_k"]["2"] <= s["pass_at_k"]["4"]
PY
# Same seed, same records; --limit keeps the first rows' completions.
"$grpo" eval "${common[@]}" --samples 4 --json --out "$work/rows2.jsonl" > /dev/null
cmp -s "$work/rows.jsonl" "$work/rows2.jsonl" || fail "two runs with one seed differ"
"$grpo" eval "${common[@]}" --samples 4 --limit 3 --json --out "$work/rows3.jsonl" > /dev/null
head -3 "$work/rows.jsonl" | cmp -s - "$work/rows3.jsonl" || fail "--limit 3 changed the first rows"

# Errors.
expect_error 1 "no/such.jsonl" "$grpo" eval "${common[@]}" --data "$work/no/such.jsonl"
expect_error 1 "no/such.json" "$grpo" eval "${common[@]}" --reward "$work/no/such.json"
printf '%s\n' "$(head -1 "$work/data.jsonl")" '{"prompt": "1+1=", "data_source": "arith"}' > "$work/bad.jsonl"
expect_error 1 "bad.jsonl:2" "$grpo" eval "${common[@]}" --data "$work/bad.jsonl"
expect_error 2 "--samples: 'many' is not an integer" "$grpo" eval "${common[@]}" --samples many
expect_error 2 "--samples: 0 must be >= 1" "$grpo" eval "${common[@]}" --samples 0
expect_error 2 "--device: 'gpu' is not one of auto, cpu, cuda" "$grpo" eval "${common[@]}" --device gpu
expect_error 2 "--top-p" "$grpo" eval "${common[@]}" --top-p 2
expect_error 2 "--model is required" "$grpo" eval --data "$work/data.jsonl" --reward "$work/r.json"
expect_error 2 "'<|nope|>' is not a token" "$grpo" eval "${common[@]}" --stop-tokens "<|nope|>"
expect_error 2 "--template" "$grpo" eval "${common[@]}" --template nonsense
echo '{"rewards": [{"name": "no_such_reward"}]}' > "$work/badr.json"
expect_error 2 "badr.json" "$grpo" eval "${common[@]}" --reward "$work/badr.json"
expect_error 1 "data.jsonl:1: the prompt has" "$grpo" eval "${common[@]}" --max-new-tokens 1000
"$grpo" model init --config configs/tiny_moe.json --seed 1 --out "$work/small" >/dev/null
expect_error 1 "vocab_size is 64" "$grpo" eval "${common[@]}" --model "$work/small"
echo "eval CLI ok"
