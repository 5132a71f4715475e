#!/usr/bin/env bash
# The main job: set up, build, and run the tiny R1-Zero-style run (configs/train/tiny.json):
# data, SFT warm start, base evaluation, reward service + rollout worker on loopback, GRPO,
# final evaluation and metrics.svg. A few minutes on a 2-core CPU.
# Usage: scripts/demo.sh [extra grpo train flags, e.g. --set learner.total_steps=50]
#        (BUILD_DIR=build, OUT_DIR=runs/tiny by default)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-runs/tiny}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target grpo
# --overwrite: the demo replaces its previous run; real runs refuse to (use --resume or --out).
"$BUILD_DIR/cli/grpo" train configs/train/tiny.json --out "$OUT_DIR" --overwrite "$@"
echo "results: $OUT_DIR/summary.json, chart: $OUT_DIR/metrics.svg, metrics: $OUT_DIR/metrics.jsonl"
