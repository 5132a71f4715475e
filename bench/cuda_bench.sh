#!/usr/bin/env bash
# GPU benchmark: our CUDA model (bench/cuda_model_bench) and the transformers baseline in the same
# run on the same device, for each model config given; prints the ratios. Not part of the tests.
# Usage: bench/cuda_bench.sh [CONFIG...]   (default: configs/bench_moe.json configs/bench_moe_1b.json)
# Env: BENCH (path of cuda_model_bench, default build/bench/cuda_model_bench), PYTHON (python3),
#      TRAIN_BATCH (16), SEQ (512), ARGS (extra args for both).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench/cuda_model_bench}
PY=${PYTHON:-python3}
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(configs/bench_moe.json configs/bench_moe_1b.json)
common="--train-batch ${TRAIN_BATCH:-16} --seq ${SEQ:-512} --decode-batches 64,256 --prompt 32 --decode-tokens 64 ${ARGS:-}"
for cfg in "${configs[@]}"; do
  echo "=== $cfg"
  ours_log=$("$BENCH" --config "$cfg" $common)
  echo "$ours_log"
  ours=$(echo "$ours_log" | grep '^RESULT' | sed 's/^RESULT //')
  theirs=$("$PY" bench/cuda_hf_baseline.py --config "$cfg" $common | tail -n 1)
  echo "transformers: $theirs"
  "$PY" - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"train: grpo {o['train_tokens_per_s']:.0f} tok/s (MFU {o['mfu_pct']:.1f}% of {o['bf16_tflops']:.0f} TFLOP/s), "
      f"transformers {t['train_tokens_per_s']:.0f} tok/s, ratio {o['train_tokens_per_s']/t['train_tokens_per_s']:.2f}x")
for b, d in o["decode"].items():
    td = t["decode"][b]["tokens_per_s"]
    print(f"decode B={b}: grpo {d['tokens_per_s']:.0f} tok/s ({d['roofline_pct']:.1f}% of HBM roofline at "
          f"{o['copy_GBps']:.0f} GB/s), transformers {td:.0f} tok/s, ratio {d['tokens_per_s']/td:.2f}x")
print(f"ceilings seen by torch: copy {t['copy_GBps']:.0f} GB/s, bf16 matmul {t['bf16_tflops']:.0f} TFLOP/s")
PY
done
