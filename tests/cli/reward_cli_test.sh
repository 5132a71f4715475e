#!/usr/bin/env bash
# End-to-end test of `grpo reward score` as a user runs it: the shipped countdown config scores
# good lines, malformed lines become per-line errors (never a crash), config mistakes exit 2 and an
# unreadable input exits 1. Run by ctest with the path of the grpo binary:
# tests/cli/reward_cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

"$grpo" --help | grep -q "reward score" || fail "grpo --help does not list reward score"
"$grpo" reward score --help | grep -q "usage: grpo reward score" || fail "grpo reward score --help"

python3 - "$work/in.jsonl" <<'PY'
import json, sys
gt = {"target": 65, "numbers": [19, 36, 55, 7]}
good = "<think>55 + 36 = 91, 91 - 26 = 65</think>\n<answer>55 + 36 - 7 - 19</answer>"
lines = [
    json.dumps({"prompt": "Assistant: <think>", "completion": good[7:], "ground_truth": gt, "data_source": "countdown"}),
    json.dumps({"completion": "<think>hm</think>\n<answer>55 + 36</answer>", "ground_truth": gt,
                "data_source": "countdown", "completion_ids": [1, 2, 3], "extra": {"k": 1}}),
    "{not json",
    json.dumps(["an", "array"]),
    json.dumps({"prompt": "p", "ground_truth": gt, "data_source": "countdown"}),
    json.dumps({"completion": 5, "data_source": "countdown"}),
    "",
    json.dumps({"completion": good, "ground_truth": gt, "data_source": "gsm8k"}),
    json.dumps({"completion": good, "ground_truth": {"target": "x", "numbers": [1]}, "data_source": "countdown"}),
    json.dumps({"completion": good, "ground_truth": gt, "data_source": "countdown", "completion_ids": [-1]}),
]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
"$grpo" reward score --config "$src/configs/rewards/countdown.json" --in "$work/in.jsonl" \
  --out "$work/out.jsonl" > "$work/log" || fail "reward score failed on bad lines"
grep -q "9 lines, 7 errors" "$work/log" || fail "summary: $(cat "$work/log")"
python3 - "$work/out.jsonl" <<'PY' || fail "reward score output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 9, len(rows)  # the blank line is skipped
for r in rows:
    assert set(r) == {"score", "components", "error"}, r
ok, wrong = rows[0], rows[1]
assert ok["error"] is None and abs(ok["score"] - 1.1) < 1e-12, ok            # 1.0 + 0.1 * format 1
assert ok["components"]["countdown"] == 1.0 and ok["components"]["format"] == 1.0, ok
assert ok["components"]["countdown/correct"] == 1.0, ok
assert wrong["error"] is None and abs(wrong["score"] - 0.2) < 1e-12, wrong   # 0.1 + 0.1 * format 1
assert rows[2]["error"].startswith("line 3: not valid JSON"), rows[2]
assert rows[3]["error"] == "line 4: expected an object, got array", rows[3]
assert rows[4]["error"] == 'line 5: missing "completion"', rows[4]
assert rows[5]["error"] == 'line 6: "completion" must be a string, got integer', rows[5]
assert rows[6]["error"] == 'no reward function for data_source "gsm8k"', rows[6]
assert rows[7]["error"].startswith("countdown: countdown ground_truth.target must be an integer"), rows[7]
assert rows[8]["error"].startswith('line 10: "completion_ids" must hold token ids'), rows[8]
for r in rows[2:]:
    assert r["score"] == 0.0 and r["components"] == {} or r is rows[7], r
PY

# Config mistakes exit 2 with the field named; an unreadable input exits 1.
expect() {
  local want=$1; shift
  local rc=0
  "$grpo" "$@" >/dev/null 2>"$work/err" || rc=$?
  [ "$rc" = "$want" ] || fail "expected exit $want from: grpo $* (got $rc)"
  [ -s "$work/err" ] || fail "no message from: grpo $*"
}
echo '{"rewards":[{"name":"countdown","wieght":1}]}' > "$work/bad.json"
expect 2 reward score --config "$work/bad.json" --in "$work/in.jsonl" --out "$work/x.jsonl"
grep -q "unknown field 'wieght'" "$work/err" || fail "bad config message: $(cat "$work/err")"
echo '{"rewards":[{"name":"countdown","params":{"score":"high"}}]}' > "$work/bad2.json"
expect 2 reward score --config "$work/bad2.json" --in "$work/in.jsonl" --out "$work/x.jsonl"
grep -q "'score' must be a number" "$work/err" || fail "bad params message: $(cat "$work/err")"
expect 1 reward score --config "$src/configs/rewards/countdown.json" --in "$work/missing.jsonl" --out "$work/x.jsonl"
expect 1 reward score --config "$work/missing.json" --in "$work/in.jsonl" --out "$work/x.jsonl"
expect 2 reward score --config "$src/configs/rewards/countdown.json" --in "$work/in.jsonl"
expect 2 reward nonsense
expect 2 reward
[ ! -e "$work/x.jsonl" ] || fail "a failed command wrote output"
echo "reward CLI: ok"
