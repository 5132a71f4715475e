#!/usr/bin/env bash
# Math-reward scoring throughput, single thread: grpo's C++ math reward vs Math-Verify in Python
# on the same (completion, gold) items in the same run — the fixture cases of
# tests/fixtures/reward/math_cases.jsonl, repeated — with both checked against the Math-Verify
# labels first (#wrong). Not part of the test suite.
# Needs: a Release build in $BUILD_DIR (default build); python with math-verify ($PYTHON,
# default python3; see scripts/make_math_reward_fixtures.py).
# Usage: bench/run_math_reward_bench.sh [CASES.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PY=${PYTHON:-python3}
cases=${1:-tests/fixtures/reward/math_cases.jsonl}
cmake --build "$BUILD_DIR" --target math_reward_bench >/dev/null
out=$("$PY" bench/math_verify_baseline.py --cases "$cases" --repeats "${MV_REPEATS:-2}")
echo "$out" | head -n -1
mv_ips=$(echo "$out" | tail -n 1)
"$BUILD_DIR/bench/math_reward_bench" --cases "$cases" --repeats "${REPEATS:-200}" \
  --mv-items-per-s "$mv_ips"
