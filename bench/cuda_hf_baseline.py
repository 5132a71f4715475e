#!/usr/bin/env python3
"""GPU speed baseline: Hugging Face transformers (PyTorch, CUDA) on a model config, measured the
way bench/cuda_model_bench.cc measures ours, for the ratios bench/cuda_bench.sh prints.

  train   fp32 master weights under torch.autocast(bfloat16) (mixed precision, like ours: bf16
          GEMMs, fp32 weights and AdamW state); input ids [B, S] random; logprobs =
          log_softmax(logits.float())[:, :-1] gathered at ids[:, 1:]; loss = (logprobs * w).sum();
          backward; torch.optim.AdamW(fused=True) step; zero grads. tokens/s = B*S / median step.
  decode  bf16 weights; B prompts of --prompt random tokens, one prefill forward with a
          DynamicCache, then --decode-tokens single-token greedy forwards (argmax fed back).
          Only the single-token steps are timed. tokens/s = B * decode_tokens / time.
Also prints torch's own 8192^3 bf16 matmul rate and copy bandwidth as a cross-check.

Usage: python3 bench/cuda_hf_baseline.py --config configs/bench_moe.json [--train-batch 16
       --seq 512 --train-steps 5 --decode-batches 64,256 --prompt 32 --decode-tokens 64] [--json]
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache, Qwen3MoeConfig


def load_config(path):
    with open(path) as f:
        fields = json.load(f)
    for key in ("architectures", "model_type"):
        fields.pop(key, None)
    fields["router_aux_loss_coef"] = 0.0
    return Qwen3MoeConfig(**fields)


def sync_time():
    torch.cuda.synchronize()
    return time.perf_counter()


def ceilings():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = sync_time()
    for _ in range(20):
        b.copy_(a)
    copy = 2 * a.numel() * 20 / (sync_time() - t0)
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    t0 = sync_time()
    for _ in range(10):
        x @ y
    mm = 2 * n**3 * 10 / (sync_time() - t0)
    return copy, mm


def train(cfg, B, S, steps):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (B, S), device="cuda")
    w = torch.rand(B, S - 1, device="cuda")
    times = []
    for i in range(steps + 1):
        t0 = sync_time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids, use_cache=False).logits
        lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(lp * w).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = sync_time()
        if i > 0:
            times.append(t1 - t0)
    del model, opt
    torch.cuda.empty_cache()
    return B * S / statistics.median(times), times


@torch.no_grad()
def decode(cfg, B, prompt, n):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).cuda().eval()
    ids = torch.randint(0, cfg.vocab_size, (B, prompt), device="cuda")
    times = []
    for rep in range(2):  # rep 0 warms up
        cache = DynamicCache()
        out = model(ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = sync_time()
        for _ in range(n):
            out = model(nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = sync_time()
        if rep == 1:
            times.append(t1 - t0)
    del model
    torch.cuda.empty_cache()
    return B * n / times[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/bench_moe.json")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--decode-batches", default="64,256")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cfg = load_config(a.config)
    copy, mm = ceilings()
    res = {"torch": torch.__version__, "transformers": transformers.__version__,
           "copy_GBps": copy / 1e9, "bf16_tflops": mm / 1e12}
    tps, times = train(cfg, a.train_batch, a.seq, a.train_steps)
    res["train_tokens_per_s"] = tps
    res["train_step_s_all"] = times
    res["decode"] = {}
    for B in [int(x) for x in a.decode_batches.split(",")]:
        res["decode"][str(B)] = {"tokens_per_s": decode(cfg, B, a.prompt, a.decode_tokens)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
