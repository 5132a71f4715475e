#!/usr/bin/env bash
# Runs the rollout engine benchmark and, in the same run, transformers' generate() on the same
# model config with the same thread count, then prints the decode ratios. Not part of the tests.
# Needs: a Release build in $BUILD_DIR (default build); for the baseline, a python with torch and
# transformers ($PYTHON, default /tmp/venv-fx/bin/python, else python3).
# Usage: bench/run_rollout_bench.sh [THREADS] [ROUNDS]        (defaults: 2 threads, 3 rounds)
# Each round runs ours with fp32 weights, ours with bf16-valued weights, then transformers, so the
# three see the same state of a shared machine; the ratios are of the per-engine medians over the
# rounds (a shared host drifts by 10-20% over minutes, which one round alone would report).
# HF_BF16=1 adds, each round, transformers with --dtype bfloat16 (bf16 weights and activations),
# printed as its own line; the ratios stay against fp32 transformers, the faster of the two on the
# development VM (batch 64: 66.4 against 71.0 ms per step, 2026-11-23).
# Both wall-clock and process-CPU-time rates are printed: on a shared machine the CPU-time ratio is
# the trustworthy one (with THREADS 1 it does not count time other processes took).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-3}
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target rollout_bench >/dev/null
PY=${PYTHON:-/tmp/venv-fx/bin/python}
[ -x "$PY" ] || PY=python3
have_baseline=1
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
  echo "baseline: torch/transformers not installed; no ratio"
  have_baseline=0
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq 1 "$rounds"); do
  echo "== round $r of $rounds"
  # Ours twice: arbitrary fp32 weights, then the same weights rounded to bf16 values (what a bf16
  # checkpoint or a bf16 weight update holds; the engine packs those at 2 bytes, losslessly).
  for w in fp32 bf16; do
    log=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/bench/rollout_bench" \
      --config configs/bench_moe.json --prompt 32 --decode-tokens 64 --repeats 3 --weights $w)
    echo "$log" | grep -v '^RESULT'
    echo "ours_$w $(echo "$log" | grep '^RESULT' | sed 's/^RESULT //')" >> "$results"
  done
  if [ "$have_baseline" = 1 ]; then
    log=$(OMP_NUM_THREADS=$threads "$PY" bench/hf_generate_baseline.py --threads "$threads" \
      --prompt 32 --decode-tokens 64 --repeats 3 --json)
    echo "$log" | grep -v '^{'
    echo "theirs $(echo "$log" | tail -n 1)" >> "$results"
    if [ "${HF_BF16:-0}" = 1 ]; then
      log=$(OMP_NUM_THREADS=$threads "$PY" bench/hf_generate_baseline.py --threads "$threads" \
        --prompt 32 --decode-tokens 64 --repeats 3 --dtype bfloat16 --json)
      echo "$log" | grep -v '^{'
      echo "theirs_bf16 $(echo "$log" | tail -n 1)" >> "$results"
    fi
  fi
done
[ "$have_baseline" = 1 ] || exit 0
python3 - "$results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(js))
def med(name, key):
    return statistics.median(r[key] for r in runs[name])
n = len(runs["theirs"])
print(f"-- medians over {n} round(s)")
for name, label in (("ours_fp32", "fp32 weights"), ("ours_bf16", "bf16-valued weights")):
    print(f"-- grpo with {label} (transformers: fp32 compute either way)")
    for b in (1, 16, 64):
        o, t = med(name, f"decode_b{b}"), med("theirs", f"decode_b{b}")
        oc, tc = med(name, f"decode_cpu_b{b}"), med("theirs", f"decode_cpu_b{b}")
        each = ", ".join(f"{x[f'decode_b{b}'] / y[f'decode_b{b}']:.2f}x"
                         for x, y in zip(runs[name], runs["theirs"]))
        print(f"decode batch {b:3d}: grpo {o:7.0f} tok/s, transformers generate() {t:7.0f} tok/s, "
              f"ratio {o/t:.2f}x (rounds: {each}) | per CPU-second: {oc:.0f} vs {tc:.0f}, "
              f"ratio {oc/tc:.2f}x")
    print(f"8 prompts x G 8: first group after {med(name, 'first_group_s'):.2f} s, "
          f"all after {med(name, 'all_groups_s'):.2f} s")
if "theirs_bf16" in runs:
    print("-- transformers with --dtype bfloat16 (not the ratios' baseline)")
    for b in (1, 16, 64):
        t16, t32 = med("theirs_bf16", f"decode_b{b}"), med("theirs", f"decode_b{b}")
        print(f"decode batch {b:3d}: {t16:7.0f} tok/s, {t16 / t32:.2f}x its fp32 speed")
PY
