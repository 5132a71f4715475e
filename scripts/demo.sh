#!/usr/bin/env bash
# The main job until `grpo train` exists: set up, build, create a tiny Qwen3-MoE model and
# sample from it (greedy and at temperature 1), then score the samples' logprobs.
# Usage: scripts/demo.sh            (BUILD_DIR=build, OUT_DIR=out/demo by default)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
OUT_DIR=${OUT_DIR:-out/demo}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target grpo
grpo="$BUILD_DIR/cli/grpo"
mkdir -p "$OUT_DIR"
"$grpo" model init --config configs/tiny_moe.json --seed 1 --init-std 0.5 --out "$OUT_DIR/model"
"$grpo" model info --model "$OUT_DIR/model"
printf '{"tokens":[1,2,3,4]}\n{"tokens":[10,20,30]}\n{"tokens":[5]}\n' > "$OUT_DIR/prompts.jsonl"
"$grpo" model generate --model "$OUT_DIR/model" --tokens "$OUT_DIR/prompts.jsonl" \
  --max-new-tokens 12 --out "$OUT_DIR/greedy.jsonl"
"$grpo" model generate --model "$OUT_DIR/model" --tokens "$OUT_DIR/prompts.jsonl" \
  --max-new-tokens 12 --temperature 1 --seed 7 --out "$OUT_DIR/sampled.jsonl"
echo "greedy continuations:";  cat "$OUT_DIR/greedy.jsonl"
echo "sampled continuations (T=1):"; cat "$OUT_DIR/sampled.jsonl"
"$grpo" model logprobs --model "$OUT_DIR/model" --tokens "$OUT_DIR/prompts.jsonl" \
  --out "$OUT_DIR/logprobs.jsonl"
echo "prompt logprobs:"; cat "$OUT_DIR/logprobs.jsonl"
