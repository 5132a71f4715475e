#!/usr/bin/env bash
# End-to-end test of `grpo tokenize` / `grpo detokenize` as a user runs them: a round trip
# through the toy and Qwen2-style tokenizers, ids checked against the HF fixture, and the
# one-line file:line errors for bad input. Run by ctest: tests/cli/tokenize_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

"$grpo" --help | grep -q "detokenize" || fail "grpo --help lists no tokenize commands"
"$grpo" tokenize --help | grep -q "usage: grpo tokenize" || fail "tokenize --help"
"$grpo" detokenize --help | grep -q "usage: grpo detokenize" || fail "detokenize --help"

# Toy tokenizer: ids are bytes, then the added tokens from 256.
printf '{"text":"<|im_start|>1+2=3<|im_end|>"}\n\n{"text":"<answer>é</answer>"}\n' > "$work/in.jsonl"
"$grpo" tokenize --tokenizer "$src/configs/toy_tokenizer.json" --in "$work/in.jsonl" --out "$work/ids.jsonl"
[ "$(sed -n 1p "$work/ids.jsonl")" = '{"ids":[257,49,43,50,61,51,258]}' ] || fail "toy ids: $(cat "$work/ids.jsonl")"
[ "$(sed -n 2p "$work/ids.jsonl")" = '{"ids":[261,195,169,262]}' ] || fail "toy ids line 2"
"$grpo" detokenize --tokenizer "$src/configs/toy_tokenizer.json" --in "$work/ids.jsonl" \
  --out "$work/back.jsonl" --skip-special-tokens true
[ "$(sed -n 1p "$work/back.jsonl")" = '{"text":"1+2=3"}' ] || fail "toy detokenize skip special"
[ "$(sed -n 2p "$work/back.jsonl")" = '{"text":"<answer>é</answer>"}' ] || fail "toy detokenize line 2"

# Qwen2 style: the same ids as HF recorded in the fixture.
python3 - "$src/tests/fixtures/tokenizer/cases.jsonl" "$work/q_in.jsonl" "$work/q_want.jsonl" <<'PY'
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["tokenizer"] == "qwen2"]
with open(sys.argv[2], "w") as f:
  f.writelines(json.dumps({"text": c["text"]}) + "\n" for c in cases)
with open(sys.argv[3], "w") as f:
  f.writelines(json.dumps({"ids": c["ids"]}, separators=(",", ":")) + "\n" for c in cases)
PY
"$grpo" tokenize --tokenizer "$src/tests/fixtures/tokenizer/qwen2.json" --in "$work/q_in.jsonl" \
  --out "$work/q_ids.jsonl" --threads 2
cmp -s "$work/q_ids.jsonl" "$work/q_want.jsonl" || fail "qwen2 ids differ from HF"

# Errors: one line naming file:line, exit code 1; a missing flag is a usage error (2).
printf '{"text":"ok"}\n{"txt":"bad"}\n' > "$work/bad.jsonl"
set +e
"$grpo" tokenize --tokenizer "$src/configs/toy_tokenizer.json" --in "$work/bad.jsonl" --out "$work/x" 2> "$work/err"
rc=$?
set -e
[ $rc = 1 ] && grep -q "bad.jsonl:2:" "$work/err" || fail "bad text line: rc $rc, $(cat "$work/err")"
printf '{"ids":[1]}\n{"ids":[1,99999]}\n' > "$work/badids.jsonl"
set +e
"$grpo" detokenize --tokenizer "$src/configs/toy_tokenizer.json" --in "$work/badids.jsonl" --out "$work/x" 2> "$work/err"
rc=$?
"$grpo" tokenize --tokenizer "$src/configs/toy_tokenizer.json" --in "$work/in.jsonl" 2>/dev/null
rc2=$?
set -e
[ $rc = 1 ] && grep -q "badids.jsonl:2:.*99999" "$work/err" || fail "bad id line: rc $rc, $(cat "$work/err")"
[ $rc2 = 2 ] || fail "missing --out should be a usage error, got $rc2"
echo "tokenize/detokenize CLI: all checks passed"
