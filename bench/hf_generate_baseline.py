#!/usr/bin/env python3
"""Speed baseline for bench/rollout_bench.cc: Hugging Face transformers' generate() (PyTorch,
CPU, fp32 by default; --dtype bfloat16 for bf16 weights and activations) on the reference Qwen3-MoE (configs/bench_moe.json, random weights, fixed seed), greedy,
at batch 1, 16 and 64, measured exactly as rollout_bench measures our engine:

    decode tokens/s = B * N / (median time of generate(N + 1 new tokens)
                               - median time of generate(1 new token))

i.e. the prefill and first token are subtracted and N single-token steps remain. Prompts are B
random sequences of --prompt tokens (no padding). Not run in CI; needs torch + transformers.

Usage (from the repository root):
    /tmp/venv-fx/bin/python bench/hf_generate_baseline.py --threads 2 [--prompt 32
        --decode-tokens 64 --repeats 3 --batches 1,16,64 --dtype float32] [--json]
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig


def reference_config(path):
    with open(path) as f:
        fields = json.load(f)
    for key in ("architectures", "model_type"):
        fields.pop(key, None)
    return Qwen3MoeConfig(**fields)


@torch.no_grad()
def timed_generate(model, prompt, n_new):
    """(wall seconds, process CPU seconds over all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                         max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                         pad_token_id=0, eos_token_id=None, use_cache=True)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert out.shape[1] == prompt.shape[1] + n_new
    return dt, dc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/bench_moe.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the model's dtype in PyTorch (bfloat16: bf16 weights and activations)")
    ap.add_argument("--json", action="store_true", help="print one JSON line last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(reference_config(args.config), dtype=getattr(torch, args.dtype))
    model.eval()
    g = torch.Generator().manual_seed(2)
    result = {"threads": args.threads, "torch": torch.__version__, "dtype": args.dtype,
              "attn_implementation": model.config._attn_implementation,
              "experts_implementation": getattr(model.config, "_experts_implementation", None)}
    for b in [int(x) for x in args.batches.split(",")]:
        prompt = torch.randint(0, model.config.vocab_size, (b, args.prompt), generator=g)
        timed_generate(model, prompt, 4)  # warm-up
        first, full = [], []
        for _ in range(args.repeats):
            first.append(timed_generate(model, prompt, 1))
            full.append(timed_generate(model, prompt, args.decode_tokens + 1))
        med = lambda runs, i: statistics.median(r[i] for r in runs)
        decode_s = med(full, 0) - med(first, 0)
        decode_cpu = med(full, 1) - med(first, 1)
        tps, tps_cpu = b * args.decode_tokens / decode_s, b * args.decode_tokens / decode_cpu
        result[f"decode_b{b}"] = tps
        result[f"decode_cpu_b{b}"] = tps_cpu
        print(f"transformers generate() {args.dtype} batch {b:3d}: decode {tps:.0f} tok/s "
              f"({1000 * decode_s / args.decode_tokens:.1f} ms/step), {tps_cpu:.0f} tok per CPU-s; "
              f"prefill+first token {med(first, 0):.3f} s", flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
