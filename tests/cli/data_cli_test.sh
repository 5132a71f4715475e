#!/usr/bin/env bash
# End-to-end test of the `grpo data` commands as a user runs them: countdown and arith datasets
# (row count, row format, solvable stored solutions, determinism per seed) and exit code 2 for bad
# flags. Run by ctest with the path of the grpo binary: tests/cli/data_cli_test.sh BUILD/cli/grpo
source "$(dirname "$0")/lib.sh" "$1"

"$grpo" --help | grep -q "data countdown" || fail "grpo --help does not list data countdown"
for sub in countdown arith; do
  "$grpo" data $sub --help | grep -q "usage: grpo data $sub" || fail "grpo data $sub --help"
done

"$grpo" data countdown --n 20 --seed 1 --out "$work/a.jsonl" >/dev/null
"$grpo" data countdown --n 20 --seed 1 --out "$work/b.jsonl" >/dev/null
"$grpo" data countdown --n 20 --seed 2 --out "$work/c.jsonl" >/dev/null
[ "$(wc -l < "$work/a.jsonl")" = 20 ] || fail "countdown: expected 20 rows"
cmp -s "$work/a.jsonl" "$work/b.jsonl" || fail "countdown: same seed gave different files"
cmp -s "$work/a.jsonl" "$work/c.jsonl" && fail "countdown: different seeds gave the same file"
python3 - "$work/a.jsonl" <<'PY' || fail "countdown rows"
import json, re, sys
from fractions import Fraction
for line in open(sys.argv[1]):
    r = json.loads(line)
    assert set(r) == {"prompt", "ground_truth", "data_source", "extra"}, r
    assert r["data_source"] == "countdown"
    gt, sol = r["ground_truth"], r["extra"]["solution"]
    nums, target = gt["numbers"], gt["target"]
    assert 3 <= len(nums) <= 4 and all(1 <= n <= 99 for n in nums) and 1 <= target <= 100, r
    assert f"Using the numbers {nums}, create an equation that equals {target}." in r["prompt"], r
    # TinyZero's checks: the numbers used exactly once, and the value (here with exact fractions).
    assert sorted(int(n) for n in re.findall(r"\d+", sol)) == sorted(nums), r
    assert re.fullmatch(r"[\d+\-*/() ]+", sol), sol
    value = eval(re.sub(r"(\d+)", r"Fraction(\1)", sol), {"Fraction": Fraction})
    assert value == target, (sol, value, target)
PY

"$grpo" data arith --n 30 --seed 3 --digits 2 --ops "+-*/" --out "$work/ar.jsonl" >/dev/null
python3 - "$work/ar.jsonl" <<'PY' || fail "arith rows"
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 30
for r in rows:
    m = re.fullmatch(r"What is (\d+) ([-+*/]) (\d+)\?", r["prompt"])
    assert m and r["data_source"] == "arith", r
    a, op, b = int(m[1]), m[2], int(m[3])
    want = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    assert op != "/" or a % b == 0, r
    assert r["ground_truth"] == str(want), r
PY

# Usage errors exit 2 and say what is wrong; nothing is written.
expect2() {
  local rc=0
  "$grpo" "$@" >/dev/null 2>"$work/err" || rc=$?
  [ "$rc" = 2 ] || fail "expected exit 2 from: grpo $* (got $rc)"
  [ -s "$work/err" ] || fail "no message from: grpo $*"
}
expect2 data countdown --n 20 --seed 1
expect2 data countdown --n twenty --seed 1 --out "$work/x.jsonl"
expect2 data countdown --n 0 --out "$work/x.jsonl"
expect2 data countdown --n 5 --seed -1 --out "$work/x.jsonl"
expect2 data countdown --n 5 --min-count 5 --out "$work/x.jsonl"
expect2 data countdown --n 5 --bogus 1 --out "$work/x.jsonl"
expect2 data arith --n 5 --ops "+^" --out "$work/x.jsonl"
expect2 data arith --n 5 --digits 12 --out "$work/x.jsonl"
expect2 data nonsense
expect2 data
[ ! -e "$work/x.jsonl" ] || fail "a usage error wrote output"
echo "data CLI: ok"
