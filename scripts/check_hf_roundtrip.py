#!/usr/bin/env python3
"""Check that a checkpoint written by our C++ tool loads in transformers and that our logprobs
match transformers' on it. Not run in CI (needs torch + transformers; see
scripts/requirements-fixtures.txt).

Usage (from the repository root, after building `grpo`):

    grpo model init --config configs/tiny_qwen3_moe.json --seed 7 --out /tmp/ours
    printf '{"tokens":[1,2,3,4,5]}\\n{"tokens":[9,8,7]}\\n' > /tmp/in.jsonl
    grpo model logprobs --model /tmp/ours --tokens /tmp/in.jsonl --out /tmp/ours.jsonl
    /tmp/venv-fx/bin/python scripts/check_hf_roundtrip.py \\
        --model /tmp/ours --tokens /tmp/in.jsonl --ours /tmp/ours.jsonl

Inputs:
    --model DIR     a checkpoint directory (config.json + model.safetensors, or shards + index)
    --tokens FILE   JSONL, one {"tokens": [t_0, ..., t_n]} per line
    --ours FILE     JSONL, one {"logprobs": [lp_1, ..., lp_n]} per input line, same order, where
                    lp_i = log p(t_i | t_<i) at temperature --temperature (default 1.0)

It loads DIR with AutoModelForCausalLM.from_pretrained(DIR, dtype=float32,
output_loading_info=True), fails if transformers reports any missing, unexpected or mismatched
key (or error message), runs each sequence alone (batch 1, no padding), computes
log_softmax(logits.float() / T) gathered at the next token, and compares with ours.

Prints the max abs diff (and where it occurs) and exits 1 if it exceeds --tol (default 1e-4),
if line counts or lengths differ, or if loading was not clean. Exit 0 means pass.
"""

import argparse
import json
import math
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM


def read_jsonl(path, key):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if key not in obj:
                raise SystemExit(f"{path}:{n}: no '{key}' field")
            rows.append(obj[key])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory written by grpo")
    ap.add_argument("--tokens", required=True, help='JSONL of {"tokens": [...]}')
    ap.add_argument("--ours", required=True, help='JSONL of {"logprobs": [...]} written by grpo')
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--attn", default="eager", help="attn_implementation (eager, sdpa)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")

    ok = True
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.float32, attn_implementation=args.attn, output_loading_info=True
        )
    except Exception as e:  # e.g. v5's expert-fusion conversion fails on a missing expert
        print(f"FAIL: transformers could not load {args.model}: {type(e).__name__}: {e}")
        return 1
    # missing_keys, unexpected_keys, mismatched_keys, error_msgs (and whatever else a newer
    # transformers reports): any non-empty entry fails the check.
    for kind, vals in sorted(info.items()):
        if vals:
            ok = False
            print(f"FAIL: transformers reports {len(vals)} {kind}: {sorted(map(str, vals))[:20]}")
    model.eval()
    print(f"loaded {type(model).__name__} from {args.model}: "
          f"{sum(p.numel() for p in model.parameters())} parameters, "
          f"attn {model.config._attn_implementation}, "
          f"experts {getattr(model.config, '_experts_implementation', None)}")

    seqs = read_jsonl(args.tokens, "tokens")
    ours = read_jsonl(args.ours, "logprobs")
    if len(seqs) != len(ours):
        print(f"FAIL: {len(seqs)} token lines but {len(ours)} logprob lines")
        return 1

    worst, where, n_vals = 0.0, None, 0
    with torch.no_grad():
        for i, (seq, lp_ours) in enumerate(zip(seqs, ours)):
            if len(lp_ours) != max(len(seq) - 1, 0):
                print(f"FAIL: line {i + 1}: {len(seq)} tokens but {len(lp_ours)} logprobs (want {len(seq) - 1})")
                ok = False
                continue
            if len(seq) < 2:
                continue
            ids = torch.tensor([seq], dtype=torch.long)
            logits = model(input_ids=ids, use_cache=False).logits
            logp = torch.log_softmax(logits.float()[0, :-1] / args.temperature, dim=-1)
            ref = logp.gather(-1, ids[0, 1:, None])[:, 0].tolist()
            for j, (a, b) in enumerate(zip(ref, lp_ours)):
                d = abs(a - b) if math.isfinite(b) else math.inf
                n_vals += 1
                if d > worst or (math.isnan(d)):
                    worst, where = d, (i + 1, j + 1, a, b)

    print(f"compared {n_vals} logprobs over {len(seqs)} sequences; max abs diff {worst:.3e}"
          + (f" at line {where[0]} position {where[1]} (transformers {where[2]:.7f}, ours {where[3]:.7f})"
             if where else ""))
    if not (worst <= args.tol):
        print(f"FAIL: max abs diff {worst:.3e} > tol {args.tol:.1e}")
        ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
