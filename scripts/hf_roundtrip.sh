#!/usr/bin/env bash
# Proves our checkpoints are real Hugging Face checkpoints: for each family, `grpo model init`
# writes a model, `grpo model logprobs` scores a few sequences, and transformers loads the same
# directory (no missing/unexpected keys) and must agree within 1e-4. Outside CI: needs python
# with torch + transformers (pip install -r scripts/requirements-fixtures.txt).
# Usage: scripts/hf_roundtrip.sh [PYTHON]        (BUILD_DIR=build)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
BUILD_DIR=${BUILD_DIR:-build}
grpo="$BUILD_DIR/cli/grpo"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '{"tokens":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}\n{"tokens":[9,8,7]}\n{"tokens":[0,3,5,7,11,13,17,19,23,28,1,1,1,2]}\n' > "$work/in.jsonl"
for cfg in tests/fixtures/roundtrip/*.json; do
  name=$(basename "$cfg" .json)
  for dtype in f32 bf16; do
    "$grpo" model init --config "$cfg" --seed 3 --init-std 0.3 --dtype "$dtype" --out "$work/$name-$dtype" >/dev/null
    "$grpo" model logprobs --model "$work/$name-$dtype" --tokens "$work/in.jsonl" --out "$work/$name-$dtype.jsonl"
    echo "== $name ($dtype)"
    "$py" scripts/check_hf_roundtrip.py --model "$work/$name-$dtype" --tokens "$work/in.jsonl" \
      --ours "$work/$name-$dtype.jsonl" 2>/dev/null | tail -n 2
  done
done
