#!/usr/bin/env bash
# Reward-model scoring speed: grpo's RewardModel (bench/reward_model_bench.cc) against
# transformers' *ForSequenceClassification (bench/hf_reward_model_baseline.py) on the same backbone
# config (configs/bench_moe.json + a 1-label head), items, length and threads, in the same run.
# Usage: bench/run_reward_model_bench.sh [THREADS] [ITEMS] [LEN]   (defaults 2 32 256)
# PYTHON picks the interpreter with torch + transformers (e.g. PYTHON=/tmp/venv-fx/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
items=${2:-32}
len=${3:-256}
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target reward_model_bench >/dev/null
ours_log=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/bench/reward_model_bench" --config configs/bench_moe.json \
  --items "$items" --len "$len" --repeats 3)
echo "$ours_log"
ours=$(echo "$ours_log" | grep '^RESULT' | sed 's/^RESULT //')
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
  echo "baseline: torch/transformers not installed; no ratio (pip install -r scripts/requirements-fixtures.txt)"
  exit 0
fi
theirs=$("$PY" bench/hf_reward_model_baseline.py --threads "$threads" --items "$items" --len "$len" \
  --batch 8 --repeats 3 --json | tail -n 1)
echo "transformers: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
o, t = ours["items_per_s"], theirs["items_per_s"]
ob, tb = ours["items_per_s_best"], theirs["items_per_s_best"]
print(f"scored items/s: grpo {o:.2f} (best {ob:.2f}), transformers {t:.2f} (best {tb:.2f}, "
      f"{theirs['attn_implementation']}/{theirs['experts_implementation']}), ratio {o/t:.2f}x "
      f"(best vs best {ob/tb:.2f}x); params grpo {ours['params']:,} / transformers {theirs['params']:,}")
PY
