#!/usr/bin/env python3
"""Random-input parity check of `grpo tokenize` / `grpo detokenize` against HF `tokenizers` on the
fixture tokenizers (tests/fixtures/tokenizer/*.json). Encodes random strings built from pieces
that stress the pre-tokenizer (contractions, digits of several scripts, combining marks, NEL,
CJK, emoji, special-token fragments, lstrip tokens) and decodes random id sequences (partial
UTF-8 included). Not run by ctest (needs python tokenizers); run after changing model/tokenizer*.

Usage: python scripts/check_tokenizer_fuzz.py [--grpo build/cli/grpo] [--seed 1] [--n 3000]
"""
import argparse
import json
import os
import random
import subprocess
import tempfile

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIECES = list("abcXYZ  \t\n\r0123'’-.,!?") + [
    "'s", "'T", "'ll", "'RE", "é", "e\u0301", "\u0308", "数", "学", "😀", "👍🏽", "\u200d",
    "\u00a0", "\u3000", "\u0085", "ſ", "\u212a", "<|im_start|>", "<|im_end|>", "<|im_", "<think>",
    "<|mask|>", "<tool call>", "nai\u0308ve", "naïve", "  ", "\r\n", "١٢٣", "Ⅻ", "½", "ǅ", "ﬁ"]


def run(grpo, cmd, tok_path, rows, extra=()):
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        with open(src, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        subprocess.run([grpo, cmd, "--tokenizer", tok_path, "--in", src, "--out", dst, *extra],
                       check=True)
        return [json.loads(line) for line in open(dst)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", default=os.path.join(ROOT, "build", "cli", "grpo"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(args.n)]
    bad = total = 0
    for name in ["qwen2", "llama3", "gpt2"]:
        path = os.path.join(ROOT, "tests", "fixtures", "tokenizer", name + ".json")
        tok = Tokenizer.from_file(path)
        ours = run(args.grpo, "tokenize", path, [{"text": t} for t in texts])
        for t, o in zip(texts, ours):
            total += 1
            if tok.encode(t).ids != o["ids"]:
                bad += 1
                print("encode", name, repr(t), tok.encode(t).ids, o["ids"])
        n = tok.get_vocab_size(with_added_tokens=True)
        seqs = [[rng.randrange(n) for _ in range(rng.randint(0, 12))] for _ in range(args.n)]
        for skip in ("false", "true"):
            ours = run(args.grpo, "detokenize", path, [{"ids": s} for s in seqs],
                       ["--skip-special-tokens", skip])
            for s, o in zip(seqs, ours):
                total += 1
                want = tok.decode(s, skip_special_tokens=skip == "true")
                if want != o["text"]:
                    bad += 1
                    print("decode", name, s, repr(want), repr(o["text"]))
    print(f"{total} checks, {bad} mismatches")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
