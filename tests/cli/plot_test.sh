# `grpo plot`: metrics.jsonl to SVG, default and explicit keys, and its errors.
source "$(dirname "$0")/lib.sh"

m=$work/metrics.jsonl
for s in 0 1 2 3 4 5; do
  echo "{\"step\": $s, \"reward\": {\"mean\": 0.$s}, \"accuracy\": 0.$((s * 1)), \"eval/accuracy\": 0.$s, \"response_length/mean\": $((10 + s))}" >>"$m"
done
"$grpo" plot --metrics "$m" --out "$work/p.svg" >"$work/log"
grep -q "3 panels, 6 steps" "$work/log" || fail "unexpected summary: $(cat "$work/log")"
grep -q "<svg" "$work/p.svg" || fail "no svg written"
[ "$(grep -c "<polyline" "$work/p.svg")" = 3 ] || fail "want 3 lines"
"$grpo" plot --metrics "$m" --keys "reward/mean|accuracy" --smooth 3 --title T >/dev/null
[ -f "$m.svg" ] || fail "default output path not used"
grep -q ">accuracy</text>" "$m.svg" || fail "legend missing"

expect_error 1 "no line has a numeric 'loss'" "$grpo" plot --metrics "$m" --keys loss
echo '{"step": 1, "other": 2}' >"$work/o.jsonl"
expect_error 1 "pass --keys" "$grpo" plot --metrics "$work/o.jsonl"
echo 'not json' >"$work/bad.jsonl"
expect_error 1 "bad.jsonl:1" "$grpo" plot --metrics "$work/bad.jsonl"
expect_error 2 "--smooth" "$grpo" plot --metrics "$m" --smooth x
expect_error 1 "--smooth must be" "$grpo" plot --metrics "$m" --smooth 0
echo "plot tests passed"
