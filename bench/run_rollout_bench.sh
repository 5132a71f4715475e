#!/usr/bin/env bash
# Runs the rollout engine benchmark and, in the same run, transformers' generate() on the same
# model config with the same thread count, then prints the decode ratios. Not part of the tests.
# Needs: a Release build in $BUILD_DIR (default build); for the baseline, a python with torch and
# transformers ($PYTHON, default /tmp/venv-fx/bin/python, else python3).
# Usage: bench/run_rollout_bench.sh [THREADS]        (default: 2)
# Both wall-clock and process-CPU-time rates are printed: on a shared machine the CPU-time ratio is
# the trustworthy one (with THREADS 1 it does not count time other processes took).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target rollout_bench >/dev/null
# Ours twice: arbitrary fp32 weights, then the same weights rounded to bf16 values (what a bf16
# checkpoint or a bf16 weight update holds; the engine packs those at 2 bytes, losslessly).
ours_log=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/bench/rollout_bench" --config configs/bench_moe.json \
  --prompt 32 --decode-tokens 64 --repeats 3 --weights fp32)
echo "$ours_log"
ours=$(echo "$ours_log" | grep '^RESULT' | sed 's/^RESULT //')
ours16_log=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/bench/rollout_bench" --config configs/bench_moe.json \
  --prompt 32 --decode-tokens 64 --repeats 3 --weights bf16)
echo "$ours16_log"
ours16=$(echo "$ours16_log" | grep '^RESULT' | sed 's/^RESULT //')
PY=${PYTHON:-/tmp/venv-fx/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
  echo "baseline: torch/transformers not installed; no ratio"
  exit 0
fi
theirs_log=$(OMP_NUM_THREADS=$threads "$PY" bench/hf_generate_baseline.py --threads "$threads" \
  --prompt 32 --decode-tokens 64 --repeats 3 --json)
echo "$theirs_log" | grep -v '^{'
theirs=$(echo "$theirs_log" | tail -n 1)
python3 - "$ours" "$ours16" "$theirs" <<'PY'
import json, sys
theirs = json.loads(sys.argv[3])
for name, arg in (("fp32 weights", sys.argv[1]), ("bf16-valued weights", sys.argv[2])):
    ours = json.loads(arg)
    print(f"-- grpo with {name} (transformers: fp32 compute either way)")
    for b in (1, 16, 64):
        o, t = ours[f"decode_b{b}"], theirs[f"decode_b{b}"]
        oc, tc = ours[f"decode_cpu_b{b}"], theirs[f"decode_cpu_b{b}"]
        print(f"decode batch {b:3d}: grpo {o:7.0f} tok/s, transformers generate() {t:7.0f} tok/s, ratio {o/t:.2f}x"
              f" | per CPU-second: {oc:.0f} vs {tc:.0f}, ratio {oc/tc:.2f}x")
    print(f"8 prompts x G 8: first group after {ours['first_group_s']:.2f} s, all after {ours['all_groups_s']:.2f} s")
PY
