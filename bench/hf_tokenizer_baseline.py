#!/usr/bin/env python3
"""HF `tokenizers` (Rust, via Python) encode throughput on one thread, the baseline for
bench/tokenizer_bench.cc. Splits the text file into documents at blank lines ("\\n\\n"), as the
C++ bench does, and times `Tokenizer.encode_batch` over all documents with RAYON_NUM_THREADS=1
(set before import, so the batch runs on one thread), add_special_tokens=False; one warm-up pass,
then the median of --repeats passes. Writes the ids (one JSON list per document) for validation.

Usage: RAYON_NUM_THREADS=1 python bench/hf_tokenizer_baseline.py --tokenizer T.json --text FILE \
           --ids-out IDS.jsonl [--repeats 5]
Prints one final line: the MB/s figure.
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402  (after RAYON_NUM_THREADS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ids-out", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    raw = open(args.text, "rb").read()
    docs = raw.decode("utf-8").split("\n\n")
    mb = len(raw) / 1e6
    encs = tok.encode_batch(docs, add_special_tokens=False)  # warm-up
    with open(args.ids_out, "w") as f:
        for e in encs:
            f.write(json.dumps(e.ids) + "\n")
    secs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tok.encode_batch(docs, add_special_tokens=False)
        secs.append(time.perf_counter() - t0)
    med = statistics.median(secs)
    print(f"HF tokenizers {__import__('tokenizers').__version__} encode_batch, "
          f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}: {mb / med:.1f} MB/s "
          f"(median of {args.repeats}; best {mb / min(secs):.1f})")
    print(f"{mb / med:.4f}")


if __name__ == "__main__":
    main()
