#!/usr/bin/env bash
# Runs the model benchmark and, in the same run, the transformers (PyTorch) baseline on the same
# machine with the same thread count, then prints the ratios. Not part of the test suite.
# Needs: a Release build in $BUILD_DIR (default build); for the baseline, python3 with torch and
# transformers (pip install -r scripts/requirements-fixtures.txt).
# Usage: bench/run_model_bench.sh [THREADS]        (default: 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target model_bench >/dev/null
ours_log=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/bench/model_bench" --config configs/bench_moe.json \
  --batch 8 --seq 512 --steps 3 --prompt 32 --decode-tokens 64)
echo "$ours_log"
ours=$(echo "$ours_log" | grep '^RESULT' | sed 's/^RESULT //')
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
  echo "baseline: torch/transformers not installed; no ratio (pip install -r scripts/requirements-fixtures.txt)"
  exit 0
fi
theirs=$("$PY" bench/hf_baseline.py --threads "$threads" --batch 8 --seq 512 --decode-tokens 64 --json | tail -n 1)
echo "transformers: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
fb_o, fb_t = ours["fwd_bwd_tokens_per_s"], theirs["fwd_bwd"]["tokens_per_s"]
de_o, de_t = ours["decode_tokens_per_s"], theirs["decode"]["tokens_per_s"]
fb_tb = theirs["fwd_bwd"]["tokens_per_s_best"]
print(f"forward+backward: grpo {fb_o:.0f} tok/s, transformers {fb_t:.0f} tok/s (median; best {fb_tb:.0f}), ratio {fb_o/fb_t:.2f}x (vs best {fb_o/fb_tb:.2f}x)")
print(f"decode:           grpo {de_o:.0f} tok/s, transformers {de_t:.0f} tok/s, ratio {de_o/de_t:.2f}x")
print(f"GEMM parts: {ours['gemm_gflops']:.0f} GFLOP/s = {100*ours['gemm_gflops']/ours['sgemm_gflops']:.0f}% of oneDNN sgemm ({ours['sgemm_gflops']:.0f} GFLOP/s) in the same run")
PY
