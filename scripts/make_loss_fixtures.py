#!/usr/bin/env python3
"""Build the GRPO-loss golden fixture in tests/fixtures/loss/ (read by tests/learner/golden_test.cc).

Not run in CI: the fixture is committed. Rerun it only to change it (deterministic for a given
torch/transformers version; scripts/requirements-fixtures.txt lists the versions used):

    /tmp/venv-fx/bin/python scripts/make_loss_fixtures.py [--out tests/fixtures/loss]

What it does: builds a tiny random Qwen3-MoE with transformers (vocab 64, hidden 16, 2 MoE layers,
2 heads, 1 kv head, head_dim 8, 4 experts top-2, moe_intermediate 8, norm_topk_prob, untied),
saves it (fp32) as an HF directory, then reloads it in float64 and computes, for three packed
prompt+completion sequences, the loss the learner computes with

    policy_loss ppo_clip, clip_low 0.2, clip_high 0.28, dual_clip 3.0,
    kl_coef 0.1 with the k3 estimator, aggregation token-mean, temperature 0.8

written here independently of the C++ (verl's formulas: ALGORITHMS.md §1.4, §1.8), and its gradient
with respect to every parameter by autograd. (transformers keeps RMSNorm, the attention and router
softmaxes and the RoPE frequencies in fp32 even in a float64 model, so the reference carries about
5e-7 of fp32 rounding in a logprob.)

Files:
    model/config.json, model/model.safetensors   the policy (fp32)
    grads.safetensors                            d(loss)/d(param), HF tensor names, F32
    loss.json  {"temperature", "sequences": [[ids]], "prompt_lengths": [P_i],
                "mask": [[0/1 per completion token]], "advantages": [A_i],
                "old_logprobs" / "ref_logprobs" / "logprobs": [[per completion token]],
                "config": {...}, "loss": float, "meta": {...}}
The old and reference logprobs are the policy's own logprobs plus fixed noise, so ratios spread
over both sides of the clip range; the script refuses a draw with a ratio within 1e-4 of a clip
edge (a branch float32 could take differently).
"""

import argparse
import json
import math
import os
import shutil

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

SEED = 4321
TEMPERATURE = 0.8
CLIP_LOW, CLIP_HIGH, DUAL_CLIP, KL_COEF = 0.2, 0.28, 3.0, 0.1
PROMPT_LENGTHS = [4, 3, 5]
COMPLETION_LENGTHS = [5, 7, 3]
ADVANTAGES = [1.0, -0.7, 0.4]


def make_model(path):
    cfg = Qwen3MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=8, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6, rope_theta=10000.0,
        max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise)
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                p.copy_(noise * 2.5)
            elif name.endswith("mlp.gate.weight"):
                p.copy_(noise * 5.0)
            else:
                p.copy_(noise)
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path)


def per_token_logprobs(model, seq, temperature):
    ids = torch.tensor([seq], dtype=torch.long)
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0]


