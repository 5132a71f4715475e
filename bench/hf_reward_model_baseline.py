#!/usr/bin/env python3
"""Speed baseline for bench/reward_model_bench.cc: transformers' *ForSequenceClassification
(PyTorch, CPU, fp32) on the reference backbone (configs/bench_moe.json) with a one-label score
head, random weights. Not run in CI; needs torch + transformers (scripts/requirements-fixtures.txt).

Usage (from the repository root):

    /tmp/venv-fx/bin/python bench/hf_reward_model_baseline.py --threads 2 [--items 32 --len 256
        --batch 8 --repeats 3] [--json]

Measurement: --items random sequences of --len tokens (no padding, so pad handling costs nothing);
model(input_ids=ids[b:b+batch]).logits under torch.inference_mode() for consecutive batches of
--batch rows (what a padded-batch reward server does; with equal lengths there is no padding
waste, the most favourable case for transformers). items/s = items / time of one pass over all
items; median (and best) over --repeats passes after one warm-up pass. Attention and experts run
with transformers' default CPU implementations (reported); --attn / --experts override.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoConfig


def build(args):
    with open(args.config) as f:
        fields = json.load(f)
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    fields.update(num_labels=1, pad_token_id=0)
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    kwargs = {"dtype": torch.float32}
    if args.attn:
        kwargs["attn_implementation"] = args.attn
    if args.experts:
        kwargs["experts_implementation"] = args.experts
    return AutoModelForSequenceClassification.from_config(config, **kwargs).eval()


@torch.inference_mode()
def one_pass(model, ids, batch):
    out = []
    for b in range(0, ids.shape[0], batch):
        out.append(model(input_ids=ids[b : b + batch]).logits[:, 0])
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/bench_moe.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", default=None)
    ap.add_argument("--experts", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args)
    g = torch.Generator().manual_seed(7)
    # ids >= 1: id 0 is the pad token here, and a trailing pad would move the scored position.
    ids = torch.randint(1, model.config.vocab_size, (args.items, args.len), generator=g)
    scores = one_pass(model, ids, args.batch)  # warm-up and sanity check
    if not torch.isfinite(scores).all():
        raise SystemExit("non-finite scores")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        one_pass(model, ids, args.batch)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    res = {
        "bench": "hf_reward_model_baseline",
        "architecture": type(model).__name__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "params": sum(p.numel() for p in model.parameters()),
        "items": args.items,
        "len": args.len,
        "batch": args.batch,
        "pass_s_all": times,
        "items_per_s": args.items / med,
        "items_per_s_best": args.items / min(times),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['architecture']}, {res['params'] / 1e6:.1f}M params, threads {res['threads']}, "
              f"attn {res['attn_implementation']}, experts {res['experts_implementation']}: "
              f"{res['items_per_s']:.2f} items/s (best {res['items_per_s_best']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
