#!/usr/bin/env bash
# Tokenizer encode throughput, single thread: grpo's C++ tokenizer vs HF `tokenizers` (Rust,
# through Python encode_batch with RAYON_NUM_THREADS=1) on the same text in the same run, with
# the ids checked equal first. The text is this repository's sources and docs plus the fixture
# corpus (CJK, emoji, combining marks), about 1-3 MB. Not part of the test suite.
# Needs: a Release build in $BUILD_DIR (default build); python with tokenizers ($PYTHON).
# Usage: bench/run_tokenizer_bench.sh [TOKENIZER.json]   (default: the Qwen2-style fixture)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PY=${PYTHON:-python3}
tok=${1:-tests/fixtures/tokenizer/qwen2.json}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --build "$BUILD_DIR" --target tokenizer_bench >/dev/null
# Deterministic text: sorted source/doc files, then each fixture string, all as UTF-8.
git ls-files '*.cc' '*.h' '*.md' '*.py' '*.sh' '*.txt' | sort | xargs cat > "$work/text.txt"
python3 - "$work/text.txt" <<'PY'
import json, sys
cases = [json.loads(l) for l in open("tests/fixtures/tokenizer/cases.jsonl", encoding="utf-8")]
with open(sys.argv[1], "a", encoding="utf-8") as f:
  for _ in range(20):
    for c in cases:
      f.write(c["text"] + "\n\n")
PY
RAYON_NUM_THREADS=1 "$PY" bench/hf_tokenizer_baseline.py --tokenizer "$tok" \
  --text "$work/text.txt" --ids-out "$work/hf_ids.jsonl" > "$work/hf.txt"
head -n -1 "$work/hf.txt"
hf=$(tail -n 1 "$work/hf.txt")
"$BUILD_DIR/bench/tokenizer_bench" --tokenizer "$tok" --text "$work/text.txt" \
  --hf-ids "$work/hf_ids.jsonl" --hf-mbps "$hf"
