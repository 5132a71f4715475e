#!/usr/bin/env bash
# Runs the weight-sync benchmark (bench/weight_sync_bench.cc) for the reference MoE and the ~1B
# model. On a CPU machine it measures the LocalGroup and gRPC paths against memcpy; with a GPU it
# also measures CUDA IPC and (2+ GPUs) NCCL against the device copy bandwidth. Not a test.
# Usage: bench/run_weight_sync_bench.sh [RECEIVERS]   (default 2; the 1B model uses 1 on machines
#        with under 32 GB of memory: each in-process receiver holds a 4 GB fp32 copy)
set -euo pipefail
cd "$(dirname "$0")/.."
receivers=${1:-2}
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" --target weight_sync_bench >/dev/null
"$BUILD_DIR/bench/weight_sync_bench" --config configs/bench_moe.json --receivers "$receivers"
mem_gb=$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)
big_receivers=$receivers
if [ "$mem_gb" -lt 32 ]; then big_receivers=1; fi
"$BUILD_DIR/bench/weight_sync_bench" --config configs/bench_moe_1b.json --receivers "$big_receivers" \
  --repeats 2