def grpo_loss(lp, old, ref, adv, mask):
    """Token-mean of PPO-clip (+dual-clip) + beta * k3 over masked tokens (verl formulas)."""
    log_r = torch.clamp(lp - old, -20, 20)
    r = torch.exp(log_r)
    l1 = -adv * r
    l2 = -adv * torch.clamp(r, 1 - CLIP_LOW, 1 + CLIP_HIGH)
    lc = torch.maximum(l1, l2)
    l3 = -adv * DUAL_CLIP
    pg = torch.where(adv < 0, torch.minimum(lc, l3), lc)
    x = torch.clamp(ref - lp, -20, 20)
    k3 = torch.clamp(torch.exp(x) - x - 1, -10, 10)
    per_token = pg + KL_COEF * k3
    return (per_token * mask).sum() / mask.sum(), r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/loss")
    args = ap.parse_args()
    model_dir = os.path.join(args.out, "model")
    os.makedirs(args.out, exist_ok=True)
    make_model(model_dir)

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager",
        experts_implementation="eager").train()
    # Dropout is 0 in this config; train() only enables autograd-friendly paths.
    g = torch.Generator().manual_seed(SEED + 1)
    sequences = []
    for p_len, c_len in zip(PROMPT_LENGTHS, COMPLETION_LENGTHS):
        sequences.append(torch.randint(0, 64, (p_len + c_len,), generator=g).tolist())

    with torch.no_grad():
        base = [per_token_logprobs(model, s, TEMPERATURE)[p - 1:] for s, p in zip(sequences, PROMPT_LENGTHS)]
    old = [b + torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.2 for b in base]
    ref = [b + torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.3 for b in base]
    masks = [torch.ones(c, dtype=torch.float64) for c in COMPLETION_LENGTHS]
    masks[1][-1] = 0.0  # a masked-out token (e.g. after EOS) must contribute nothing

    model.zero_grad()
    lps = [per_token_logprobs(model, s, TEMPERATURE)[p - 1:] for s, p in zip(sequences, PROMPT_LENGTHS)]
    lp = torch.cat(lps)
    adv = torch.cat([torch.full((c,), a, dtype=torch.float64) for c, a in zip(COMPLETION_LENGTHS, ADVANTAGES)])
    loss, ratio = grpo_loss(lp, torch.cat(old), torch.cat(ref), adv, torch.cat(masks))
    loss.backward()

    edges = torch.tensor([1 - CLIP_LOW, 1 + CLIP_HIGH, DUAL_CLIP], dtype=torch.float64)
    min_edge_gap = (ratio.detach()[:, None] - edges[None, :]).abs().min().item()
    if min_edge_gap < 1e-4:
        raise SystemExit(f"a ratio lies {min_edge_gap:g} from a clip edge; change SEED")

    # Gradients under the checkpoint's tensor names. transformers v5 keeps experts fused
    # (gate_up_proj [E, 2I, H], down_proj [E, H, I]); split them the way the saved file is split,
    # found by matching values against the saved per-expert tensors.
    saved = {}
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            saved[k] = f.get_tensor(k).double()
    grads = {}
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name in saved:
            assert torch.equal(saved[name], p.detach()), name
            grads[name] = p.grad.detach().float().contiguous()
            continue
        prefix, kind = name.rsplit(".", 1)  # e.g. model.layers.0.mlp.experts, gate_up_proj
        num_experts = p.shape[0]
        for e in range(num_experts):
            if kind == "gate_up_proj":
                inter = p.shape[1] // 2
                parts = {"gate_proj": slice(0, inter), "up_proj": slice(inter, 2 * inter)}
            elif kind == "down_proj":
                parts = {"down_proj": slice(None)}
            else:
                raise SystemExit(f"unexpected parameter {name}")
            for proj, sl in parts.items():
                key = f"{prefix}.{e}.{proj}.weight"
                w = p.detach()[e][sl]
                gw = p.grad.detach()[e][sl]
                if key in saved and saved[key].shape == w.shape and torch.equal(saved[key], w):
                    grads[key] = gw.float().contiguous()
                elif key in saved and saved[key].shape == w.T.shape and torch.equal(saved[key], w.T):
                    grads[key] = gw.T.float().contiguous()
                else:
                    raise SystemExit(f"cannot match {name}[{e}] to {key}")
    missing = set(saved) - set(grads)
    if missing:
        raise SystemExit(f"no gradient for {sorted(missing)}")
    save_file(grads, os.path.join(args.out, "grads.safetensors"))

    out = {
        "temperature": TEMPERATURE,
        "sequences": sequences,
        "prompt_lengths": PROMPT_LENGTHS,
        "mask": [m.tolist() for m in masks],
        "advantages": ADVANTAGES,
        "old_logprobs": [o.tolist() for o in old],
        "ref_logprobs": [r.tolist() for r in ref],
        "logprobs": [l.detach().tolist() for l in lps],
        "config": {"policy_loss": "ppo_clip", "clip_low": CLIP_LOW, "clip_high": CLIP_HIGH,
                   "dual_clip": DUAL_CLIP, "kl_coef": KL_COEF, "kl_estimator": "k3",
                   "aggregation": "token-mean"},
        "loss": loss.item(),
        "meta": {"torch": torch.__version__, "transformers": transformers.__version__,
                 "dtype": "float64 (weights saved as float32)",
                 "min_ratio_gap_to_clip_edges": min_edge_gap,
                 "clipped_tokens": int(((ratio < 1 - CLIP_LOW) | (ratio > 1 + CLIP_HIGH)).sum())},
    }
    with open(os.path.join(args.out, "loss.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"loss {loss.item():.12g}; {len(grads)} gradient tensors; "
          f"min ratio gap to a clip edge {min_edge_gap:.3g}; clipped tokens {out['meta']['clipped_tokens']}")


if __name__ == "__main__":
    main()
