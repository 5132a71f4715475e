#!/usr/bin/env python3
"""Math-Verify scoring throughput (items/s, one process) on the math-reward fixture items, the
baseline for bench/math_reward_bench.cc. Each item is scored as verl's math_verify.compute_score
does and as scripts/make_math_reward_fixtures.py labels it: parse the gold wrapped in \\boxed{}
with LatexExtractionConfig, parse the completion with [ExprExtractionConfig,
LatexExtractionConfig], verify(gold, pred). One warm-up pass (fills Math-Verify's regex caches),
then `--repeats` timed passes. Prints details, then the items/s figure alone on the last line.

Usage: python bench/math_verify_baseline.py --cases tests/fixtures/reward/math_cases.jsonl [--repeats N]
"""
import argparse
import json
import time

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify


def score(gold, completion):
    g = parse("\\boxed{" + gold + "}", extraction_config=[LatexExtractionConfig()])
    p = parse(completion, extraction_config=[ExprExtractionConfig(), LatexExtractionConfig()])
    return bool(verify(g, p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="tests/fixtures/reward/math_cases.jsonl")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    items = [json.loads(l) for l in open(args.cases, encoding="utf-8") if l.strip()]
    wrong = sum(score(c["gold"], c["completion"]) != c["expected"] for c in items)  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        for c in items:
            score(c["gold"], c["completion"])
    secs = time.perf_counter() - t0
    ips = len(items) * args.repeats / secs
    import importlib.metadata as md
    print(f"Math-Verify {md.version('math-verify')}: {len(items)} items x {args.repeats} repeats, "
          f"#wrong vs labels {wrong}, {ips:.0f} items/s ({1e3 / ips:.2f} ms/item)")
    print(f"{ips:.3f}")


if __name__ == "__main__":
    main()
